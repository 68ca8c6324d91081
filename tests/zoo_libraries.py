"""Tiny CNNs in the style of timm, torchvision and Ultralytics blocks that ChannelGraph must map unchanged.

Each block is written from the pattern it stands for (norm + activation in one BatchNorm2d subclass, a
channels-first LayerNorm through permutes, PSA attention, channel shuffle, convs without BatchNorm, GroupNorm
towers, layer scale, YOLO implicit parameters, grouped convs, squeeze-excitation without BN), not copied from
those libraries. Inputs are ``(N, 3, 32, 32)`` images; widths 8-48 so that a graph builds in milliseconds.

``LIBRARY_ZOO`` maps a short name to a zero-argument constructor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo import ConvBN


class BatchNormAct2d(nn.BatchNorm2d):
    """timm-style norm + activation in one module: a BatchNorm2d subclass that calls ``F.batch_norm`` itself."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        momentum = 0.0 if self.momentum is None else self.momentum
        use_batch = self.training or self.running_mean is None
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_batch, momentum, self.eps)
        return self.act(x)


class ConvNormAct(nn.Module):
    """Conv2d followed by :class:`BatchNormAct2d`, attributes named as timm names them (``conv``, ``bn``)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        self.bn = BatchNormAct2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class CspDarkNetTiny(nn.Module):
    """timm cspdarknet-style: ConvNormAct stem, a residual dark block, a CSP split by chunk: ``-> (N, 10, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, 16, s=2)
        self.down = ConvNormAct(16, 32, s=2)
        self.expand = ConvNormAct(32, 32, k=1)
        self.block = nn.Sequential(ConvNormAct(16, 8, k=1), ConvNormAct(8, 16))
        self.transition = ConvNormAct(32, 32, k=1)
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(self.down(self.stem(x)))
        a, b = x.chunk(2, dim=1)
        b = b + self.block(b)
        return self.head(self.transition(torch.cat([b, a], 1)))


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm over ``(N, C, H, W)``: permute to channels-last, ``F.layer_norm``, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise -> channels-last LayerNorm -> Linear MLP -> layer scale -> residual.

    ``layer_scale_shape`` picks the style: ``"last"`` is a ``(C,)`` gamma applied channels-last (timm),
    ``"first"`` a ``(C, 1, 1)`` parameter applied after permuting back (torchvision).
    """

    def __init__(self, c: int, layer_scale_shape: str = "last") -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1 = nn.Linear(c, 4 * c)
        self.fc2 = nn.Linear(4 * c, c)
        self.first = layer_scale_shape == "first"
        self.gamma = nn.Parameter(torch.full((c, 1, 1) if self.first else (c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        y = (y.permute(0, 3, 1, 2) * self.gamma) if self.first else (y * self.gamma).permute(0, 3, 1, 2)
        return x + y


class ConvNeXtTiny(nn.Module):
    """Patchify stem + LayerNorm2d, two stages (timm-style then torchvision-style blocks), pooled Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16))
        self.stage1 = ConvNeXtBlock(16, "last")
        self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 32, 2, 2))
        self.stage2 = ConvNeXtBlock(32, "first")
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(self.norm(x.mean((2, 3))))


