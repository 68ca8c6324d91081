"""Property tests: removing any channels whose outputs are zero leaves the model's function unchanged.

For zoo models and randomly generated CNNs, random channel subsets of every prunable group are first made
exactly zero where they are produced (weights and biases of every ``dim="out"`` member), then removed with
``remove_channels`` in random order. Any wrong index mapping (concat offsets, split parts, grouped-conv
positions, flatten slots, shifted indices after an earlier removal) would remove a live channel or keep a dead
one and change the output.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from grouppruner.graph import ChannelGraph
from test_graph import check_partition, outputs, zero_channels
from zoo import ZOO, ConvBN, example_input
from zoo_libraries import ConvNormAct, ImplicitA

MODELS = [
    "resnet",
    "densenet",
    "c2f",
    "tiny_slice",
    "tiny_split",
    "resnext",
    "mobilenetv2",
    "fpn",
    "spp",
    "flatten_head",
    "linear_head",
    "se",
    "frozen",
    "detector",
]


def remove_zeroed_and_compare(model: nn.Module, data: st.DataObject) -> None:
    x = example_input(2)
    graph = ChannelGraph(model, x)
    check_partition(graph)
    plan: dict[str, list[int]] = {}
    for g in graph.channel_groups:
        if g.prunable:
            units = data.draw(st.sets(st.integers(0, g.size - 1), max_size=g.size - 1), label=g.name)
            plan[g.name] = sorted(units)
            zero_channels(model, g, plan[g.name])
    with torch.no_grad():
        before = outputs(model, x)
    order = data.draw(st.permutations(sorted(plan)), label="order")
    for gname in order:
        graph.remove_channels(gname, plan[gname])
    check_partition(graph)
    with torch.no_grad():
        after = outputs(model, x)
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(MODELS), data=st.data())
def test_zoo_models(name: str, data: st.DataObject) -> None:
    torch.manual_seed(0)
    remove_zeroed_and_compare(ZOO[name]().eval(), data)


OPS = [
    "conv",
    "dw",
    "grouped",
    "res",
    "concat",
    "chunk",
    "split_add",
    "slice",
    "pool",
    "se",
    "bnact",
    "layer_scale",
    "implicit",
    "channels_last",
]


class LayerScale(nn.Module):
    """``x + gamma * conv(x)`` with a bare ``(C, 1, 1)`` parameter (ConvNeXt / CaiT layer scale)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.conv(x)


class ChannelsLastMLP(nn.Module):
    """``permute -> nn.Linear -> GELU -> (C,) scale -> permute back`` (ConvNeXt's channels-last MLP, no norm)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, c)
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (nn.functional.gelu(self.fc(x.permute(0, 2, 3, 1))) * self.scale).permute(0, 3, 1, 2)


class RandomCNN(nn.Module):
    """A stem, then a sequence of coupling patterns, then a 1x1 output conv: ``(N, 3, 32, 32) -> (N, 5, 32, 32)``.

    Besides torch layers, the patterns include the library-style ones of ``zoo_libraries``: a BatchNorm2d
    subclass calling ``F.batch_norm``, a bare layer-scale / implicit parameter, a channels-last ``nn.Linear``.
    """

    def __init__(self, stem: int, ops: list[tuple[str, int]]) -> None:
        super().__init__()
        self.stem = ConvBN(3, stem, k=1)
        self.kinds = [kind for kind, _ in ops]
        self.blocks = nn.ModuleList()
        c = stem
        for kind, width in ops:
            block: nn.Module
            if kind == "conv":
                block, c = ConvBN(c, width, k=1), width
            elif kind == "dw":
                block = ConvBN(c, c, k=3, groups=c)
            elif kind == "grouped":
                block = ConvBN(c, c, k=3, groups=4)
            elif kind == "res":
                block = nn.Sequential(ConvBN(c, c, k=1), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
            elif kind == "concat":
                block, c = ConvBN(c, width, k=1), c + width
            elif kind == "chunk":
                block, c = ConvBN(c // 2, c // 2), c // 2 * 3
            elif kind in ("split_add", "slice"):
                block, c = nn.Identity(), c // 2
            elif kind == "pool":
                block = nn.MaxPool2d(3, 1, 1)
            elif kind == "bnact":
                block = ConvNormAct(c, c, k=3)
            elif kind == "layer_scale":
                block = LayerScale(c)
            elif kind == "implicit":
                block = ImplicitA(c)
            elif kind == "channels_last":
                block = ChannelsLastMLP(c)
            else:
                block = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1), nn.Sigmoid())
            self.blocks.append(block)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for kind, block in zip(self.kinds, self.blocks, strict=True):
            if kind == "res":
                x = x + block(x)
            elif kind == "concat":
                x = torch.cat([x, block(x)], 1)
            elif kind == "chunk":
                a, b = x.chunk(2, 1)
                x = torch.cat([a, b, block(b)], 1)
            elif kind == "split_add":
                a, b = x.chunk(2, 1)
                x = a + b
            elif kind == "slice":
                x = x[:, x.shape[1] // 2 :]
            elif kind == "se":
                x = x * block(x)
            else:
                x = block(x)
        return self.head(x)


@st.composite
def cnn_specs(draw: Any) -> tuple[int, list[tuple[str, int]]]:
    """A stem width and 1-5 ops whose channel counts stay in 4..48 and fit each op's constraints."""
    c = stem = draw(st.sampled_from([4, 8, 12, 16]))
    ops: list[tuple[str, int]] = []
    for _ in range(draw(st.integers(1, 5))):
        allowed = [
            op
            for op in OPS
            if not (op in ("chunk", "split_add", "slice") and (c % 2 or c < 8))
            and not (op == "grouped" and c % 4)
            and not (op in ("concat", "chunk") and c > 32)
        ]
        kind = draw(st.sampled_from(allowed))
        width = draw(st.sampled_from([4, 8])) if kind in ("conv", "concat") else 0
        ops.append((kind, width))
        c = {"conv": width, "concat": c + width, "chunk": c // 2 * 3, "split_add": c // 2, "slice": c // 2}.get(kind, c)
    return stem, ops


@settings(max_examples=25, deadline=None)
@given(spec=cnn_specs(), data=st.data())
def test_random_cnns(spec: tuple[int, list[tuple[str, int]]], data: st.DataObject) -> None:
    torch.manual_seed(0)
    remove_zeroed_and_compare(RandomCNN(*spec).eval(), data)
