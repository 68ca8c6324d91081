"""Budget solver on YOLOv4: targets 0.5 / 0.35 / 0.2 of params and MACs within 1 %.

At 128 x 128: every ratio is the same as at 416, and the graph traces faster.

Two models, each built once for the module: the full YOLOv4 with sparse-trained-like gammas, and a fresh
``width=0.25`` YOLOv4 whose gammas all tie (every BatchNorm weight is 1). The analytic predictor is checked
against the real pruned model once, on a deep copy of the pruner: ``apply`` prunes in place, and the module's
models are shared by every test.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from grouppruner import detection
from grouppruner.graph import ChannelGraph
from grouppruner.profile import count_macs, count_params
from grouppruner.pruning import GroupPruner

INPUT = torch.zeros(1, 3, 128, 128)


def sparse_like_gammas(model: nn.Module, seed: int = 0) -> None:
    """Gammas as after sparse training: per BN a random share of near-zero channels, the rest O(1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                share = torch.rand(1, generator=generator).item()
                small = torch.rand(c, generator=generator) < share
                gamma = torch.rand(c, generator=generator) * 0.9 + 0.1
                module.weight.copy_(torch.where(small, gamma * 1e-3, gamma))


@pytest.fixture(scope="module")
def pruner() -> GroupPruner:
    torch.manual_seed(0)
    model = detection.yolov4(num_classes=20).eval()
    sparse_like_gammas(model)
    return GroupPruner(ChannelGraph(model, INPUT), example_inputs=INPUT, min_channels=8, runtime="torch")


@pytest.fixture(scope="module")
def tied() -> GroupPruner:
    torch.manual_seed(0)
    model = detection.yolov4(num_classes=20, width=0.25).eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bool((m.weight == 1).all()) for m in bns)  # fresh: every score ties
    return GroupPruner(ChannelGraph(model, INPUT), example_inputs=INPUT, min_channels=8, runtime="torch")


@pytest.mark.parametrize("mode", ["target_params", "target_macs"])
@pytest.mark.parametrize("target", [0.5, 0.35, 0.2])
def test_tied_gammas_target_within_one_percent(tied: GroupPruner, mode: str, target: float) -> None:
    plan = tied.plan(**{mode: target})
    reached = plan.params_ratio if mode == "target_params" else plan.macs_ratio
    assert abs(reached - target) <= 0.01 * target
    assert tied.plan(**{mode: target}).to_dict() == plan.to_dict()  # deterministic
    # Ties are split evenly: every channel group not held by min_channels loses the same share (+- one channel).
    shares = [(1 - len(e.kept) / e.size, 1 / e.size) for e in plan.channel_groups if len(e.kept) > min(e.size, 8)]
    assert shares
    assert max(s - d for s, d in shares) <= min(s + d for s, d in shares)  # |s_i - s_j| <= d_i + d_j
    for entry in plan.channel_groups:
        assert len(entry.kept) >= min(entry.size, 8)


def test_tied_gammas_round_to_and_unreachable_target(tied: GroupPruner) -> None:
    rounded = GroupPruner(tied.graph, example_inputs=INPUT, min_channels=8, round_to=8, runtime="torch")
    plan = rounded.plan(target_macs=0.35)
    assert abs(plan.macs_ratio - 0.35) <= 0.01 * 0.35
    assert all(len(e.kept) % 8 == 0 or len(e.kept) == e.size for e in plan.channel_groups)
    with pytest.raises(ValueError, match=r"min_channels=8: the smallest reachable value is (\d\.\d+)") as info:
        tied.plan(target_params=0.001, strict=True)
    smallest = float(str(info.value).rsplit(" ", 1)[-1])
    assert 0.001 < smallest < 0.2
    assert tied.plan(target_params=smallest).params_ratio == pytest.approx(smallest, rel=0.01)


@pytest.mark.parametrize("mode", ["target_params", "target_macs"])
@pytest.mark.parametrize("target", [0.5, 0.35, 0.2])
def test_target_within_one_percent(pruner: GroupPruner, mode: str, target: float) -> None:
    plan = pruner.plan(**{mode: target})
    reached = plan.params_ratio if mode == "target_params" else plan.macs_ratio
    assert abs(reached - target) <= 0.01 * target
    assert plan.mode == mode and plan.target == target
    assert plan.params_before == count_params(pruner.model)
    for entry in plan.channel_groups:
        assert len(entry.kept) >= min(entry.size, 8)


def test_round_to_target_within_one_percent(pruner: GroupPruner) -> None:
    rounded = GroupPruner(pruner.graph, example_inputs=INPUT, min_channels=8, round_to=8, runtime="torch")
    plan = rounded.plan(target_params=0.35)
    assert abs(plan.params_ratio - 0.35) <= 0.01 * 0.35
    for entry in plan.channel_groups:
        assert len(entry.kept) % 8 == 0 or len(entry.kept) == entry.size


def test_budget_is_shared_by_group_distribution(pruner: GroupPruner) -> None:
    plan = pruner.plan(target_params=0.35)
    fractions = [g.channels_after / g.channels_before for g in plan.layer_groups]
    assert max(fractions) - min(fractions) > 0.05  # not one uniform ratio: each group's gammas decide


def test_predicted_counts_match_the_pruned_model(pruner: GroupPruner) -> None:
    params_before = count_params(pruner.model)
    own = copy.deepcopy(pruner)  # apply() prunes in place: prune a copy, not the module's shared model
    plan = own.plan(target_params=0.35)
    model = own.apply(plan, fold=False)  # folding changes values, not shapes
    assert model is own.model and count_params(pruner.model) == params_before  # the shared model is untouched
    assert count_params(model) == plan.params_after
    assert count_macs(model, INPUT) == plan.macs_after
    outputs = model(INPUT)
    assert [tuple(o.shape) for o in outputs] == [(1, 75, 16, 16), (1, 75, 8, 8), (1, 75, 4, 4)]
