"""Importance objects: what GroupPruner scores channel groups with, and how per-layer rows couple."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import grouppruner as gp
from grouppruner.pruning import BNScaleImportance, CustomImportance
from grouppruner.sparsity import Dynamic
from zoo import ZOO, example_input


def _graph() -> gp.ChannelGraph:
    torch.manual_seed(0)
    model = ZOO["plain"]()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(-1, 1)
    return gp.ChannelGraph(model, example_input())


def test_bn_scale_is_abs_gamma_and_couples_by_mean_max_vote() -> None:
    torch.manual_seed(0)
    model = ZOO["resnet"]()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(-1, 1)
    graph = gp.ChannelGraph(model, example_input())
    group = next(g for g in graph.channel_groups if g.prunable and len(g.bns) >= 3)  # a residual stream
    rows = BNScaleImportance().rows(graph.model, group)
    assert rows is not None and rows.shape == (len(group.bns), group.size)
    for row, ref in zip(rows, group.bns, strict=True):  # one |gamma| row per BatchNorm of the stream
        torch.testing.assert_close(row, graph.model.get_submodule(ref.name).weight.detach().abs()[list(ref.indices)])
    expected = rows.numpy()
    np.testing.assert_allclose(BNScaleImportance(coupling="mean")(graph.model, group), expected.mean(0), rtol=1e-6)
    np.testing.assert_allclose(BNScaleImportance(coupling="max")(graph.model, group), expected.max(0), rtol=1e-6)
    # vote: the k-th largest row per channel, k the majority count, so thresholding it is a majority vote
    majority = len(expected) // 2 + 1
    vote = BNScaleImportance(coupling="vote")(graph.model, group)
    np.testing.assert_allclose(vote, np.sort(expected, axis=0)[-majority], rtol=1e-6)
    for threshold in (0.2, 0.5, 0.8):
        np.testing.assert_array_equal(vote >= threshold, (expected >= threshold).sum(0) >= majority)


def test_pruner_takes_importance_objects_and_names_them_in_the_plan() -> None:
    graph = _graph()
    plan = gp.GroupPruner(graph, importance=BNScaleImportance(coupling="max"), min_channels=1).plan(ratios={})
    assert (plan.importance, plan.coupling) == ("bn_l1", "max")

    def by_index(model: nn.Module, group: gp.ChannelGroup) -> torch.Tensor:
        return torch.arange(group.size, dtype=torch.float32)

    assert gp.GroupPruner(graph, importance=CustomImportance(by_index)).plan(ratios={}).importance == "by_index"
    with pytest.raises(ValueError, match="set coupling on the importance"):
        gp.GroupPruner(graph, importance=BNScaleImportance(coupling="max"), coupling="mean")
    with pytest.raises(ValueError, match="coupling must be one of"):
        BNScaleImportance(coupling="median")  # type: ignore[arg-type]


def test_nan_scores_raise_non_finite_error_naming_the_group() -> None:
    graph = _graph()
    group = next(g for g in graph.channel_groups if g.prunable)
    bad = CustomImportance(lambda m, g: torch.full((g.size,), float("nan")))
    with pytest.raises(gp.NonFiniteError, match=f"channel group {group.name!r}"):
        gp.GroupPruner(graph, importance=bad).scores(group)


def test_bn_sparsity_does_not_write_into_the_callers_schedule() -> None:
    schedule = Dynamic(1e-3)
    graph = _graph()
    sparsity = gp.BNSparsity(graph, schedule=schedule, total_steps=20)
    assert schedule.total_steps is None and schedule.last_step == 0
    assert sparsity.schedule.total_steps == 20 and sparsity.schedule is not schedule
    graph.model(example_input()).sum().backward()
    sparsity.step()
    assert schedule.last_step == 0 and sparsity.schedule.last_step == 1


class MyNorm(nn.BatchNorm2d):
    """A user's BatchNorm subclass: a BatchNorm by type, whatever its class name says."""


class NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.norm1 = MyNorm(16)
        self.conv2 = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.norm1(self.conv1(x))))


def test_batchnorm_subclass_is_scored_by_its_gamma_and_regularized() -> None:
    torch.manual_seed(0)
    model = NormNet()
    with torch.no_grad():
        model.norm1.weight.uniform_(0.5, 1.0)
        model.norm1.weight[[1, 5, 9, 13]] = 1e-4  # near-zero gammas on strong filters: gamma must decide
        model.conv1.weight[[1, 5, 9, 13]] *= 100.0
    graph = gp.ChannelGraph(model, torch.randn(1, 3, 8, 8))
    group = graph.group("conv1")
    assert group.bn_names == ("norm1",) and all(r.role == "batchnorm" for r in group.bns)
    pruner = gp.GroupPruner(graph, min_channels=1)
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.25))
    assert plan.channel_groups[0].score == "bn_l1"
    assert sorted(set(range(16)) - set(plan.channel_groups[0].kept)) == [1, 5, 9, 13]
    assert gp.BNSparsity(graph, schedule=1e-3).layer_names == ("norm1",)
