"""The reference YOLOv4 model: :func:`yolov4` builds it from a backbone (:mod:`.backbones`: CSPDarknet53 or
MobileNetV2), the SPP + PANet neck (:mod:`.neck`) and three detection heads (:mod:`.yolov4`); each part
describes its feature maps with :class:`FeatureInfo` (:mod:`.features`)."""

from __future__ import annotations

from .detector import Detector
from .features import FeatureInfo
from .yolov4 import YOLOv4, yolov4

__all__ = ["Detector", "FeatureInfo", "YOLOv4", "yolov4"]
