"""The reference detector: YOLOv4 (CSPDarknet53 / MobileNetV2), its loss, decoding, VOC data and VOC mAP.

Needs the ``detection`` extra (``pip install grouppruner[detection]``). The core modules never import it.

- model: :func:`yolov4`, :class:`YOLOv4`, :class:`FeatureInfo` (its ``feature_info`` entries);
- training: :class:`YoloLoss`, :func:`kmeans_anchors`, :func:`train_one_epoch`, :func:`evaluate`;
- inference: :func:`decode`, :func:`batched_nms`, ``YOLOv4.predict``;
- data: :class:`VOCDetection`, :func:`collate`, :func:`make_synthetic_voc`, :func:`voc_eval`;
- recovery: :class:`YoloOutputDistill` (output-level distillation), :func:`box_foreground` (foreground masks
  for attention distillation);
- the whole method: :func:`run_recipe`, :class:`RecipeConfig`;
- darknet ``.cfg`` + ``.weights`` in and out: :func:`from_darknet`, :func:`to_darknet`, :class:`DarknetModel`
  (:mod:`grouppruner.detection.darknet`).
"""

from __future__ import annotations

# The functions are bound after their submodules, so `grouppruner.detection.yolov4` / `.decode` name the
# functions, as users expect, even though submodules of the same names exist.
from .darknet import DarknetModel, from_darknet, to_darknet
from .data import VOC_CLASSES, VOCDataError, VOCDetection, collate
from .decode import DEFAULT_ANCHORS, batched_nms, decode
from .distill import YoloOutputDistill
from .foreground import box_foreground, boxes_to_grid_mask
from .loss import YoloLoss, kmeans_anchors
from .metrics import voc_eval
from .models import FeatureInfo, YOLOv4, yolov4
from .recipe import RecipeConfig, StageResult, run_recipe
from .synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from .train import evaluate, train_one_epoch

__all__ = [
    "DEFAULT_ANCHORS",
    "SYNTHETIC_CLASSES",
    "VOC_CLASSES",
    "DarknetModel",
    "FeatureInfo",
    "RecipeConfig",
    "StageResult",
    "VOCDataError",
    "VOCDetection",
    "YOLOv4",
    "YoloLoss",
    "YoloOutputDistill",
    "batched_nms",
    "box_foreground",
    "boxes_to_grid_mask",
    "collate",
    "decode",
    "evaluate",
    "from_darknet",
    "kmeans_anchors",
    "make_synthetic_voc",
    "run_recipe",
    "to_darknet",
    "train_one_epoch",
    "voc_eval",
    "yolov4",
]
