"""ChannelGraph and GroupPruner on timm / torchvision / Ultralytics-style blocks (tests/zoo_libraries.py).

For each pattern: the coupled groups checked by hand, output shapes unchanged after pruning to 0.6 of the params,
a pruned model equal to the masked model (removed channels made exactly zero first), and every conv that does
not produce a model output shrinkable on some side.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from grouppruner.graph import ChannelGraph, ChannelGroup
from grouppruner.pruning import AutoImportance, FilterMagnitudeImportance, GroupPruner, NormScaleImportance
from test_graph import outputs
from zoo import example_input
from zoo_libraries import LIBRARY_ZOO

# Normalisers over channels: removing a channel changes the statistics of the others, so a zeroed channel is not
# exactly removable there (the masked-model comparison leaves such groups out).
_STATISTICS = ("LayerNorm", "GroupNorm")


def build(name: str) -> tuple[nn.Module, ChannelGraph]:
    torch.manual_seed(0)
    model = LIBRARY_ZOO[name]().eval()
    return model, ChannelGraph(model, example_input(2))


def layer_names(group: ChannelGroup) -> set[tuple[str, str, str]]:
    return {(r.name, r.kind, r.dim) for r in group.layers}


def zero_channels(model: nn.Module, group: ChannelGroup, units: list[int]) -> None:
    """Make group channels exactly zero where produced, and in channel-indexed parameters (implicit add)."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    with torch.no_grad():
        for r in group.layers:
            if r.dim != "out":
                continue
            idx = [r.indices[u] for u in units]
            if r.kind == "Parameter":
                p = params[r.name]
                dim = max(range(p.dim()), key=lambda d: p.shape[d])
                p.index_fill_(dim, torch.tensor(idx, dtype=torch.long), 0.0)
                continue
            m = modules[r.name]
            m.weight[idx] = 0  # type: ignore[index]
            if getattr(m, "bias", None) is not None:
                m.bias[idx] = 0  # type: ignore[index]


# ------------------------------------------------------------------ coupled groups, by hand


def test_batchnorm_act_subclass_is_a_batchnorm() -> None:
    _, graph = build("cspdarknet_bnact")
    expand = graph.group("expand.conv")
    assert expand.prunable
    # chunk(2): each group channel is one channel in each half; the residual b + block(b) joins the second half
    assert expand.size == 16
    assert ("expand.bn", "BatchNormAct2d", "out") in layer_names(expand)
    assert [r.indices for r in expand.layers if r.name == "expand.bn"] == [tuple(range(16)), tuple(range(16, 32))]
    assert ("block.1.conv", "Conv2d", "out") in layer_names(expand)
    assert ("block.0.conv", "Conv2d", "in") in layer_names(expand)
    assert graph.group("block.0.conv").prunable and graph.group("block.0.conv").size == 8


def test_convnext_layer_norm_and_layer_scale() -> None:
    _, graph = build("convnext")
    stem = graph.group("stem.0")
    assert stem.prunable, stem.reason
    names = layer_names(stem)
    # the residual stream of stage 1: stem LayerNorm2d, dw conv, block LayerNorm, fc2 out, gamma, down LayerNorm2d
    for ref in [
        ("stem.1", "LayerNorm2d", "out"),
        ("stage1.dwconv", "Conv2d", "out"),
        ("stage1.norm", "LayerNorm", "out"),
        ("stage1.fc1", "Linear", "in"),
        ("stage1.fc2", "Linear", "out"),
        ("stage1.gamma", "Parameter", "out"),
        ("down.0", "LayerNorm2d", "out"),
        ("down.1", "Conv2d", "in"),
    ]:
        assert ref in names
    down = graph.group("down.1")
    assert down.prunable and ("stage2.gamma", "Parameter", "out") in layer_names(down)
    assert ("fc", "Linear", "in") in layer_names(down)
    assert graph.group("stage1.fc1").prunable and graph.group("stage1.fc1").size == 64


def test_implicit_parameters_prune_with_their_channels() -> None:
    model, graph = build("implicit")
    group = graph.group("down.0")
    assert group.prunable, group.reason
    assert {("ia.implicit", "Parameter", "out"), ("im.implicit", "Parameter", "out")} <= layer_names(group)
    graph.remove_channels("down.0", [0, 5])
    assert model.ia.implicit.shape == (1, 22, 1, 1) and model.im.implicit.shape == (1, 22, 1, 1)
    assert model(example_input()).shape == (1, 10, 8, 8)


def test_attention_fixes_head_layout_only() -> None:
    _, graph = build("psa")
    qkv = graph.group("backbone.2.attn.qkv.0")
    assert not qkv.prunable and "regroups the channels" in str(qkv.reason)
    # the rest of the block stays prunable: the FFN hidden layer, the output fuse, the stem
    for name in ("backbone.2.ffn.0.0", "backbone.2.cv2.0", "backbone.0.0", "backbone.1.0"):
        assert graph.group(name).prunable, graph.group(name).reason


