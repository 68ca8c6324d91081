"""ChannelGraph on the model zoo: couplings, output protection, removal keeps the model working."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

from grouppruner.graph import ChannelGraph, ChannelGroup, LayerRef
from zoo import ZOO, C2fNet, TinySliceNet, example_input

# Removing channels changes a channel mean / max, so the output cannot stay exactly the same.
NOT_EXACT = {"spatial_attention"}
STATIC = {"c2f_static": lambda: C2fNet(static=True), "tiny_slice_static": lambda: TinySliceNet(static=True)}
ALL = {**ZOO, **STATIC}


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def refs(group: ChannelGroup, name: str, dim: str) -> list[tuple[int, ...]]:
    """Index tuples of every LayerRef of ``name`` / ``dim`` in the group."""
    return [r.indices for r in group.layers if r.name == name and r.dim == dim]


def channels_of(model: nn.Module, ref: LayerRef) -> int:
    params = dict(model.named_parameters())
    if ref.name in params:  # a bare layer-scale / implicit parameter: its one non-singleton dim
        return max(params[ref.name].shape)
    m = dict(model.named_modules())[ref.name]
    if isinstance(m, nn.BatchNorm2d):
        return m.num_features
    if isinstance(m, nn.Linear):
        return m.out_features if ref.dim == "out" else m.in_features
    assert isinstance(m, nn.Conv2d)
    return m.out_channels if ref.dim == "out" else m.in_channels


def check_partition(graph: ChannelGraph) -> None:
    """Every layer channel belongs to at most one group; every output channel of a member layer to exactly one.

    Layers that a (non-prunable) group maps irregularly are left out of that group's refs, so their coverage
    is not checked.
    """
    seen: dict[tuple[str, str], list[int]] = {}
    irregular = {
        m for g in graph.channel_groups for m in re.findall(r"irregularly onto layer '([^']+)'", g.reason or "")
    }
    for g in graph.channel_groups:
        assert all(len(r.indices) == g.size for r in g.layers)
        for r in g.layers:
            seen.setdefault((r.name, r.dim), []).extend(r.indices)
    for (name, dim), idx in seen.items():
        n = channels_of(graph.model, LayerRef(name, "", dim, ()))  # type: ignore[arg-type]
        assert len(idx) == len(set(idx)), f"{name} {dim}: a channel in two groups"
        assert all(0 <= i < n for i in idx), f"{name} {dim}: index out of range"
        if dim == "out" and name not in irregular:
            assert sorted(idx) == list(range(n)), f"{name}: output channels not covered"


def zero_channels(model: nn.Module, group: ChannelGroup, units: list[int]) -> None:
    """Make the given group channels exactly zero wherever they are produced."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for r in group.layers:
            if r.dim != "out":
                continue
            idx = torch.tensor([r.indices[u] for u in units], dtype=torch.long)
            if r.kind == "Parameter":  # layer scale / implicit add: zero along its one non-singleton dim
                p = params[r.name]
                p.index_fill_(max(range(p.dim()), key=lambda d: p.shape[d]), idx, 0.0)
                continue
            m = modules[r.name]
            m.weight[idx] = 0  # type: ignore[index]
            if getattr(m, "bias", None) is not None:
                m.bias[idx] = 0  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(ALL))
def test_remove_from_every_group_keeps_function(name: str) -> None:
    model = ALL[name]().eval()
    x = example_input(2)
    graph = ChannelGraph(model, x)
    check_partition(graph)
    plan: dict[str, list[int]] = {}
    for g in graph.channel_groups:
        if g.prunable:
            plan[g.name] = list(range(0, g.size, 3))[: g.size - 1]
            zero_channels(model, g, plan[g.name])
    with torch.no_grad():
        before = outputs(model, x)
    sizes = {g.name: g.size for g in graph.channel_groups}
    for gname, units in plan.items():
        updated = graph.remove_channels(gname, units)
        assert updated.size == sizes[gname] - len(units)
        assert graph.group(gname) == updated
    check_partition(graph)
    with torch.no_grad():
        after = outputs(model, x)
    assert [t.shape for t in after] == [t.shape for t in before]
    if name not in NOT_EXACT:
        for a, b in zip(after, before, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in ALL[name]().parameters())


