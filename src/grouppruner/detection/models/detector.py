"""The detector interface: what the training loop, the recipe and its report rely on, whichever model it is."""

from __future__ import annotations

from torch import Tensor, nn

from .features import FeatureInfo

__all__ = ["Detector"]


class Detector(nn.Module):
    """Base class of the kit's detectors (:class:`~grouppruner.detection.YOLOv4`, the darknet
    :class:`~grouppruner.detection.darknet.DarknetModel`): an ``nn.Module`` mapping ``(N, 3, H, W)`` images to one
    raw head map ``(N, A * (5 + C), H / s, W / s)`` per stride ``s``, with the attributes below set by
    ``__init__``. Code written against it (the recipe's stages) takes any detector of the kit.

    Attributes:
        num_classes: C.
        anchors: ``(maps, A, 2)`` anchor (w, h) in input pixels, per head map.
        feature_info: the feature maps worth distilling, as :class:`FeatureInfo` (module name, channels, stride).
        distill_layers: the module names of ``feature_info``, in its order.
    """

    num_classes: int
    anchors: Tensor
    feature_info: tuple[FeatureInfo, ...]
    distill_layers: list[str]
