"""Random small CNNs for the pruning property tests, and helpers to check a pruned model against its reference.

The nets are built so that beta folding is exact everywhere: every convolution that can *consume* a pruned
channel is 1x1 (3x3 convolutions appear only as depthwise convs, whose input and output channels are removed
together, so nothing is folded into them). Then "pruned model" must equal "unpruned model with the removed
channels' gamma set to 0" up to float rounding on every pixel.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from zoo import MiniDetector

ACTS = {"leaky": lambda: nn.LeakyReLU(0.1), "relu": nn.ReLU, "silu": nn.SiLU}


class Block(nn.Module):
    """Conv 3x3 (stride ``stride``) -> BatchNorm -> LeakyReLU, as attributes ``conv`` / ``bn`` / ``act``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class CBA(nn.Sequential):
    """Conv -> BatchNorm -> activation (activation optional)."""

    def __init__(self, c_in: int, c_out: int, *, k: int = 1, groups: int = 1, act: str | None = "leaky") -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, k, 1, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act is not None:
            layers.append(ACTS[act]())
        super().__init__(*layers)


class RandomNet(nn.Module):
    """A CNN described by a list of ops (see :func:`net_specs`): ``(N, 3, 16, 16) -> (N, 5, h, w)``."""

    def __init__(self, spec: list[tuple[Any, ...]], c0: int, act: str) -> None:
        super().__init__()
        self.spec = spec
        self.act = act
        self.stem = CBA(3, c0, act=act)
        self.ops = nn.ModuleList()
        c = c0
        for op in spec:
            kind = op[0]
            if kind == "conv":
                self.ops.append(CBA(c, op[1], act=act))
                c = op[1]
            elif kind == "dw":
                self.ops.append(CBA(c, c, k=3, groups=c, act=act))
            elif kind == "gconv":
                self.ops.append(CBA(c, c, groups=2, act=act))
            elif kind == "res":
                self.ops.append(nn.Sequential(CBA(c, c, act=act), CBA(c, c, act=None)))
            elif kind == "concat":
                self.ops.append(CBA(c, op[1], act=act))
                c += op[1]
            elif kind == "chunk":
                self.ops.append(CBA(c // 2, c // 2, act=act))
                c = c // 2 * 3
            elif kind == "split_add":
                self.ops.append(nn.Identity())
                c = c // 2
            elif kind == "pool":
                self.ops.append(nn.MaxPool2d(3, 1, 1))
            elif kind == "down":
                self.ops.append(nn.MaxPool2d(2, 2))
            elif kind == "up":
                self.ops.append(nn.Upsample(scale_factor=2, mode="nearest"))
            else:
                raise ValueError(kind)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for op, module in zip(self.spec, self.ops, strict=True):
            kind = op[0]
            if kind == "res":
                x = nn.functional.leaky_relu(x + module(x), 0.1)
            elif kind == "concat":
                x = torch.cat([x, module(x)], 1)
            elif kind == "chunk":
                a, b = x.chunk(2, 1)
                x = torch.cat([a, b, module(b)], 1)
            elif kind == "split_add":
                a, b = x.chunk(2, 1)
                x = a + b
            else:
                x = module(x)
        return self.head(x)


@st.composite
def net_specs(draw: st.DrawFn, chunk: bool = True) -> tuple[list[tuple[Any, ...]], int, str]:
    """(ops, stem channels, activation) with channel counts kept between 4 and 48, spatial size 4..32."""
    c = draw(st.sampled_from([4, 6, 8, 12, 16]))
    c0 = c
    act = draw(st.sampled_from(sorted(ACTS)))
    size = 16
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 6))):
        choices = ["conv", "dw", "res", "concat", "pool"]
        if chunk and c % 2 == 0 and c <= 24:
            choices += ["chunk"]
        if c % 2 == 0:
            choices.append("gconv")
        if chunk and c % 2 == 0 and c >= 8:
            choices += ["split_add"]
        if size >= 8:
            choices.append("down")
        if size <= 16:
            choices.append("up")
        kind = draw(st.sampled_from(choices))
        if kind == "conv":
            c_new = draw(st.sampled_from([4, 6, 8, 12, 16]))
            ops.append((kind, c_new))
            c = c_new
        elif kind == "concat" and c <= 32:
            c_new = draw(st.sampled_from([4, 8]))
            ops.append((kind, c_new))
            c += c_new
        elif kind == "chunk":
            ops.append((kind,))
            c = c // 2 * 3
        elif kind == "split_add":
            ops.append((kind,))
            c //= 2
        elif kind in ("dw", "gconv", "res", "pool"):
            ops.append((kind,))
        elif kind == "down":
            ops.append((kind,))
            size //= 2
        elif kind == "up":
            ops.append((kind,))
            size *= 2
    return ops, c0, act


def randomize_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial gamma, beta and running statistics (so removed channels emit constants)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=generator) * 1.5 + 0.05)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.5)
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)


def random_detector(seed: int = 0) -> nn.Module:
    """A MiniDetector (eval mode) with seeded weights and randomized BatchNorm parameters and statistics."""
    torch.manual_seed(seed)
    model = MiniDetector().eval()
    randomize_bn(model, torch.Generator().manual_seed(seed))
    return model


def gamma_zero_reference(model: nn.Module, graph: Any, plan: Any) -> nn.Module:
    """A copy of the unpruned ``model`` in which every channel the plan removes has gamma = 0."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for entry in plan.channel_groups:
            group = graph.group(entry.name)
            for ref in group.bns:
                bn = reference.get_submodule(ref.name)
                for i in entry.removed:
                    bn.weight[ref.indices[i]] = 0.0
    return reference.eval()


def fixed_latency_model(model: nn.Module, x: torch.Tensor) -> Any:
    """A :class:`~grouppruner.latency.LatencyModel` of the measured form with fixed coefficients, so that planning
    tests do not depend on how busy the machine was: each unit costs 0.1 us plus 1 ns per multiply-accumulate-like
    ``positions * C_in * C_out`` (high-resolution, wide layers are the expensive ones, as measured on CPUs)."""
    from grouppruner.latency import LatencyModel
    from grouppruner.profile import record_positions

    state = LatencyModel.measure(model, x, repeats=1).state_dict()
    positions, _ = record_positions(model, x)
    units = 0.0
    for item in state["layers"]:
        item["coef"] = [1e-7, 0.0, 0.0, 1e-9 * positions[item["name"]]]
        units += 1e-7 + 1e-9 * positions[item["name"]] * item["in_channels"] * item["out_channels"]
    state["residual_s"] = 0.1 * units
    state["dense_s"] = 1.1 * units
    return LatencyModel.from_state_dict(state)
