"""The reference detector: YOLOv4 (CSPDarknet53 / MobileNetV2), its loss, decoding, VOC data and VOC mAP.

Needs the ``detection`` extra (``pip install grouppruner[detection]``). The core modules never import it, and it
imports nothing of the compressor but the core's file helpers: the compression application built on this kit (the
recipe) lives in :mod:`grouppruner.recipe`.

- model: :func:`yolov4`, :class:`YOLOv4`, :class:`FeatureInfo` (its ``feature_info`` entries);
- training: :class:`YoloLoss`, :func:`kmeans_anchors`, :func:`train_one_epoch`, :func:`evaluate`;
- inference: ``YOLOv4.predict``, :func:`batched_nms` (decoding in :mod:`grouppruner.detection.decode`);
- data: :class:`VOCDetection`, :func:`collate`, :func:`data_classes`, :func:`make_synthetic_voc`, :func:`voc_eval`;
- recovery: :class:`YoloOutputDistill` (output-level distillation), :func:`box_foreground` (foreground masks
  for attention distillation);
- darknet ``.cfg`` + ``.weights`` in and out: :func:`from_darknet`, :func:`to_darknet`, :class:`DarknetModel`
  (:mod:`grouppruner.detection.darknet`).
"""

from __future__ import annotations

from .._utils.moved import moved_names

# Bound after its submodule, so `grouppruner.detection.yolov4` names the function, as users expect.
from .darknet import DarknetModel, from_darknet, to_darknet
from .data import VOC_CLASSES, VOCDataError, VOCDetection, collate, data_classes
from .decode import DEFAULT_ANCHORS, batched_nms
from .distill import YoloOutputDistill
from .foreground import box_foreground, boxes_to_grid_mask
from .loss import YoloLoss, kmeans_anchors
from .metrics import voc_eval
from .models import Detector, FeatureInfo, YOLOv4, yolov4
from .synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from .train import evaluate, train_one_epoch

__all__ = [
    "DEFAULT_ANCHORS",
    "SYNTHETIC_CLASSES",
    "VOC_CLASSES",
    "DarknetModel",
    "Detector",
    "FeatureInfo",
    "VOCDataError",
    "VOCDetection",
    "YOLOv4",
    "YoloLoss",
    "YoloOutputDistill",
    "batched_nms",
    "box_foreground",
    "boxes_to_grid_mask",
    "collate",
    "data_classes",
    "evaluate",
    "from_darknet",
    "kmeans_anchors",
    "make_synthetic_voc",
    "to_darknet",
    "train_one_epoch",
    "voc_eval",
    "yolov4",
]

# The recipe moved to grouppruner.recipe; the old names work for one more release.
__getattr__ = moved_names(__name__, dict.fromkeys(("RecipeConfig", "StageResult", "run_recipe"), "grouppruner.recipe"))
