"""Backbones of the reference detector: CSPDarknet53 (as in AlexeyAB's ``yolov4.cfg``) and MobileNetV2.

Both expose the same interface: ``stem`` and ``stage1`` .. ``stage5`` submodules (feature strides 2, 2, 4, 8,
16, 32 for MobileNetV2 and 1, 2, 4, 8, 16, 32 for CSPDarknet53), ``feature_info`` (one
:class:`~.features.FeatureInfo` per stage output, counted while the stages are built), ``out_channels``
(channels at strides 8, 16, 32, read from ``feature_info``) and a forward that returns the three feature maps
at strides 8, 16 and 32.

``forward`` uses plain torch ops only (``torch.cat``, residual ``x + y``, no in-place ops on activations) so
that torch-pruning's dependency graph can trace every coupling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..._utils.errors import InvalidOptionError
from .features import FeatureInfo, output_channels

__all__ = [
    "CSPDarknet53",
    "CSPStage",
    "ConvBNAct",
    "DarkResidual",
    "InvertedResidual",
    "MobileNetV2",
    "scale_channels",
    "scale_depth",
]


def scale_channels(channels: int, width: float, *, divisor: int = 8) -> int:
    """Scale a channel count by ``width``, rounded to a multiple of ``divisor`` and at least ``divisor``.

    Args:
        channels: channel count of the full-size model.
        width: width multiplier (1.0 keeps ``channels`` unchanged when it is a multiple of ``divisor``).
        divisor: rounding step and floor.

    Returns:
        The scaled channel count.
    """
    if width == 1.0:
        return channels
    scaled = math.floor(channels * width / divisor + 0.5) * divisor
    return max(divisor, scaled)


def scale_depth(blocks: int, depth: float) -> int:
    """Scale a block count by ``depth`` (rounded, at least 1).

    Args:
        blocks: block count of the full-size model.
        depth: depth multiplier.

    Returns:
        The scaled block count.
    """
    return max(1, round(blocks * depth))


def _activation(name: str) -> nn.Module:
    if name == "mish":
        return nn.Mish()
    if name == "leaky":
        return nn.LeakyReLU(0.1)
    if name == "relu6":
        return nn.ReLU6()
    if name == "linear":
        return nn.Identity()
    raise InvalidOptionError(f"unknown activation {name!r}; expected 'mish', 'leaky', 'relu6' or 'linear'")


class ConvBNAct(nn.Module):
    """``Conv2d`` (no bias) -> ``BatchNorm2d`` -> activation: darknet's ``[convolutional]`` with BN.

    Submodules are named ``conv``, ``bn`` and ``act``. Padding is ``kernel_size // 2`` (darknet ``pad=1``).

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out.
        kernel_size: square kernel size k.
        stride: spatial stride s.
        groups: convolution groups (``in_channels`` for depthwise).
        act: ``"mish"``, ``"leaky"`` (slope 0.1), ``"relu6"`` or ``"linear"``.

    Shape:
        (N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        *,
        groups: int = 1,
        act: str = "leaky",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = _activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """Apply conv, BN and activation: (N, C_in, H, W) -> (N, C_out, H / s, W / s)."""
        out: Tensor = self.act(self.bn(self.conv(x)))
        return out


class DarkResidual(nn.Module):
    """Darknet residual block: 1x1 conv -> 3x3 conv, added to the input (``[shortcut] from=-3``).

    Args:
        channels: input and output channels C.
        hidden: channels of the 1x1 bottleneck conv.
        act: activation of both convs.

    Shape:
        (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, hidden: int, *, act: str = "mish") -> None:
        super().__init__()
        self.conv1 = ConvBNAct(channels, hidden, kernel_size=1, act=act)
        self.conv2 = ConvBNAct(hidden, channels, kernel_size=3, act=act)

    def forward(self, x: Tensor) -> Tensor:
        """Residual: x + conv2(conv1(x)), shape (N, C, H, W) unchanged."""
        y: Tensor = self.conv2(self.conv1(x))
        return x + y


class CSPStage(nn.Module):
    """One cross-stage-partial stage of CSPDarknet53, layer for layer as in ``yolov4.cfg``.

    ``downsample`` (3x3, stride 2) -> two 1x1 branches: ``split_short`` (kept aside) and ``split_main``
    -> ``blocks`` (residual blocks) -> ``main_out`` (1x1) -> concat ``[main, short]`` -> ``fuse`` (1x1).

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out (of ``downsample`` and ``fuse``).
        split_channels: channels of each of the two branches.
        block_hidden: bottleneck channels inside each residual block.
        num_blocks: number of residual blocks.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H / 2, W / 2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        split_channels: int,
        block_hidden: int,
        num_blocks: int,
    ) -> None:
        super().__init__()
        self.downsample = ConvBNAct(in_channels, out_channels, kernel_size=3, stride=2, act="mish")
        self.split_short = ConvBNAct(out_channels, split_channels, kernel_size=1, act="mish")
        self.split_main = ConvBNAct(out_channels, split_channels, kernel_size=1, act="mish")
        self.blocks = nn.Sequential(
            *[DarkResidual(split_channels, hidden=block_hidden, act="mish") for _ in range(num_blocks)]
        )
        self.main_out = ConvBNAct(split_channels, split_channels, kernel_size=1, act="mish")
        self.fuse = ConvBNAct(2 * split_channels, out_channels, kernel_size=1, act="mish")

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / 2, W / 2)."""
        x = self.downsample(x)
        short = self.split_short(x)
        main = self.main_out(self.blocks(self.split_main(x)))
        out: Tensor = self.fuse(torch.cat([main, short], dim=1))
        return out


def _stage_feature_info(channels: Sequence[int], strides: Sequence[int]) -> tuple[FeatureInfo, ...]:
    """``FeatureInfo("stage1", channels[0], strides[0])``, ... for the stages in order."""
    return tuple(
        FeatureInfo(f"stage{index}", c, s) for index, (c, s) in enumerate(zip(channels, strides, strict=True), start=1)
    )


class _StagedBackbone(nn.Module):
    """A stem and five stages at strides 2-32; the three deepest stage outputs feed the neck.

    Attributes:
        feature_info: the outputs of ``stage1`` .. ``stage5`` (module name, channels, stride), set by the
            subclass while it builds the stages.
    """

    stem: nn.Module
    stage1: nn.Module
    stage2: nn.Module
    stage3: nn.Module
    stage4: nn.Module
    stage5: nn.Module
    feature_info: tuple[FeatureInfo, ...]

    @property
    def out_channels(self) -> tuple[int, int, int]:
        """Channels (C3, C4, C5) of the maps ``forward`` returns: those of ``stage3`` .. ``stage5``."""
        return output_channels(self.feature_info)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, 3, H, W) -> [(N, C3, H/8, W/8), (N, C4, H/16, W/16), (N, C5, H/32, W/32)]."""
        x = self.stage2(self.stage1(self.stem(x)))
        c3 = self.stage3(x)
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return [c3, c4, c5]


