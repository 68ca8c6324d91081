"""The reference detector: YOLOv4 (CSPDarknet53 / MobileNetV2), its loss, decoding, VOC data and VOC mAP.

Needs the ``detection`` extra (``pip install grouppruner[detection]``). The core modules never import it.
"""

from __future__ import annotations

import importlib
from typing import Any

# `yolov4` names both a submodule and the builder function; binding the function here means importing the
# submodule (as other modules do) cannot shadow it.
from .yolov4 import YOLOv4, yolov4

# Other public names -> defining submodule, resolved on first access (the data tools need the extra).
_EXPORTS = {
    "VOC_CLASSES": "data",
    "YoloLoss": "loss",
    "kmeans_anchors": "loss",
    "decode": "decode",
    "batched_nms": "decode",
    "VOCDetection": "data",
    "collate": "data",
    "make_synthetic_voc": "synthetic",
    "voc_eval": "metrics",
    "train_one_epoch": "train",
    "evaluate": "train",
    "YoloOutputDistill": "distill",
    "RecipeConfig": "recipe",
    "run_recipe": "recipe",
}

__all__ = ["YOLOv4", "yolov4", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'grouppruner.detection' has no attribute {name!r}")