@pytest.mark.parametrize("name", sorted(ALL))
def test_outputs_protected(name: str) -> None:
    model = ALL[name]()
    graph = ChannelGraph(model, example_input())
    out_layers = (
        {"fc"}
        if name in ("linear_head", "flatten_head")
        else {n for n, m in model.named_modules() if n.startswith("head") and isinstance(m, nn.Conv2d)}
    )
    assert out_layers
    for g in graph.channel_groups:
        touches_output = any(r.name in out_layers and r.dim == "out" for r in g.layers)
        assert touches_output == (g.name in out_layers)
        if touches_output:
            assert not g.prunable and g.reason is not None and "model output" in g.reason
        elif name not in STATIC and g.size > 1:
            assert g.prunable, (g.name, g.reason)
    # the inputs of the output layers stay prunable
    feeding = [g for g in graph.channel_groups if any(r.name in out_layers and r.dim == "in" for r in g.layers)]
    assert any(g.prunable for g in feeding)


def test_residual_coupling() -> None:
    graph = ChannelGraph(ZOO["resnet"](), example_input())
    stem = graph.group("backbone.0.0")
    full = tuple(range(16))
    for name, dim in [
        ("backbone.0.1", "out"),
        ("backbone.1.conv2", "out"),
        ("backbone.1.bn2", "out"),
        ("backbone.2.conv2", "out"),
        ("backbone.1.conv1.0", "in"),
        ("backbone.3.shortcut.0", "in"),
    ]:
        assert refs(stem, name, dim) == [full], name
    assert [g.name for g in graph.channel_groups] == [
        "backbone.0.0",
        "backbone.1.conv1.0",
        "backbone.2.conv1.0",
        "backbone.3.conv1.0",
        "backbone.3.conv2",
        "head",
    ]
    assert refs(graph.group("backbone.3.conv2"), "backbone.3.shortcut.0", "out") == [tuple(range(24))]
    assert graph.group("backbone.0.0").bn_names == ("backbone.0.1", "backbone.1.bn2", "backbone.2.bn2")


def test_concat_offsets() -> None:
    graph = ChannelGraph(ZOO["densenet"](), example_input())
    assert refs(graph.group("stem.0"), "head", "in") == [tuple(range(16))]
    assert refs(graph.group("stem.0"), "dense.2.0", "in") == [tuple(range(16))]
    assert refs(graph.group("dense.0.0"), "dense.2.0", "in") == [tuple(range(16, 24))]
    assert refs(graph.group("dense.1.0"), "head", "in") == [tuple(range(24, 32))]
    assert refs(graph.group("dense.2.0"), "head", "in") == [tuple(range(32, 40))]


def test_spp_and_fpn_concat() -> None:
    spp = ChannelGraph(ZOO["spp"](), example_input()).group("spp_in.0")
    assert refs(spp, "spp_out.0", "in") == [tuple(range(k, k + 8)) for k in (0, 8, 16, 24)]
    fpn = ChannelGraph(ZOO["fpn"](), example_input())
    assert refs(fpn.group("neck.lateral.0"), "neck.fuse.0", "in") == [tuple(range(16))]
    assert refs(fpn.group("backbone.c3.0"), "neck.fuse.0", "in") == [tuple(range(16, 32))]
    assert refs(fpn.group("backbone.c3.0"), "backbone.c4.0", "in") == [tuple(range(16))]
    assert {r.name for r in fpn.group("backbone.c4.0").layers if r.dim == "in"} == {"neck.lateral.0", "head.1"}
    assert [fpn.group(n).stride for n in ("backbone.c3.0", "backbone.c4.0", "neck.fuse.0")] == [8, 16, 8]


def test_depthwise_and_inverted_residual() -> None:
    graph = ChannelGraph(ZOO["mobilenetv2"](), example_input())
    expand = graph.group("backbone.1.block.0.0")
    assert refs(expand, "backbone.1.block.1.0", "out") == [tuple(range(16))]
    assert refs(expand, "backbone.1.block.1.0", "in") == [tuple(range(16))]
    assert refs(expand, "backbone.1.block.2", "in") == [tuple(range(16))]
    project = graph.group("backbone.1.block.2")
    assert refs(project, "backbone.2.block.2", "out") == [tuple(range(16))]  # residual add
    assert refs(project, "backbone.3.block.0.0", "in") == [tuple(range(16))]


