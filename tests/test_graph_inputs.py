"""ChannelGraph: bad input, ignore=, layer-group specs, remove_channels validation, unusual models."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grouppruner import BNSparsity, GroupPruner
from grouppruner.graph import ChannelGraph, ChannelGroup, GraphError
from zoo import ZOO, ConvBN, example_input


@pytest.fixture(scope="module")
def detector_graph() -> ChannelGraph:
    torch.manual_seed(0)
    return ChannelGraph(ZOO["detector"](), example_input())


class DictOut(nn.Module):
    """Returns {"out": head map, "feat": the feature map it is computed from}."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBN(3, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {"out": self.head(f), "feat": f}


class SharedHead(nn.Module):
    """One head conv applied at two strides (RetinaNet style): its inputs at both levels are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = ConvBN(3, 8, s=2)
        self.c2 = ConvBN(8, 8, s=2)
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.c1(x)
        return [self.head(a), self.head(self.c2(a))]


class FunctionalConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBN(3, 8)
        self.w = nn.Parameter(torch.randn(4, 8, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.body(x), self.w, padding=1).relu()


class ChannelShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBN(3, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        n, c, h, w = f.shape
        return self.head(f.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w))


class ConcatThenChunk(nn.Module):
    """Two groups concatenated then chunked: the chunk cannot stay even unless both lose the same channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = ConvBN(3, 8)
        self.b = ConvBN(3, 8)
        self.mid = ConvBN(3, 8)
        self.c = nn.Conv2d(8, 4, 1)
        self.d = nn.Conv2d(8, 4, 1)
        self.e = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.cat([self.a(x), self.b(x)], 1).chunk(2, 1)
        return self.c(p) + self.d(q) + self.e(self.mid(x))


class CoordConcat(nn.Module):
    """Concatenates two constant coordinate channels in front of a feature map (CoordConv)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBN(3, 8)
        self.head = nn.Conv2d(10, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        coords = torch.zeros(f.shape[0], 2, f.shape[2], f.shape[3])
        return self.head(torch.cat([coords, f], 1))


class YoloStyleHead(nn.Module):
    """Head output reshaped to (N, anchors, H, W, 5 + classes) in forward()."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBN(3, 16, s=2)
        self.head = nn.Conv2d(16, 3 * 7, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.head(self.body(x))
        n, _, h, w = p.shape
        return p.view(n, 3, 7, h, w).permute(0, 1, 3, 4, 2).contiguous()


class MLPHead(nn.Module):
    """Pooled features -> hidden Linear (prunable) -> output Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBN(3, 8, s=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.pool(self.body(x)).flatten(1))))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBN(3, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x) + self.body(y))


# ---------------------------------------------------------------- bad input


def test_model_without_convolution() -> None:
    with pytest.raises(ValueError, match="no convolution layer"):
        ChannelGraph(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), torch.randn(1, 3, 2, 2))


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        ChannelGraph(lambda x: x, torch.randn(1, 3, 8, 8))  # type: ignore[arg-type]


def test_wrappers_are_seen_through() -> None:
    """One wrapper policy: the graph of a DataParallel / compiled model is the wrapped model's, names included."""
    model = ZOO["plain"]()
    plain = ChannelGraph(model, example_input(), ignore=["backbone.1"])
    for wrapped, prefix in ((nn.DataParallel(model), "module."), (torch.compile(model, backend="eager"), "_orig_mod.")):
        graph = ChannelGraph(wrapped, example_input(), ignore=[prefix + "backbone.1"])
        assert graph.model is model
        assert [(g.name, g.prunable) for g in graph.channel_groups] == [
            (g.name, g.prunable) for g in plain.channel_groups
        ]


def test_wrong_input_shape_wraps_model_error() -> None:
    with pytest.raises(ValueError, match=r"forward of PlainCNN failed on example_inputs Tensor\(1, 4, 32, 32\)") as e:
        ChannelGraph(ZOO["plain"](), torch.randn(1, 4, 32, 32))
    assert isinstance(e.value.__cause__, RuntimeError)
    model = ZOO["plain"]()
    with pytest.raises(ValueError):
        ChannelGraph(model, torch.randn(1, 4, 32, 32))
    assert not any(m._forward_hooks for m in model.modules())  # no tracing hook left behind


def test_wrong_input_type_wraps_model_error() -> None:
    with pytest.raises(ValueError, match="failed on example_inputs str") as e:
        ChannelGraph(ZOO["plain"](), "image.jpg")
    assert e.value.__cause__ is not None


def test_output_not_from_parameters() -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(1)

    with pytest.raises(ValueError, match="found no Conv/Linear layer"):
        ChannelGraph(Constant(), example_input())


def test_functional_conv_raises_graph_error() -> None:
    with pytest.raises(GraphError, match=r"ConvolutionBackward0 after module 'body\.1'"):
        ChannelGraph(FunctionalConv(), example_input())


def test_unknown_ignore_name_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"no module named 'bakbone\.1\.0'.*close matches: 'backbone\.1\.0'"):
        ChannelGraph(ZOO["plain"](), example_input(), ignore=["bakbone.1.0"])