class Attention(nn.Module):
    """YOLO PSA-style attention: q, k, v from one 1x1 conv, ``softmax(q^T k) v`` per head, positional dw conv.

    ``(N, C, H, W) -> (N, C, H, W)`` with ``heads`` heads of ``C / heads`` value channels and half as many
    key channels.
    """

    def __init__(self, c: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = c // heads
        self.key_dim = self.head_dim // 2
        self.scale = self.key_dim**-0.5
        self.qkv = ConvBN(c, c + 2 * self.key_dim * heads, k=1)
        self.proj = ConvBN(c, c, k=1)
        self.pe = ConvBN(c, c, k=3, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(x).view(n, self.heads, 2 * self.key_dim + self.head_dim, h * w)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        y = (v @ attn.transpose(-2, -1)).view(n, c, h, w) + self.pe(v.reshape(n, c, h, w))
        return self.proj(y)


class PSABlock(nn.Module):
    """YOLOv10 / YOLO11 PSA: split in two halves; one goes through attention + FFN with residuals; concat, fuse."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c // 2
        self.cv1 = ConvBN(c, 2 * self.c, k=1)
        self.attn = Attention(self.c)
        self.ffn = nn.Sequential(ConvBN(self.c, 2 * self.c, k=1), nn.Conv2d(2 * self.c, self.c, 1))
        self.cv2 = ConvBN(2 * self.c, c, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))


class PSANet(nn.Module):
    """Stem + PSA block + output conv: ``-> (N, 10, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBN(3, 16, s=2), ConvBN(16, 32, s=2), PSABlock(32))
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle of ``(N, C, H, W)``: view as ``(N, g, C/g, H, W)``, swap dims 1 and 2, flatten."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 chunks the input and transforms one half; stride 2 transforms both."""

    def __init__(self, c_in: int, c_out: int, s: int = 1) -> None:
        super().__init__()
        self.s = s
        half = c_out // 2
        self.branch1 = (
            nn.Sequential(ConvBN(c_in, c_in, groups=c_in, s=s), ConvBN(c_in, half, k=1)) if s > 1 else nn.Identity()
        )
        self.branch2 = nn.Sequential(
            ConvBN(c_in if s > 1 else half, half, k=1), ConvBN(half, half, s=s, groups=half), ConvBN(half, half, k=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.s == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch2(b)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetTiny(nn.Module):
    """Stem + a stride-2 and a stride-1 ShuffleNetV2 unit + 1x1 conv + 1x1 output conv: ``-> (N, 10, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            ConvBN(3, 16, s=2), ShuffleUnit(16, 32, s=2), ShuffleUnit(32, 32), ConvBN(32, 48, k=1)
        )
        self.head = nn.Conv2d(48, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class Fire(nn.Module):
    """SqueezeNet fire module, no BatchNorm: 1x1 squeeze -> ReLU -> concat(1x1 expand, 3x3 expand) -> ReLU."""

    def __init__(self, c_in: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return F.relu(torch.cat([self.expand1x1(x), self.expand3x3(x)], 1))


class SqueezeNetTiny(nn.Module):
    """Conv stem (no BN) + two fire modules + 1x1 classifier conv + global pool: ``-> (N, 10)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), Fire(16, 8, 16), nn.MaxPool2d(2), Fire(32, 8, 16)
        )
        self.classifier = nn.Conv2d(32, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).mean((2, 3))


class GNTowerNet(nn.Module):
    """FCOS / RetinaNet-GN style: BN backbone, FPN lateral + output convs without norm, a conv + GroupNorm tower
    shared by two levels, class and box outputs per level: ``-> [(N, 6, 8, 8), (N, 4, 8, 8), (N, 6, 4, 4), ...]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.c8 = nn.Sequential(ConvBN(3, 16, s=2), ConvBN(16, 16, s=2), ConvBN(16, 24, s=2))
        self.c16 = ConvBN(24, 32, s=2)
        self.lateral = nn.ModuleList([nn.Conv2d(24, 16, 1), nn.Conv2d(32, 16, 1)])
        self.fpn_out = nn.ModuleList([nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)])
        self.tower = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
        )
        self.cls = nn.Conv2d(16, 6, 3, padding=1)
        self.box = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c8 = self.c8(x)
        c16 = self.c16(c8)
        p16 = self.lateral[1](c16)
        p8 = self.lateral[0](c8) + F.interpolate(p16, scale_factor=2.0, mode="nearest")
        out = []
        for p, conv in zip((p8, p16), self.fpn_out, strict=True):
            t = self.tower(conv(p))
            out += [self.cls(t), self.box(t)]
        return out


class ImplicitA(nn.Module):
    """YOLOR implicit knowledge added to a feature map: a ``(1, C, 1, 1)`` parameter."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.randn(1, c, 1, 1) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit + x


class ImplicitM(nn.Module):
    """YOLOR implicit knowledge multiplied onto a feature map: a ``(1, C, 1, 1)`` parameter around 1."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(1.0 + torch.randn(1, c, 1, 1) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit * x


class ImplicitNet(nn.Module):
    """Conv blocks with ImplicitA before and ImplicitM after an inner conv; residual add: ``-> (N, 10, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, 32, s=2)
        self.down = ConvBN(32, 24, s=2)
        self.ia = ImplicitA(24)
        self.inner = nn.Conv2d(24, 24, 3, padding=1)
        self.im = ImplicitM(24)
        self.neck = ConvBN(24, 48, k=1)
        self.head = nn.Conv2d(48, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.stem(x))
        return self.head(self.neck(x + self.im(self.inner(self.ia(x)))))


class RegNetBlock(nn.Module):
    """RegNet-Y block: 1x1 -> 3x3 grouped conv (group width 8) -> SE (no BN) -> 1x1, identity shortcut."""

    def __init__(self, c: int, width: int, group_width: int = 8) -> None:
        super().__init__()
        self.a = ConvBN(c, width, k=1)
        self.b = ConvBN(width, width, groups=width // group_width)
        self.se_fc1 = nn.Conv2d(width, width // 4, 1)
        self.se_fc2 = nn.Conv2d(width // 4, width, 1)
        self.c = nn.Sequential(nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        y = y * torch.sigmoid(self.se_fc2(F.relu(self.se_fc1(y.mean((2, 3), keepdim=True)))))
        return F.relu(x + self.c(y))


class RegNetTiny(nn.Module):
    """Stem + two RegNet-Y blocks with 32-wide grouped convs (4 groups of 8) + output conv."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBN(3, 24, s=2), ConvBN(24, 24, s=2), RegNetBlock(24, 32), RegNetBlock(24, 32))
        self.head = nn.Conv2d(24, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class HardSE(nn.Module):
    """MobileNetV3 squeeze-excitation: fc1 conv (no BN) -> ReLU -> fc2 conv -> hardsigmoid, multiplied on."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class MobileNetV3Tiny(nn.Module):
    """Stem + inverted residual with depthwise conv and hard SE + output conv: ``-> (N, 10, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, 16, s=2)
        self.expand = ConvBN(16, 48, k=1)
        self.dw = ConvBN(48, 48, s=2, groups=48)
        self.se = HardSE(48, 16)
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.project(self.se(self.dw(self.expand(x)))))


LIBRARY_ZOO: dict[str, Callable[[], nn.Module]] = {
    "cspdarknet_bnact": CspDarkNetTiny,
    "convnext": ConvNeXtTiny,
    "psa": PSANet,
    "shufflenet": ShuffleNetTiny,
    "squeezenet": SqueezeNetTiny,
    "gn_tower": GNTowerNet,
    "implicit": ImplicitNet,
    "regnet": RegNetTiny,
    "mobilenetv3": MobileNetV3Tiny,
}