def test_attention_product_is_named() -> None:
    class QK(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Conv2d(3, 8, 1)
            self.k = nn.Conv2d(3, 8, 1)
            self.out = nn.Conv2d(1, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k = self.q(x).flatten(2), self.k(x).flatten(2)  # (N, 8, HW)
            return self.out((q.transpose(1, 2) @ k).unsqueeze(1))

    graph = ChannelGraph(QK(), example_input())
    # q and k meet in the product (Torch-Pruning couples its two inputs): one group, fixed, the op named
    reason = str(graph.group("q").reason)
    assert "op BmmBackward0 after module 'k' multiplies two activations" in reason
    assert [g.name for g in graph.channel_groups] == ["q", "out"]


def test_channel_shuffle_prunes_through() -> None:
    model, graph = build("shufflenet")
    x = example_input(2)
    shapes = [o.shape for o in outputs(model, x)]
    stream = graph.group("backbone.1.branch1.1.0")  # both blocks' branch outputs meet in the shuffles
    assert stream.prunable, stream.reason
    assert all(g.name != "backbone.1.branch2.2.0" for g in graph.channel_groups)  # reached through the shuffle
    for name in ("backbone.1.branch2.0.0", "backbone.2.branch2.0.0", "backbone.0.0"):
        assert graph.group(name).prunable, graph.group(name).reason
    graph.remove_channels(stream, [0])
    assert [o.shape for o in outputs(model, x)] == shapes


def test_grouped_conv_min_channels_counts_layer_width() -> None:
    model, graph = build("regnet")
    group = graph.group("backbone.2.a.0")  # feeds a 4-group conv: 8 group channels = 32 layer channels
    assert group.prunable and group.size == 8
    pruner = GroupPruner(graph, min_channels=8, runtime="torch")
    plan = pruner.plan(ratios={name: 0.95 for name in pruner.layer_groups})
    entry = next(g for g in plan.channel_groups if g.name == "backbone.2.a.0")
    assert len(entry.kept) == 2  # 2 group channels x 4 conv groups = 8 layer channels
    pruner.apply(plan)
    assert model.backbone[2].b[0].out_channels == 8


def test_bare_parameter_with_two_dims_is_fixed() -> None:
    class PosEmbed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.pos = nn.Parameter(torch.zeros(1, 8, 32, 32))
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x) + self.pos)

    reason = str(ChannelGraph(PosEmbed(), example_input()).group("conv").reason)
    assert "bare nn.Parameter 'pos'" in reason