def test_ignore_pattern_matching_nothing() -> None:
    with pytest.raises(ValueError, match=r"pattern 'neck\.\*' matches no module"):
        ChannelGraph(ZOO["plain"](), example_input(), ignore="neck.*")


def test_ignore_foreign_module_and_wrong_type() -> None:
    with pytest.raises(ValueError, match="not part of the model"):
        ChannelGraph(ZOO["plain"](), example_input(), ignore=[nn.Conv2d(3, 3, 1)])
    with pytest.raises(TypeError, match="ignore entries"):
        ChannelGraph(ZOO["plain"](), example_input(), ignore=[3])  # type: ignore[list-item]


# ---------------------------------------------------------------- ignore semantics


@pytest.mark.parametrize("spec", ["backbone.1.0", "backbone.1", "backbone.1.*", "module"])
def test_ignore_keeps_both_dimensions_of_a_layer(spec: str) -> None:
    model = ZOO["plain"]()
    ignore: Any = model.backbone[1][0] if spec == "module" else spec
    graph = ChannelGraph(model, example_input(), ignore=ignore)
    assert [g.name for g in graph.channel_groups if g.prunable] == ["backbone.2.0"]
    for name, dim in [("backbone.0.0", "in"), ("backbone.1.0", "out")]:
        reason = graph.group(name).reason
        assert reason is not None and f"ignored layer 'backbone.1.0' ({dim})" in reason


# ---------------------------------------------------------------- layer groups


def test_layer_groups_mapping(detector_graph: ChannelGraph) -> None:
    groups = detector_graph.layer_groups(
        {"early": ["backbone.stem.*", "backbone.s4.*"], "backbone": "backbone.*", "rest": ["*"]}
    )
    assert {k: len(v) for k, v in groups.items()} == {"early": 2, "backbone": 4, "rest": 3}


def test_layer_groups_mapping_may_leave_groups_out(
    detector_graph: ChannelGraph, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="grouppruner._utils.names"):
        groups = detector_graph.layer_groups({"b": ["backbone.*"]})
    assert [g.name for g in groups["b"]] == [
        g.name for g in detector_graph.channel_groups if g.prunable and g.name.startswith("backbone.")
    ]
    assert "neither pruned nor regularized: neck.reduce.0, neck.fuse8.0, neck.fuse16.0" in caplog.text


def test_one_spec_language_for_graph_pruner_and_sparsity(detector_graph: ChannelGraph) -> None:
    """Globs, exact names and ChannelGroup objects mean the same to ChannelGraph, GroupPruner and BNSparsity."""
    first = next(g for g in detector_graph.channel_groups if g.prunable)
    spec = {"first": [first], "backbone": "backbone.*", "neck": ["neck.reduce.0", "neck.fuse*"]}
    expected = {k: [g.name for g in v] for k, v in detector_graph.layer_groups(spec).items()}
    assert expected["first"] == [first.name] and first.name not in expected["backbone"]
    pruner = GroupPruner(detector_graph, layer_groups=spec, min_channels=1)
    assert pruner.layer_groups == expected
    sparsity = BNSparsity(detector_graph, schedule=1e-3, layer_groups=spec)
    assert list(sparsity.stats()) == [k for k in expected if any(detector_graph.group(n).bns for n in expected[k])]


def test_layer_groups_mapping_overlap_and_typo(detector_graph: ChannelGraph) -> None:
    with pytest.raises(ValueError) as e:
        detector_graph.layer_groups({"all": ["*"], "neck": ["neck.*"], "typo": ["nek.*"]})
    msg = str(e.value)
    assert "pattern 'neck.*' of 'neck' overlaps earlier patterns" in msg
    assert "pattern 'nek.*' of 'typo' matches no channel group" in msg


