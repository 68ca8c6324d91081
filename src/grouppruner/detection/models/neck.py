"""SPP + PANet neck of YOLOv4 (layers 105-159 of AlexeyAB's ``yolov4.cfg``, LeakyReLU 0.1).

Data flow (channels at width 1, CSPDarknet53 inputs C3/C4/C5 = 256/512/1024)::

    c5 -> spp (512, stride 32) --reduce32--> up16 --+
    c4 -> lateral16 --------------------------------+-> fpn16 (256) --reduce16--> up8 --+
    c3 -> lateral8 ----------------------------------------------------------------+-> fpn8 (128)
    fpn8 -> pan_out8 (256, stride 8)
    fpn8 -> down8 --+-> pan16 (256) -> pan_out16 (512, stride 16)
    fpn16 ----------+
    pan16 -> down16 --+-> pan32 (512) -> pan_out32 (1024, stride 32)
    spp --------------+

Concatenation orders follow the cfg's ``[route]`` layers. ``forward`` uses plain torch ops only.
``PANet.feature_info`` lists ``spp`` and the three outputs; ``PANet.out_channels`` is read from it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbones import ConvBNAct, scale_channels
from .features import FeatureInfo, output_channels

__all__ = ["SPP", "ConvSet", "PANet"]


def _conv_triplet(in_channels: int, channels: int) -> nn.Sequential:
    """1x1 (C) -> 3x3 (2C) -> 1x1 (C), the conv pattern on both sides of the SPP pooling."""
    return nn.Sequential(
        ConvBNAct(in_channels, channels, kernel_size=1),
        ConvBNAct(channels, 2 * channels, kernel_size=3),
        ConvBNAct(2 * channels, channels, kernel_size=1),
    )


class SPP(nn.Module):
    """Spatial pyramid pooling block of YOLOv4: three convs, max-pools 5/9/13 + concat, three convs.

    ``pre`` = 1x1 (C) -> 3x3 (2C) -> 1x1 (C); concat ``[pool13, pool9, pool5, x]`` (4C); ``post`` = 1x1 (C)
    -> 3x3 (2C) -> 1x1 (C).

    Args:
        in_channels: input channels C_in.
        channels: C, the output channel count.

    Shape:
        (N, C_in, H, W) -> (N, C, H, W).
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.pre = _conv_triplet(in_channels, channels)
        self.pool5 = nn.MaxPool2d(5, stride=1, padding=2)
        self.pool9 = nn.MaxPool2d(9, stride=1, padding=4)
        self.pool13 = nn.MaxPool2d(13, stride=1, padding=6)
        self.post = _conv_triplet(4 * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C, H, W)."""
        x = self.pre(x)
        x = torch.cat([self.pool13(x), self.pool9(x), self.pool5(x), x], dim=1)
        out: Tensor = self.post(x)
        return out


class ConvSet(nn.Sequential):
    """Five alternating convs of the YOLOv4 neck: 1x1 (C), 3x3 (2C), 1x1 (C), 3x3 (2C), 1x1 (C).

    Args:
        in_channels: input channels C_in.
        channels: C, the output channel count.

    Shape:
        (N, C_in, H, W) -> (N, C, H, W).
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(
            ConvBNAct(in_channels, channels, kernel_size=1),
            ConvBNAct(channels, 2 * channels, kernel_size=3),
            ConvBNAct(2 * channels, channels, kernel_size=1),
            ConvBNAct(channels, 2 * channels, kernel_size=3),
            ConvBNAct(2 * channels, channels, kernel_size=1),
        )


class PANet(nn.Module):
    """YOLOv4 neck: SPP on the stride-32 map, top-down FPN path, bottom-up PAN path.

    Args:
        in_channels: channels (C3, C4, C5) of the backbone maps at strides 8, 16, 32.
        width: channel multiplier of the neck (base widths 128 / 256 / 512 at strides 8 / 16 / 32).

    Attributes:
        feature_info: ``spp`` (C, stride 32) and the three outputs ``pan_out8``, ``pan_out16``, ``pan_out32``
            (2C at strides 8, 16, 32, for C = 128, 256, 512 times ``width``), assuming inputs at strides 8,
            16, 32 as the module names say.

    Shape:
        [(N, C3, H/8, W/8), (N, C4, H/16, W/16), (N, C5, H/32, W/32)] ->
        [(N, O8, H/8, W/8), (N, O16, H/16, W/16), (N, O32, H/32, W/32)] with ``out_channels == (O8, O16, O32)``.
    """

    def __init__(self, in_channels: tuple[int, int, int], *, width: float = 1.0) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        n8, n16, n32 = (scale_channels(c, width) for c in (128, 256, 512))
        self.spp = SPP(c5, n32)
        # top-down (FPN)
        self.reduce32 = ConvBNAct(n32, n16, kernel_size=1)
        self.up16 = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.lateral16 = ConvBNAct(c4, n16, kernel_size=1)
        self.fpn16 = ConvSet(2 * n16, n16)
        self.reduce16 = ConvBNAct(n16, n8, kernel_size=1)
        self.up8 = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.lateral8 = ConvBNAct(c3, n8, kernel_size=1)
        self.fpn8 = ConvSet(2 * n8, n8)
        # bottom-up (PAN) and the 3x3 convs feeding the heads
        self.pan_out8 = ConvBNAct(n8, 2 * n8, kernel_size=3)
        self.down8 = ConvBNAct(n8, n16, kernel_size=3, stride=2)
        self.pan16 = ConvSet(2 * n16, n16)
        self.pan_out16 = ConvBNAct(n16, 2 * n16, kernel_size=3)
        self.down16 = ConvBNAct(n16, n32, kernel_size=3, stride=2)
        self.pan32 = ConvSet(2 * n32, n32)
        self.pan_out32 = ConvBNAct(n32, 2 * n32, kernel_size=3)
        # The last three entries are the maps forward returns, in its order (see output_channels).
        self.feature_info: tuple[FeatureInfo, ...] = (
            FeatureInfo("spp", n32, stride=32),
            FeatureInfo("pan_out8", 2 * n8, stride=8),
            FeatureInfo("pan_out16", 2 * n16, stride=16),
            FeatureInfo("pan_out32", 2 * n32, stride=32),
        )

    @property
    def out_channels(self) -> tuple[int, int, int]:
        """Channels (O8, O16, O32) of the three outputs (256, 512, 1024 at width 1)."""
        return output_channels(self.feature_info)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """[(N, C3, H/8, W/8), (N, C4, H/16, W/16), (N, C5, H/32, W/32)] -> three neck outputs."""
        c3, c4, c5 = features
        p5 = self.spp(c5)
        p4 = self.fpn16(torch.cat([self.lateral16(c4), self.up16(self.reduce32(p5))], dim=1))
        p3 = self.fpn8(torch.cat([self.lateral8(c3), self.up8(self.reduce16(p4))], dim=1))
        n4 = self.pan16(torch.cat([self.down8(p3), p4], dim=1))
        n5 = self.pan32(torch.cat([self.down16(n4), p5], dim=1))
        return [self.pan_out8(p3), self.pan_out16(n4), self.pan_out32(n5)]
