"""A zoo of tiny CNNs covering the coupling patterns ChannelGraph must handle.

Every model takes ``(N, 3, 32, 32)`` images and has 8-32 channels so that graph construction and a forward
pass take milliseconds. Module names follow the ``backbone`` / ``neck`` / ``head`` convention of detectors
where it makes sense, so that the default layer-group partition has something to work with.

``ZOO`` maps a short name to a zero-argument constructor; other test modules may import it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = (1, 3, 32, 32)


def example_input(batch: int = 1) -> torch.Tensor:
    """Random images ``(batch, 3, 32, 32)``."""
    return torch.randn(batch, *INPUT_SHAPE[1:])


class ConvBN(nn.Sequential):
    """Conv2d -> BatchNorm2d -> LeakyReLU, the detector building block."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.1),
        )


class PlainCNN(nn.Module):
    """Three stride-2 conv blocks and a 1x1 output conv: ``(N, 3, 32, 32) -> (N, 10, 4, 4)``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBN(3, 8, s=2), ConvBN(8, 16, s=2), ConvBN(16, 16, s=2))
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class BasicBlock(nn.Module):
    """ResNet basic block; identity shortcut, or a 1x1 conv shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, s: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBN(c_in, c_out, s=s)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = (
            nn.Identity()
            if s == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, s, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNetTiny(nn.Module):
    """Stem, two identity blocks, one projection block: ``-> (N, 10, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            ConvBN(3, 16, s=2), BasicBlock(16, 16), BasicBlock(16, 16), BasicBlock(16, 24, s=2)
        )
        self.head = nn.Conv2d(24, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class DenseNetTiny(nn.Module):
    """A dense block: every layer sees the concatenation of all previous feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, 16, s=2)
        self.dense = nn.ModuleList([ConvBN(16, 8), ConvBN(24, 8), ConvBN(32, 8)])
        self.head = nn.Conv2d(40, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for layer in self.dense:
            feats.append(layer(torch.cat(feats, 1)))
        return self.head(torch.cat(feats, 1))


class SPPNet(nn.Module):
    """Spatial pyramid pooling: max pools (5, 9, 13, stride 1) concatenated with their input."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBN(3, 16, s=2), ConvBN(16, 16, s=2))
        self.spp_in = ConvBN(16, 8, k=1)
        self.pools = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13)])
        self.spp_out = ConvBN(32, 16, k=1)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spp_in(self.backbone(x))
        x = torch.cat([x] + [p(x) for p in self.pools], 1)
        return self.head(self.spp_out(x))


class FPNNet(nn.Module):
    """Two-level FPN (upsample + concat) with one output conv per level: strides 8 and 16."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict(
            {
                "stem": ConvBN(3, 8, s=2),
                "c2": ConvBN(8, 16, s=2),
                "c3": ConvBN(16, 16, s=2),
                "c4": ConvBN(16, 32, s=2),
            }
        )
        self.neck = nn.ModuleDict(
            {
                "lateral": ConvBN(32, 16, k=1),
                "up": nn.Upsample(scale_factor=2, mode="nearest"),
                "fuse": ConvBN(32, 16),
            }
        )
        self.head = nn.ModuleList([nn.Conv2d(16, 12, 1), nn.Conv2d(32, 12, 1)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = self.backbone
        c3 = b["c3"](b["c2"](b["stem"](x)))
        c4 = b["c4"](c3)
        p3 = self.neck["fuse"](torch.cat([self.neck["up"](self.neck["lateral"](c4)), c3], 1))
        return [self.head[0](p3), self.head[1](c4)]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 project (+ residual when shapes match)."""

    def __init__(self, c_in: int, c_out: int, s: int = 1, expand: int = 2) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res = s == 1 and c_in == c_out
        self.block = nn.Sequential(
            ConvBN(c_in, hidden, k=1),
            ConvBN(hidden, hidden, k=3, s=s, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV2Tiny(nn.Module):
    """Stem + three inverted residual blocks (one with a residual add) + output conv."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            ConvBN(3, 8, s=2),
            InvertedResidual(8, 16, s=2),
            InvertedResidual(16, 16),
            InvertedResidual(16, 24, s=2),
        )
        self.head = nn.Conv2d(24, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class ResNeXtBlock(nn.Module):
    """1x1 reduce -> 3x3 grouped conv (4 groups) -> 1x1 expand, plus identity shortcut."""

    def __init__(self, c: int = 16, width: int = 16, groups: int = 4) -> None:
        super().__init__()
        self.reduce = ConvBN(c, width, k=1)
        self.grouped = ConvBN(width, width, k=3, groups=groups)
        self.expand = nn.Conv2d(width, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.expand(self.grouped(self.reduce(x)))))


class ResNeXtTiny(nn.Module):
    """Stem + one ResNeXt block (grouped conv) + output conv."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBN(3, 16, s=2), ResNeXtBlock())
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class C2f(nn.Module):
    """YOLOv8-style C2f block: ``cv1`` output is chunked in two; the second half feeds a bottleneck chain.

    ``static=True`` writes the split with fixed sizes (``split((c, c))``), as YOLOv8's ``forward_split`` does;
    such a split cannot follow a channel removal.
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, *, static: bool = False) -> None:
        super().__init__()
        self.c = c_out // 2
        self.static = static
        self.cv1 = ConvBN(c_in, 2 * self.c, k=1)
        self.m = nn.ModuleList(nn.Sequential(ConvBN(self.c, self.c), ConvBN(self.c, self.c)) for _ in range(n))
        self.cv2 = ConvBN((2 + n) * self.c, c_out, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        parts = list(y.split((self.c, self.c), 1) if self.static else y.chunk(2, 1))
        for m in self.m:
            parts.append(m(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class C2fNet(nn.Module):
    """Stem + C2f block + output conv."""

    def __init__(self, *, static: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBN(3, 16, s=2), C2f(16, 16, static=static))
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TinyCSP(nn.Module):
    """YOLOv4-tiny CSP block: the second half of a conv output is taken by channel slicing in forward().

    ``static=True`` slices with a width fixed at construction (``x[:, self.c // 2:]``), which cannot follow a
    channel removal; the default computes it from the tensor (``x[:, x.shape[1] // 2:]``). ``use_split=True``
    takes the half as ``torch.split(x, x.shape[1] // 2, 1)[1]`` (only the second part is used).
    """

    def __init__(self, c: int = 16, *, static: bool = False, use_split: bool = False) -> None:
        super().__init__()
        self.c = c
        self.static = static
        self.use_split = use_split
        self.conv1 = ConvBN(c, c)
        self.conv2 = ConvBN(c // 2, c // 2)
        self.conv3 = ConvBN(c // 2, c // 2)
        self.conv4 = ConvBN(c, c, k=1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        route = x
        half = self.c // 2 if self.static else x.shape[1] // 2
        x = self.conv2(torch.split(x, half, 1)[1] if self.use_split else x[:, half:])
        route1 = x
        x = self.conv3(x)
        x = self.conv4(torch.cat([x, route1], 1))
        return self.pool(torch.cat([route, x], 1))


class TinySliceNet(nn.Module):
    """Stem + YOLOv4-tiny CSP block + output conv: ``-> (N, 10, 8, 8)``."""

    def __init__(self, *, static: bool = False, use_split: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBN(3, 16, s=2), TinyCSP(16, static=static, use_split=use_split))
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: channel weights from a two-layer bottleneck multiply the input channels."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * w


class SENet(nn.Module):
    """Conv blocks with a squeeze-excitation module in between."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBN(3, 16, s=2), ConvBN(16, 16, s=2), SqueezeExcite(16))
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention: channel mean and max -> 7x7 conv -> sigmoid map multiplied onto the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(pooled))


class SpatialAttentionNet(nn.Module):
    """Conv blocks with a spatial attention module (channel reduction + one-channel broadcast multiply)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBN(3, 16, s=2), ConvBN(16, 16, s=2), SpatialAttention())
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class LinearClassifier(nn.Module):
    """Conv features -> global average pool -> flatten -> Linear(10): ``-> (N, 10)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvBN(3, 8, s=2), ConvBN(8, 16, s=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class FlattenClassifier(nn.Module):
    """Conv features ``(N, 8, 4, 4)`` flattened straight into a Linear layer: one channel = 16 features."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvBN(3, 8, s=4), ConvBN(8, 8, s=2))
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def frozen_backbone() -> PlainCNN:
    """A PlainCNN whose backbone has ``requires_grad=False`` (a frozen backbone)."""
    model = PlainCNN()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    return model


class MiniDetector(nn.Module):
    """A three-section detector (backbone / neck / head) with outputs at strides 8 and 16."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict(
            {
                "stem": ConvBN(3, 8, s=2),
                "s4": ConvBN(8, 16, s=2),
                "s8": BasicBlock(16, 16, s=2),
                "s16": BasicBlock(16, 32, s=2),
            }
        )
        self.neck = nn.ModuleDict(
            {
                "reduce": ConvBN(32, 16, k=1),
                "up": nn.Upsample(scale_factor=2.0, mode="nearest"),
                "fuse8": ConvBN(32, 16),
                "fuse16": ConvBN(32, 32),
            }
        )
        self.head = nn.ModuleList([nn.Conv2d(16, 18, 1), nn.Conv2d(32, 18, 1)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, n = self.backbone, self.neck
        c8 = b["s8"](b["s4"](b["stem"](x)))
        c16 = b["s16"](c8)
        r = n["reduce"](c16)
        p8 = n["fuse8"](torch.cat([n["up"](r), c8], 1))
        p16 = n["fuse16"](c16)
        return [self.head[0](p8), self.head[1](p16)]


ZOO: dict[str, Callable[[], nn.Module]] = {
    "plain": PlainCNN,
    "resnet": ResNetTiny,
    "densenet": DenseNetTiny,
    "spp": SPPNet,
    "fpn": FPNNet,
    "mobilenetv2": MobileNetV2Tiny,
    "resnext": ResNeXtTiny,
    "c2f": C2fNet,
    "tiny_slice": TinySliceNet,
    "tiny_split": lambda: TinySliceNet(use_split=True),
    "se": SENet,
    "spatial_attention": SpatialAttentionNet,
    "linear_head": LinearClassifier,
    "flatten_head": FlattenClassifier,
    "frozen": frozen_backbone,
    "detector": MiniDetector,
}