def test_layer_groups_pattern_may_match_only_fixed_groups(detector_graph: ChannelGraph) -> None:
    groups = detector_graph.layer_groups({"head": ["head.*"], "all": ["*"]})
    assert list(groups) == ["all"]


def test_layer_groups_callable_and_bad_specs(detector_graph: ChannelGraph) -> None:
    groups = detector_graph.layer_groups(lambda g: "big" if g.size >= 32 else "small")
    assert {g.size for g in groups["big"]} == {32} and all(g.size < 32 for g in groups["small"])
    with pytest.raises(TypeError, match="returned int"):
        detector_graph.layer_groups(lambda g: 1)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="entries must be glob patterns, names or ChannelGroups"):
        detector_graph.layer_groups({"a": [1]})  # type: ignore[list-item]
    with pytest.raises(TypeError, match="layer groups must be None, a mapping"):
        detector_graph.layer_groups(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- remove_channels validation


def test_remove_channels_validation() -> None:
    graph = ChannelGraph(ZOO["plain"](), example_input())
    g = graph.group("backbone.1.0")
    with pytest.raises(ValueError, match=r"indices \[16\] out of range for channel group 'backbone\.1\.0'"):
        graph.remove_channels(g, [0, 16])
    with pytest.raises(ValueError, match=r"duplicate indices \[3\]"):
        graph.remove_channels(g, [3, 1, 3])
    with pytest.raises(ValueError, match="cannot remove all 16 channels"):
        graph.remove_channels(g, range(16))
    with pytest.raises(TypeError, match="integers"):
        graph.remove_channels(g, [1.0])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="integers"):
        graph.remove_channels(g, [True])
    with pytest.raises(ValueError, match=r"'head' is not prunable: channels form a model output"):
        graph.remove_channels("head", [0])
    with pytest.raises(KeyError, match=r"close matches: 'backbone\.1\.0'"):
        graph.remove_channels("backbone.1", [0])
    assert graph.remove_channels(g, []) == g
    assert graph.model.backbone[1][0].out_channels == 16
    updated = graph.remove_channels(g, torch.tensor([15, 0]))
    assert updated.size == 14 and updated.layers[0].indices == tuple(range(14))
    again = graph.remove_channels(g, [13])  # a stale group object is looked up by name
    assert again.size == 13 and graph.channel_groups[1] is again
    assert graph.model.backbone[2][0].weight.shape == (16, 13, 3, 3)


# ---------------------------------------------------------------- unusual models


def test_every_output_tensor_is_protected_and_output_transform_selects() -> None:
    graph = ChannelGraph(DictOut(), example_input())
    reason = graph.group("body.0").reason
    assert reason is not None and "model output (op LeakyReluBackward0" in reason
    selected = ChannelGraph(DictOut(), example_input(), output_transform=lambda out: out["out"])
    assert selected.group("body.0").prunable and not selected.group("head").prunable


def test_forward_fn_and_tuple_inputs() -> None:
    x = example_input()
    inputs = {"pair": (x, x)}
    graph = ChannelGraph(TwoInputs(), inputs, forward_fn=lambda m, inp: m(*inp["pair"]))
    assert graph.group("body.0").prunable
    assert graph.example_inputs is inputs and graph.forward_fn is not None and graph.output_transform is None
    tupled = ChannelGraph(TwoInputs(), (x, x))
    graph.remove_channels("body.0", [1])
    tupled.remove_channels("body.0", [1])
    assert tupled.model(x, x).shape == (1, 4, 32, 32)


def test_shared_head_couples_its_inputs() -> None:
    graph = ChannelGraph(SharedHead(), example_input())
    g = graph.group("c1.0")
    assert {(r.name, r.dim) for r in g.layers} >= {("c2.0", "out"), ("head", "in"), ("c2.0", "in")}
    head = graph.group("head")
    assert head.stride is None and not head.prunable
    graph.remove_channels(g, [0, 2])
    assert [o.shape for o in graph.model(example_input())] == [(1, 6, 16, 16), (1, 6, 8, 8)]


def test_concat_with_constant_channels() -> None:
    graph = ChannelGraph(CoordConcat(), example_input())
    g = graph.group("body.0")
    assert [r.indices for r in g.layers if r.name == "head"] == [tuple(range(2, 10))]
    graph.remove_channels(g, [0, 7])
    assert graph.model.head.in_channels == 8 and graph.model(example_input()).shape == (1, 4, 32, 32)


