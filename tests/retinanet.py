"""A torchvision-style RetinaNet for the graph tests and benchmarks: ResNet-50, FPN P3-P7, shared GroupNorm heads.

Written from the architecture (torchvision's layout: bottleneck blocks, lateral + top-down FPN, P6 / P7 from P5,
heads shared over the five levels whose outputs are reshaped per anchor with view / permute), not copied. It has
no transform or post-processing: trace a full detector up to its raw head outputs (see docs/guides/graph.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 (torchvision layout): (N, 3, H, W) -> C3, C4, C5 at strides 8, 16, 32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        layers: list[nn.Module] = []
        cin = 64
        for i, (w, n) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(Bottleneck(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w * 4
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


class FPN(nn.Module):
    """Feature pyramid: laterals + top-down sum, then P6 / P7 by strided convs: five 256-channel maps."""

    def __init__(self, chans: tuple[int, ...] = (512, 1024, 2048), out: int = 256) -> None:
        super().__init__()
        self.inner = nn.ModuleList(nn.Conv2d(c, out, 1) for c in chans)
        self.layer = nn.ModuleList(nn.Conv2d(out, out, 3, padding=1) for _ in chans)
        self.p6, self.p7 = nn.Conv2d(out, out, 3, 2, 1), nn.Conv2d(out, out, 3, 2, 1)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        last = self.inner[-1](feats[-1])
        outs = [self.layer[-1](last)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.inner[i](feats[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.layer[i](last))
        p6 = self.p6(outs[-1])
        return [*outs, p6, self.p7(F.relu(p6))]


class Head(nn.Module):
    """Four conv + GroupNorm + ReLU, then the output conv, shared over the levels; outputs reshaped per anchor."""

    def __init__(self, c: int = 256, out: int = 9 * 20) -> None:
        super().__init__()
        self.k = out // 9
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(32, c), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, out, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for f in feats:
            y = self.out(self.conv(f))
            n, _, h, w = y.shape
            outs.append(y.view(n, 9, self.k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.k))
        return outs


class RetinaNet(nn.Module):
    """Backbone + FPN + classification / box heads: (N, 3, H, W) -> (N, A, 20) scores and (N, A, 4) boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.fpn = ResNet50(), FPN()
        self.cls_head, self.box_head = Head(out=9 * 20), Head(out=9 * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.fpn(self.backbone(x))
        return torch.cat(self.cls_head(feats), 1), torch.cat(self.box_head(feats), 1)