def test_functional_conv_on_bare_parameter_names_op_module_and_parameter() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.w = nn.Parameter(torch.randn(4, 8, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.conv2d(self.conv(x), self.w)

    with pytest.raises(ValueError, match=r"ConvolutionBackward0 after module 'conv'.*\bw\b"):
        ChannelGraph(Functional(), example_input())


# ------------------------------------------------------------------ scores for groups without BatchNorm


def test_every_prunable_group_is_scored_and_named() -> None:
    for name in ("squeezenet", "gn_tower", "convnext", "mobilenetv3"):
        model, graph = build(name)
        auto = AutoImportance()
        for group in graph.channel_groups:
            if group.prunable:
                assert auto(model, group) is not None, (name, group.name)
    model, graph = build("gn_tower")
    plan = GroupPruner(graph, min_channels=2, runtime="torch").plan(target_params=0.6)
    score = {g.name: g.score for g in plan.channel_groups}
    assert score["c8.0.0"] == "bn_l1" and score["tower.0"] == "norm_l1" and score["fpn_out.0"] == "filter_l2"
    assert "scored by norm_l1: tower.0" in plan.summary()


def test_filter_magnitude_is_normalised_per_layer() -> None:
    model, graph = build("squeezenet")
    group = graph.group("features.2.squeeze")
    model.features[2].squeeze.weight.data.mul_(1000.0)  # a layer's scale must not change its scores
    rows = FilterMagnitudeImportance(1).rows(model, group)
    assert rows is not None and rows.shape == (1, group.size)
    torch.testing.assert_close(rows.mean(), torch.tensor(1.0))
    weight = model.features[2].squeeze.weight.detach()
    expected = weight.flatten(1).abs().sum(1)
    torch.testing.assert_close(rows[0], expected / expected.mean())


def test_norm_scale_reads_group_norm() -> None:
    model, graph = build("gn_tower")
    with torch.no_grad():
        model.tower[1].weight.copy_(torch.arange(16.0) - 8)
    group = graph.group("tower.0")
    rows = NormScaleImportance().rows(model, group)
    # GroupNorm(4, 16): group channel u is position u of each of the 4 norm groups, one row per norm group
    assert rows is not None and rows.shape == (4, group.size) == (4, 4)
    torch.testing.assert_close(rows, (torch.arange(16.0) - 8).abs().view(4, 4))


def test_importance_wrong_length_names_group() -> None:
    _, graph = build("squeezenet")
    pruner = GroupPruner(graph, importance=lambda m, g: torch.ones(g.size + 1), runtime="torch")
    with pytest.raises(ValueError, match=r"features\.0"):
        pruner.plan(target_params=0.6)


# ------------------------------------------------------------------ every model, end to end


@pytest.mark.parametrize("name", sorted(LIBRARY_ZOO))
def test_prune_to_0_6_keeps_output_shapes(name: str) -> None:
    model, graph = build(name)
    x = example_input(2)
    shapes = [o.shape for o in outputs(model, x)]
    # tiny models have coarse channel steps: the first min_channels whose plan lands within 1 % of 0.6
    for min_channels in (2, 1, 4, 8):
        pruner = GroupPruner(graph, min_channels=min_channels, runtime="torch")
        try:
            plan = pruner.plan(target_params=0.6, strict=True)
            break
        except ValueError as err:
            assert "channel steps too coarse" in str(err)
    assert math.isclose(plan.params_ratio, 0.6, rel_tol=0.011)
    pruner.apply(plan)
    assert [o.shape for o in outputs(model, x)] == shapes
    assert sum(p.numel() for p in model.parameters()) == plan.params_after


@pytest.mark.parametrize("name", sorted(LIBRARY_ZOO))
def test_every_non_output_conv_shrinkable(name: str) -> None:
    model, graph = build(name)
    shrinkable = {r.name for g in graph.channel_groups if g.prunable for r in g.layers}
    outputs_ = {g.name for g in graph.channel_groups if "model output" in str(g.reason)}
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    # a conv is shrinkable when its input or output channels may go; the first conv reads the image
    # the only exceptions are convs whose channels all meet an op that cannot follow a removal, named as such
    for conv in sorted(convs - shrinkable - outputs_):
        reasons = " ".join(str(g.reason) for g in graph.channel_groups if conv in {r.name for r in g.layers})
        assert any(k in reasons for k in ("shuffle", "regroups", "fixed sizes", "two activations")), (conv, reasons)


@settings(max_examples=14, deadline=None)
@given(name=st.sampled_from(sorted(LIBRARY_ZOO)), data=st.data())
def test_pruned_equals_masked(name: str, data: st.DataObject) -> None:
    model, graph = build(name)
    x = example_input(2)
    plan: dict[str, list[int]] = {}
    for g in graph.channel_groups:
        if g.prunable and not any(k in r.kind for r in g.layers for k in _STATISTICS):
            plan[g.name] = sorted(data.draw(st.sets(st.integers(0, g.size - 1), max_size=g.size - 1), label=g.name))
            zero_channels(model, g, plan[g.name])
    with torch.no_grad():
        before = outputs(model, x)
    for gname in data.draw(st.permutations(sorted(plan)), label="order"):
        graph.remove_channels(gname, plan[gname])
    with torch.no_grad():
        after = outputs(model, x)
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sparsity_norm_types_regularises_group_norm() -> None:
    from grouppruner.sparsity import BNSparsity

    model, graph = build("gn_tower")
    default = BNSparsity(graph, schedule=1e-3)
    assert not any(name.startswith("tower") for name in default.layer_names)
    sparsity = BNSparsity(graph, schedule=1e-3, norm_types=(nn.BatchNorm2d, nn.GroupNorm))
    assert {"tower.1", "tower.4"} <= set(sparsity.layer_names)
    model.zero_grad()
    sum(o.sum() * 0 for o in outputs(model, example_input(2))).backward()  # zero gradients on every norm
    sparsity.step()
    grad = model.tower[1].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    torch.testing.assert_close(grad, 1e-3 * torch.sign(model.tower[1].weight.detach()))
    with pytest.raises(TypeError, match="norm_types"):
        BNSparsity(graph, schedule=1e-3, norm_types=("GroupNorm",))  # type: ignore[arg-type]


def test_build_probe_leaves_layer_scale_of_the_model_alone() -> None:
    from test_graph_properties import RandomCNN

    # a chunk makes the build probe prune one channel and undo it; the layer scale must come back whole
    model = RandomCNN(8, [("split_add", 0), ("layer_scale", 0)]).eval()
    graph = ChannelGraph(model, example_input())
    assert model.blocks[1].gamma.shape == (4, 1, 1)
    graph.remove_channels("stem.0", [1])
    assert model.blocks[1].gamma.shape == (3, 1, 1)


@pytest.mark.slow
def test_torchvision_style_retinanet_maps_and_prunes() -> None:
    """ResNet-50 + FPN + shared GroupNorm heads with per-anchor view / permute outputs (a torchvision RetinaNet)."""
    from retinanet import RetinaNet

    torch.manual_seed(0)
    model = RetinaNet().eval()
    x = torch.randn(1, 3, 128, 128)
    graph = ChannelGraph(model, x)
    fixed = {g.name: g.reason for g in graph.channel_groups if not g.prunable}
    assert set(fixed) == {"cls_head.out", "box_head.out"}  # the outputs only; FPN, towers and backbone prunable
    shapes = [tuple(t.shape) for t in model(x)]
    pruner = GroupPruner(graph, min_channels=8, runtime="torch")
    plan = pruner.plan(target_params=0.6)
    pruner.apply(plan)
    assert plan.params_ratio == pytest.approx(0.6, rel=0.01)
    assert [tuple(t.shape) for t in model(x)] == shapes