def test_grouped_conv_parts() -> None:
    graph = ChannelGraph(ZOO["resnext"](), example_input())
    reduce = graph.group("backbone.1.reduce.0")
    parts = [tuple(range(k, k + 4)) for k in (0, 4, 8, 12)]
    assert reduce.size == 4
    assert refs(reduce, "backbone.1.reduce.0", "out") == parts
    assert refs(reduce, "backbone.1.grouped.0", "in") == parts
    graph.remove_channels(reduce, [1])
    conv = graph.model.backbone[1].grouped[0]
    assert (conv.in_channels, conv.out_channels, conv.weight.shape[1]) == (12, 16, 3)


def test_grouped_conv_stays_grouped_when_one_channel_per_group_is_left() -> None:
    graph = ChannelGraph(ZOO["resnext"](), example_input())
    graph.remove_channels("backbone.1.grouped.0", [0, 1, 2])  # out: 16 -> 4, i.e. groups == out_channels
    graph.remove_channels("backbone.1.reduce.0", [0])  # in: 16 -> 12; must not be pruned as a depthwise conv
    conv = graph.model.backbone[1].grouped[0]
    assert (conv.in_channels, conv.out_channels, conv.groups, tuple(conv.weight.shape)) == (12, 4, 4, (4, 3, 3, 3))
    assert outputs(graph.model, example_input())[0].shape == (1, 10, 16, 16)


def test_chunk_block() -> None:
    graph = ChannelGraph(ZOO["c2f"](), example_input())
    cv1 = graph.group("backbone.1.cv1.0")
    halves = [tuple(range(8)), tuple(range(8, 16))]
    assert cv1.size == 8 and cv1.prunable
    assert refs(cv1, "backbone.1.cv1.0", "out") == halves
    assert refs(cv1, "backbone.1.cv2.0", "in") == halves
    assert refs(cv1, "backbone.1.m.0.0.0", "in") == [tuple(range(8))]
    assert refs(graph.group("backbone.1.m.0.1.0"), "backbone.1.cv2.0", "in") == [tuple(range(16, 24))]
    graph.remove_channels(cv1, [0, 5])
    assert graph.model.backbone[1].cv1[0].out_channels == 12
    assert refs(graph.group("backbone.1.m.0.1.0"), "backbone.1.cv2.0", "in") == [tuple(range(12, 20))]
    assert outputs(graph.model, example_input())[0].shape == (1, 10, 16, 16)


def test_slice_block() -> None:
    graph = ChannelGraph(ZOO["tiny_slice"](), example_input())
    conv1 = graph.group("backbone.1.conv1.0")
    assert conv1.size == 8 and conv1.prunable
    assert refs(conv1, "backbone.1.conv1.0", "out") == [tuple(range(8)), tuple(range(8, 16))]
    assert refs(conv1, "backbone.1.conv2.0", "in") == [tuple(range(8))]
    assert refs(conv1, "head", "in") == [tuple(range(8)), tuple(range(8, 16))]
    graph.remove_channels(conv1, [2, 3, 7])
    assert graph.model.backbone[1].conv2[0].in_channels == 5
    assert outputs(graph.model, example_input())[0].shape == (1, 10, 8, 8)


def test_split_second_part_used_alone() -> None:
    """``torch.split(x, c, 1)[1]``: Torch-Pruning 1.6.1 maps the consumer to part 0; it must be part 1."""
    graph = ChannelGraph(ZOO["tiny_split"](), example_input())
    conv1 = graph.group("backbone.1.conv1.0")
    assert conv1.size == 8 and conv1.prunable
    assert refs(conv1, "backbone.1.conv1.0", "out") == [tuple(range(8)), tuple(range(8, 16))]
    assert refs(conv1, "backbone.1.conv2.0", "in") == [tuple(range(8))]
    graph.remove_channels(conv1, [0])
    assert graph.model.backbone[1].conv2[0].in_channels == 7
    assert outputs(graph.model, example_input())[0].shape == (1, 10, 8, 8)


