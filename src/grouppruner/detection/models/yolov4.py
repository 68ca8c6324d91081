"""YOLOv4, layer for layer as in AlexeyAB's ``yolov4.cfg``, with a CSPDarknet53 or MobileNetV2 backbone.

The full VOC model (``yolov4(20)``) has 64,040,001 parameters and 29.83 GMACs at 416x416; the COCO model
(``yolov4(80)``) has 64,363,101 parameters. ``width`` / ``depth`` multipliers give small variants for CPU
work. Module names are stable and readable (``backbone.stage3``, ``neck.spp``, ``neck.pan_out8``,
``head.p3``), so pruning plans, checkpoints and distillation layer lists can refer to them.
``YOLOv4.feature_info`` names, counts and places the backbone and neck maps; the head inputs, ``strides`` and
``distill_layers`` are read from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..._utils.errors import InvalidOptionError
from ..decode import DEFAULT_ANCHORS, detect
from .backbones import CSPDarknet53, MobileNetV2
from .detector import Detector
from .features import FeatureInfo, output_strides
from .neck import PANet

__all__ = ["DEFAULT_ANCHORS", "YOLOv4", "YoloHead", "yolov4"]

_BACKBONES = ("cspdarknet53", "mobilenetv2")


def _anchor_tensor(anchors: Tensor | Sequence[Sequence[Sequence[float]]] | None) -> Tensor:
    """Anchors as a float tensor of shape (3, 3, 2); ``None`` gives :data:`DEFAULT_ANCHORS`."""
    t = torch.tensor(DEFAULT_ANCHORS) if anchors is None else torch.as_tensor(anchors, dtype=torch.float32)
    t = t.detach().clone().float()
    if t.numel() != 18:
        raise InvalidOptionError(
            f"YOLOv4 anchors: expected 9 (w, h) pairs (shape (3, 3, 2)), got shape {tuple(t.shape)}"
        )
    t = t.reshape(3, 3, 2)
    if bool((t <= 0).any()):
        raise InvalidOptionError("YOLOv4 anchors: widths and heights must be positive")
    return t


class YoloHead(nn.Module):
    """The three output convs of YOLOv4: 1x1, with bias, no BN, ``A * (5 + num_classes)`` channels each.

    Args:
        in_channels: channels of the neck outputs at strides 8, 16, 32.
        num_classes: number of classes C.
        num_anchors: anchors per scale A.

    Shape:
        three maps (N, C_i, H_i, W_i) -> three maps (N, A * (5 + C), H_i, W_i).
    """

    def __init__(self, in_channels: tuple[int, int, int], num_classes: int, num_anchors: int = 3) -> None:
        super().__init__()
        out = num_anchors * (5 + num_classes)
        self.p3 = nn.Conv2d(in_channels[0], out, 1, bias=True)
        self.p4 = nn.Conv2d(in_channels[1], out, 1, bias=True)
        self.p5 = nn.Conv2d(in_channels[2], out, 1, bias=True)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """[(N, C_i, H_i, W_i)] * 3 -> [(N, A * (5 + C), H_i, W_i)] * 3."""
        return [self.p3(features[0]), self.p4(features[1]), self.p5(features[2])]


class YOLOv4(Detector):
    """YOLOv4 detector: backbone -> SPP + PANet neck -> three 1x1 heads at strides 8, 16, 32.

    Build it with :func:`yolov4`. ``forward`` returns the raw head maps; :meth:`predict` decodes them and
    applies class-aware NMS. Per anchor, the channels of a head map are ``(tx, ty, tw, th, objectness,
    class_0 .. class_{C-1})`` (all logits), see :func:`grouppruner.detection.decode`.

    Args:
        num_classes: number of object classes C.
        backbone: ``"cspdarknet53"`` (the paper's model) or ``"mobilenetv2"``.
        width: channel multiplier for backbone and neck (channels rounded to multiples of 8, at least 8).
        depth: block-count multiplier (at least one block per stage).
        anchors: (3, 3, 2) anchor sizes in input pixels for strides 8, 16, 32; default those of yolov4.cfg.

    Attributes:
        num_classes: C.
        backbone_name: ``"cspdarknet53"`` or ``"mobilenetv2"``.
        anchors: buffer (3, 3, 2), anchor (w, h) in input pixels per stride.
        feature_info: the nine feature maps the paper distils from, as :class:`FeatureInfo` (module name,
            channels, stride): the backbone stage outputs (``backbone.stage1`` .. ``backbone.stage5``, strides
            2-32), the SPP block output (``neck.spp``, stride 32) and the three neck outputs feeding the heads
            (``neck.pan_out8``, ``neck.pan_out16``, ``neck.pan_out32``). Channels are those as built.
        strides: ``(8, 16, 32)``, the strides of the neck outputs in ``feature_info``.
        distill_layers: the module names of ``feature_info``, in its order.

    Shape:
        (N, 3, H, W) with H, W multiples of 32 -> [(N, 3 * (5 + C), H/8, W/8), (.., H/16, W/16),
        (.., H/32, W/32)].
    """

    anchors: Tensor

    def __init__(
        self,
        num_classes: int = 20,
        *,
        backbone: str = "cspdarknet53",
        width: float = 1.0,
        depth: float = 1.0,
        anchors: Tensor | Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise InvalidOptionError(f"YOLOv4: num_classes must be a positive int, got {num_classes!r}")
        if backbone not in _BACKBONES:
            raise InvalidOptionError(f"YOLOv4: unknown backbone {backbone!r}; expected one of {_BACKBONES}")
        if width <= 0 or depth <= 0:
            raise InvalidOptionError(f"YOLOv4: width and depth must be positive, got width={width}, depth={depth}")
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.register_buffer("anchors", _anchor_tensor(anchors))
        self.backbone: CSPDarknet53 | MobileNetV2 = (
            CSPDarknet53(width=width, depth=depth)
            if backbone == "cspdarknet53"
            else MobileNetV2(width=width, depth=depth)
        )
        self.neck = PANet(self.backbone.out_channels, width=width)
        self.head = YoloHead(self.neck.out_channels, num_classes=num_classes, num_anchors=3)
        self.feature_info: tuple[FeatureInfo, ...] = (
            *(info.under("backbone") for info in self.backbone.feature_info),
            *(info.under("neck") for info in self.neck.feature_info),
        )
        self.strides: tuple[int, int, int] = output_strides(self.neck.feature_info)
        self.distill_layers: list[str] = [info.module for info in self.feature_info]
        self._init_head_bias()

    def _init_head_bias(self) -> None:
        # Start objectness near "about 8 objects per 640x640 image" and classes near uniform, so that the
        # first steps are not spent unlearning a 0.5 objectness everywhere.
        for conv, stride in zip((self.head.p3, self.head.p4, self.head.p5), self.strides, strict=True):
            assert conv.bias is not None
            bias = conv.bias.detach().view(3, -1)
            bias[:, 4] = math.log(8.0 / (640.0 / stride) ** 2)
            bias[:, 5:] = math.log(0.6 / max(self.num_classes - 0.99, 0.01))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Raw head maps.

        Args:
            x: images (N, 3, H, W), H and W multiples of 32.

        Returns:
            ``[(N, 3 * (5 + C), H/8, W/8), (N, 3 * (5 + C), H/16, W/16), (N, 3 * (5 + C), H/32, W/32)]``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise InvalidOptionError(f"YOLOv4: expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise InvalidOptionError(
                f"YOLOv4: input height and width must be multiples of 32, got {tuple(x.shape[2:])}"
            )
        outputs: list[Tensor] = self.head(self.neck(self.backbone(x)))
        return outputs

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        *,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
    ) -> list[dict[str, Tensor]]:
        """Detect objects: forward in eval mode, :func:`decode`, class-aware :func:`batched_nms`.

        The module's train/eval mode is restored afterwards.

        Args:
            images: (N, 3, H, W) float in [0, 1], H and W multiples of 32.
            conf: minimum score (objectness x class probability).
            iou: NMS IoU threshold (boxes of different classes never suppress each other).
            max_det: at most this many detections per image, highest scores first.

        Returns:
            N dicts with ``"boxes"`` (K, 4) xyxy in input pixels, ``"scores"`` (K,) and ``"labels"``
            (K,) int64, sorted by decreasing score.
        """
        return detect(self, images, self.anchors, self.strides, conf=conf, iou=iou, max_det=max_det)


def yolov4(
    num_classes: int = 20,
    *,
    backbone: str = "cspdarknet53",
    width: float = 1.0,
    depth: float = 1.0,
    anchors: Tensor | Sequence[Sequence[Sequence[float]]] | None = None,
) -> YOLOv4:
    """Build YOLOv4 (see :class:`YOLOv4`).

    ``yolov4(20)`` is the paper's VOC model: 64,040,001 parameters, 29.83 GMACs at 416x416.
    ``yolov4(20, width=0.125, depth=0.34)`` is a fast CPU variant for tests and demos.

    Args:
        num_classes: number of classes C (20 for VOC, 80 for COCO).
        backbone: ``"cspdarknet53"`` or ``"mobilenetv2"``.
        width: channel multiplier (channels rounded to multiples of 8, at least 8).
        depth: residual-block-count multiplier (at least one block per stage).
        anchors: (3, 3, 2) anchors in input pixels for strides 8, 16, 32; default those of yolov4.cfg.

    Returns:
        The model, in train mode, mapping (N, 3, H, W) to three raw maps (N, 3 * (5 + C), H/s, W/s),
        s = 8, 16, 32.
    """
    return YOLOv4(num_classes, backbone=backbone, width=width, depth=depth, anchors=anchors)