def test_reshaped_head_output_is_protected_and_its_inputs_prunable() -> None:
    graph = ChannelGraph(YoloStyleHead(), example_input())
    reason = graph.group("head").reason
    assert reason is not None and "model output (tensor of shape (1, 3, 16, 16, 7))" in reason
    graph.remove_channels("body.0", [0, 5])
    assert graph.model(example_input()).shape == (1, 3, 16, 16, 7)


def test_hidden_linear_layer_group() -> None:
    graph = ChannelGraph(MLPHead(), example_input())
    assert {k: [g.name for g in v] for k, v in graph.layer_groups().items()} == {
        "body/s2": ["body.0"],
        "fc1/flat": ["fc1"],
    }
    graph.remove_channels("fc1", [3, 4])
    assert graph.model.fc2.in_features == 14 and graph.model(example_input()).shape == (1, 4)


def test_default_layer_group_of_a_bare_sequential() -> None:
    model = nn.Sequential(ConvBN(3, 8, s=2), ConvBN(8, 8, s=2), nn.Conv2d(8, 4, 1))
    assert list(ChannelGraph(model, example_input()).layer_groups()) == ["model/s2", "model/s4"]


def test_op_changing_the_channel_count_is_not_prunable() -> None:
    class Repeat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = ConvBN(3, 8)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x).repeat(1, 2, 1, 1))

    reason = ChannelGraph(Repeat(), example_input()).group("body.0").reason
    assert reason == "op RepeatBackward0 after module 'body.1' maps 8 to 16 channels, which cannot follow a removal"


def test_channel_shuffle_prunes_the_same_positions_of_each_shuffle_group() -> None:
    graph = ChannelGraph(ChannelShuffle(), example_input())
    group = graph.group("body.0")
    assert group.prunable and group.size == 4  # 8 channels in 2 shuffle groups: positions 0..3
    refs = {(r.name, r.dim): [] for r in group.layers}
    for r in group.layers:
        refs[(r.name, r.dim)].append(r.indices)
    assert refs[("body.0", "out")] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert refs[("head", "in")] == [(0, 2, 4, 6), (1, 3, 5, 7)]  # channel i * 4 + k leaves as k * 2 + i
    graph.remove_channels(group, [1])
    assert graph.model.head.in_channels == 6 and graph.model(example_input()).shape == (1, 4, 32, 32)


def test_chunk_over_two_groups_not_prunable() -> None:
    graph = ChannelGraph(ConcatThenChunk(), example_input())
    for name in ("a.0", "b.0"):
        reason = graph.group(name).reason
        assert reason is not None and "several channel groups" in reason
    assert graph.group("mid.0").prunable


def test_group_norm_loses_equal_counts_per_group() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    graph = ChannelGraph(model, example_input())
    g = graph.group("0")
    assert g.size == 4 and [r.indices for r in g.layers if r.name == "1"] == [
        tuple(range(k, k + 4)) for k in (0, 4, 8, 12)
    ]
    graph.remove_channels(g, [0, 3])
    assert model[1].num_channels == 8 and model(example_input()).shape == (1, 4, 32, 32)


def test_depthwise_conv_on_the_input_is_fixed() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    graph = ChannelGraph(model, example_input())
    reason = graph.group("0").reason
    assert reason is not None and "reads a model input" in reason
    assert graph.group("1").prunable


def test_uncopyable_model_with_chunk_is_checked_like_any_other() -> None:
    """The split check removes channels on the model itself and undoes it: no copy is needed."""
    plain = ChannelGraph(ZOO["c2f"](), example_input())
    model = ZOO["c2f"]()
    model.lock = threading.Lock()  # deepcopy fails on it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = ChannelGraph(model, example_input())
    assert [(g.name, g.size, g.prunable) for g in graph.channel_groups] == [
        (g.name, g.size, g.prunable) for g in plain.channel_groups
    ]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_inference_mode_is_rejected() -> None:
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        ChannelGraph(ZOO["plain"](), example_input())


def test_built_under_no_grad_and_channel_group_helpers() -> None:
    with torch.no_grad():
        graph = ChannelGraph(ZOO["resnet"](), example_input())
    g: ChannelGroup = graph.group("backbone.0.0")
    assert g.bn_names == tuple(dict.fromkeys(r.name for r in g.bns))
    assert all(r.kind == "BatchNorm2d" and r.dim == "out" for r in g.bns)
    assert repr(graph) == "ChannelGraph(ResNetTiny, 6 groups, 5 prunable)"