@pytest.mark.parametrize(
    "name, root", [("c2f_static", "backbone.1.cv1.0"), ("tiny_slice_static", "backbone.1.conv1.0")]
)
def test_fixed_split_sizes_are_not_prunable(name: str, root: str) -> None:
    graph = ChannelGraph(STATIC[name](), example_input())
    g = graph.group(root)
    assert not g.prunable and g.reason is not None and "fixed sizes" in g.reason
    with pytest.raises(ValueError, match="not prunable"):
        graph.remove_channels(g, [0])
    assert [x.name for x in graph.channel_groups if not x.prunable] == [root, "head"]


def test_squeeze_excitation_multiply_couples() -> None:
    graph = ChannelGraph(ZOO["se"](), example_input())
    g = graph.group("backbone.1.0")
    assert refs(g, "backbone.2.fc2", "out") == [tuple(range(16))]
    assert refs(g, "backbone.2.fc1", "in") == [tuple(range(16))]
    assert refs(g, "head", "in") == [tuple(range(16))]
    assert refs(graph.group("backbone.2.fc1"), "backbone.2.fc2", "in") == [tuple(range(4))]


def test_channel_reduction_and_broadcast_do_not_couple() -> None:
    graph = ChannelGraph(ZOO["spatial_attention"](), example_input())
    g = graph.group("backbone.1.0")
    assert {(r.name, r.dim) for r in g.layers} == {("backbone.1.0", "out"), ("backbone.1.1", "out"), ("head", "in")}
    sam = graph.group("backbone.2.conv")
    assert sam.size == 1 and not sam.prunable
    graph.remove_channels(g, [0, 1, 2])
    assert outputs(graph.model, example_input())[0].shape == (1, 10, 8, 8)
    assert graph.model.backbone[2].conv.in_channels == 2


def test_linear_heads() -> None:
    graph = ChannelGraph(ZOO["linear_head"](), example_input())
    assert refs(graph.group("features.1.0"), "fc", "in") == [tuple(range(16))]
    assert graph.group("fc").stride is None
    flat = ChannelGraph(ZOO["flatten_head"](), example_input()).group("features.1.0")
    assert refs(flat, "fc", "in") == [tuple(range(j, 128, 16)) for j in range(16)]


def test_frozen_backbone_is_traced_and_flags_restored() -> None:
    model: Callable[[], nn.Module] = ZOO["frozen"]
    m = model().train()
    graph = ChannelGraph(m, example_input())
    assert [g.name for g in graph.channel_groups if g.prunable] == ["backbone.0.0", "backbone.1.0", "backbone.2.0"]
    assert m.training and all(mod.training for mod in m.modules())
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert all(p.requires_grad for p in m.head.parameters())
    graph.remove_channels("backbone.1.0", [0, 1])
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert m.backbone[1][0].weight.shape == (14, 8, 3, 3)


def test_strides_and_default_layer_groups() -> None:
    graph = ChannelGraph(ZOO["detector"](), example_input())
    groups = graph.layer_groups()
    assert {k: [g.name for g in v] for k, v in groups.items()} == {
        "backbone/s2": ["backbone.stem.0"],
        "backbone/s4": ["backbone.s4.0"],
        "backbone/s8": ["backbone.s8.conv1.0", "backbone.s8.conv2"],
        "backbone/s16": ["backbone.s16.conv1.0", "backbone.s16.conv2"],
        "neck/s16": ["neck.reduce.0", "neck.fuse16.0"],
        "neck/s8": ["neck.fuse8.0"],
    }
    assert all(g.prunable for gs in groups.values() for g in gs)


def test_removal_updates_shared_layer_indices() -> None:
    graph = ChannelGraph(ZOO["densenet"](), example_input())
    graph.remove_channels("stem.0", [0, 1, 2, 3])
    assert refs(graph.group("dense.0.0"), "head", "in") == [tuple(range(12, 20))]
    assert refs(graph.group("dense.2.0"), "head", "in") == [tuple(range(28, 36))]
    graph.remove_channels("dense.0.0", [7])
    assert refs(graph.group("dense.2.0"), "head", "in") == [tuple(range(27, 35))]
    assert graph.model.head.in_channels == 35


def test_summary_lists_every_group() -> None:
    graph = ChannelGraph(ZOO["detector"](), example_input())
    text = graph.summary()
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["group", "size", "stride", "layer"]
    assert len(lines) == len(graph.channel_groups) + 2
    assert "neck/s8" in text and "fixed: channels form a model output" in text
    assert lines[-1].startswith("11 channel groups, 9 prunable")