class _CSPStageSpec(NamedTuple):
    """One row of :data:`_CSP_STAGES`: the :class:`CSPStage` arguments at width and depth 1."""

    out_channels: int
    split_channels: int
    block_hidden: int
    num_blocks: int


# stage1 .. stage5 of CSPDarknet53 as in yolov4.cfg. Stage 1 differs from the others: full-width branches and
# a halved bottleneck.
_CSP_STAGES: tuple[_CSPStageSpec, ...] = (
    _CSPStageSpec(out_channels=64, split_channels=64, block_hidden=32, num_blocks=1),
    _CSPStageSpec(out_channels=128, split_channels=64, block_hidden=64, num_blocks=2),
    _CSPStageSpec(out_channels=256, split_channels=128, block_hidden=128, num_blocks=8),
    _CSPStageSpec(out_channels=512, split_channels=256, block_hidden=256, num_blocks=8),
    _CSPStageSpec(out_channels=1024, split_channels=512, block_hidden=512, num_blocks=4),
)


class CSPDarknet53(_StagedBackbone):
    """CSPDarknet53 (Mish), layers 0-104 of AlexeyAB's ``yolov4.cfg``.

    ``stem`` is the 3x3 conv with 32 channels at stride 1; ``stage1`` .. ``stage5`` are CSP stages with
    1, 2, 8, 8, 4 residual blocks (times ``depth``) and 64, 128, 256, 512, 1024 output channels (times
    ``width``) at strides 2, 4, 8, 16, 32.

    Args:
        width: channel multiplier.
        depth: residual-block-count multiplier.

    Attributes:
        feature_info: one :class:`~.features.FeatureInfo` per stage output, with the channels and strides above.

    Shape:
        (N, 3, H, W) -> three maps (N, C3, H/8, W/8), (N, C4, H/16, W/16), (N, C5, H/32, W/32) with
        ``out_channels == (C3, C4, C5)`` (256, 512, 1024 at width 1).
    """

    def __init__(self, *, width: float = 1.0, depth: float = 1.0) -> None:
        super().__init__()
        in_channels = scale_channels(32, width)
        self.stem = ConvBNAct(3, in_channels, kernel_size=3, act="mish")
        stages: list[CSPStage] = []
        channels: list[int] = []
        for spec in _CSP_STAGES:
            out_channels = scale_channels(spec.out_channels, width)
            stages.append(
                CSPStage(
                    in_channels=in_channels,
                    out_channels=out_channels,
                    split_channels=scale_channels(spec.split_channels, width),
                    block_hidden=scale_channels(spec.block_hidden, width),
                    num_blocks=scale_depth(spec.num_blocks, depth),
                )
            )
            in_channels = out_channels
            channels.append(out_channels)
        self.stage1, self.stage2, self.stage3, self.stage4, self.stage5 = stages
        # The stem keeps the input resolution and each stage's stride-2 downsample halves it.
        self.feature_info = _stage_feature_info(channels, [2**index for index in range(1, 6)])


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection (+ input).

    The expansion conv is omitted when ``expand_ratio == 1``; the residual add is used when the stride is 1
    and the channel count is unchanged.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out.
        stride: stride s of the depthwise conv (1 or 2).
        expand_ratio: hidden channels = ``in_channels * expand_ratio``.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H / s, W / s).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = ConvBNAct(in_channels, hidden, kernel_size=1, act="relu6") if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size=3, stride=stride, groups=hidden, act="relu6")
        self.project = ConvBNAct(hidden, out_channels, kernel_size=1, act="linear")

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / s, W / s)."""
        y: Tensor = self.project(self.depthwise(self.expand(x)))
        return x + y if self.use_residual else y


# (expand ratio t, output channels c, repeats n, first stride s) per stage, from the MobileNetV2 paper;
# stages 4 and 5 merge two rows each so that every stage ends at a new stride.
_MBV2_STAGES: tuple[tuple[tuple[int, int, int, int], ...], ...] = (
    ((1, 16, 1, 1),),
    ((6, 24, 2, 2),),
    ((6, 32, 3, 2),),
    ((6, 64, 4, 2), (6, 96, 3, 1)),
    ((6, 160, 3, 2), (6, 320, 1, 1)),
)


class MobileNetV2(_StagedBackbone):
    """MobileNetV2 feature extractor (inverted residuals, depthwise convs, ReLU6), without the last 1x1 conv.

    ``stem`` (3x3 conv, 32 channels, stride 2) and ``stage1`` .. ``stage5`` at strides 2, 4, 8, 16, 32 with
    16, 24, 32, 96, 320 output channels (times ``width``).

    Args:
        width: channel multiplier.
        depth: block-repeat multiplier (at least one block per row of the MobileNetV2 table).

    Attributes:
        feature_info: one :class:`~.features.FeatureInfo` per stage output, with the channels and strides above.

    Shape:
        (N, 3, H, W) -> three maps (N, C3, H/8, W/8), (N, C4, H/16, W/16), (N, C5, H/32, W/32) with
        ``out_channels == (C3, C4, C5)`` (32, 96, 320 at width 1).
    """

    def __init__(self, *, width: float = 1.0, depth: float = 1.0) -> None:
        super().__init__()
        in_ch = scale_channels(32, width)
        stride = 2  # of the current map: 2 after the stem, times s after each row's first block
        self.stem = ConvBNAct(3, in_ch, kernel_size=3, stride=stride, act="relu6")
        stages: list[nn.Sequential] = []
        channels: list[int] = []
        strides: list[int] = []
        for rows in _MBV2_STAGES:
            layers: list[nn.Module] = []
            for t, c, n, s in rows:
                out_ch = scale_channels(c, width)
                for i in range(scale_depth(n, depth)):
                    layers.append(
                        InvertedResidual(
                            in_channels=in_ch, out_channels=out_ch, stride=s if i == 0 else 1, expand_ratio=t
                        )
                    )
                    in_ch = out_ch
                stride *= s
            stages.append(nn.Sequential(*layers))
            channels.append(in_ch)
            strides.append(stride)
        self.stage1, self.stage2, self.stage3, self.stage4, self.stage5 = stages
        self.feature_info = _stage_feature_info(channels, strides)
