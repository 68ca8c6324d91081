"""GroupPruner / PruningPlan: planning modes, hard rules, scoring, folding targets, bad input, optimizer, ONNX."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import grouppruner as gp
from grouppruner.graph import ChannelGraph
from grouppruner.profile import count_macs, count_params
from grouppruner.pruning import GroupPruner, PruningPlan, applied_plans, model_fingerprint, rebuild_optimizer
from grouppruner.pruning.budget import BudgetSolution, kept_count, removal_order, solve_cut
from nets import CBA, gamma_zero_reference, random_detector, randomize_bn
from zoo import ZOO, MiniDetector, ResNetTiny

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


pytestmark = pytest.mark.usefixtures("one_thread")


def make_pruner(model: nn.Module, **options: object) -> GroupPruner:
    options.setdefault("runtime", "torch")  # exact widths: no runtime channel block
    return GroupPruner(ChannelGraph(model, X), example_inputs=X, **options)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- plan data


def test_plan_is_plain_json_and_round_trips() -> None:
    pruner = make_pruner(random_detector(), min_channels=2)
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.4))
    text = plan.to_json()
    assert isinstance(json.loads(text), dict)
    again = PruningPlan.from_json(text)
    assert again == plan
    assert again.fingerprint == model_fingerprint(pruner.model)
    assert {g.name for g in plan.layer_groups} == set(pruner.layer_groups)
    for entry in plan.channel_groups:
        assert entry.kept == sorted(entry.kept)
        assert sorted(entry.kept + entry.removed) == list(range(entry.size))
    table = plan.summary()
    for group in plan.layer_groups:
        assert group.name in table
        assert f"{group.channels_before} -> {group.channels_after}" in table
    assert f"{plan.params_before:,}" in table and f"{plan.macs_after:,}" in table
    with pytest.raises(ValueError, match="PruningPlan"):
        PruningPlan.from_json('{"mode": "ratios"}')
    with pytest.raises(ValueError, match="parsed"):
        PruningPlan.from_json("{not json")


def test_fingerprint_identifies_architecture() -> None:
    assert model_fingerprint(random_detector(0)) == model_fingerprint(random_detector(1))  # values do not matter
    assert model_fingerprint(random_detector()) != model_fingerprint(ResNetTiny())


def test_cost_model_predicts_before_counts() -> None:
    model = random_detector()
    plan = make_pruner(model).plan(ratios={})
    assert plan.params_before == plan.params_after == count_params(model)
    assert plan.macs_before == plan.macs_after == count_macs(model, X)


# ----------------------------------------------------------------------------- rules and solver


@pytest.mark.parametrize(
    ("raw", "size", "minimum", "round_to", "expected"),
    [
        (0, 16, 4, None, 4),
        (7, 16, 4, None, 7),
        (7, 16, 4, 8, 8),
        (9, 16, 4, 8, 16),
        (1, 3, 4, None, 3),
        (0, 10, 1, 8, 8),
        (9, 10, 1, 8, 10),
        (16, 16, 4, 8, 16),
    ],
)
def test_kept_count_rules(raw: int, size: int, minimum: int, round_to: int | None, expected: int) -> None:
    assert kept_count(raw, size, minimum, round_to) == expected


def test_solve_cut_picks_closest_step() -> None:
    candidates = np.array([0.0, 1.0, 2.0, 3.0, np.inf])
    costs = {0.0: 100.0, 1.0: 80.0, 2.0: 52.0, 3.0: 30.0, np.inf: 10.0}
    assert solve_cut(costs.__getitem__, candidates, 50.0) == (2.0, 52.0)
    assert solve_cut(costs.__getitem__, candidates, 70.0) == (1.0, 80.0)
    assert solve_cut(costs.__getitem__, candidates, 100.0) == (0.0, 100.0)


def test_removal_order_spreads_ties_evenly() -> None:
    tied = [np.ones(4), np.ones(2)]
    # keys (k + 0.5) / t: first group 1/8, 3/8, 5/8, 7/8; second group 1/4, 3/4
    np.testing.assert_array_equal(removal_order(tied), [0, 4, 1, 2, 5, 3])
    mixed = [np.array([0.5, 0.1, 0.5]), np.array([0.5, 0.3])]
    np.testing.assert_array_equal(removal_order(mixed), [1, 4, 0, 3, 2])  # lower scores first, then tie keys
    assert removal_order([]).shape == (0,)


def test_ratio_threshold_is_the_group_quantile() -> None:
    pruner = make_pruner(random_detector(), min_channels=1)
    name = next(iter(pruner.layer_groups))
    plan = pruner.plan(ratios={name: 0.5})
    scores = np.sort(np.concatenate([pruner.scores(pruner.graph.group(g)) for g in pruner.layer_groups[name]]))
    entry = next(g for g in plan.layer_groups if g.name == name)
    assert entry.threshold == pytest.approx(scores[math.floor(0.5 * len(scores))])
    assert entry.channels_after == int((scores >= entry.threshold).sum())
    others = [g for g in plan.layer_groups if g.name != name]
    assert all(g.channels_after == g.channels_before for g in others)


def test_ratio_is_honoured_when_scores_tie() -> None:
    model = MiniDetector().eval()  # fresh BatchNorms: every gamma is 1
    pruner = make_pruner(model, min_channels=1)
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5))
    for group in plan.layer_groups:
        assert group.channels_before - group.channels_after == group.channels_before // 2


@pytest.mark.parametrize("coupling", ["mean", "max", "vote"])
@pytest.mark.parametrize("name", ["detector", "resnet", "densenet", "c2f"])
def test_ratios_prune_exactly_p_when_half_the_gammas_are_zero(name: str, coupling: str) -> None:
    """Threshold 0 (the 0.4-quantile when half the scores are 0): the zero channels still go, exactly 40 %."""
    model = ZOO[name]().eval()
    pruner = make_pruner(model, min_channels=1, coupling=coupling)
    with torch.no_grad():
        for names in pruner.layer_groups.values():
            for group in map(pruner.graph.group, names):
                for ref in group.bns:  # every other channel of every channel group: scores exactly 0
                    model.get_submodule(ref.name).weight[list(ref.indices[::2])] = 0.0
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.4))
    for entry in plan.layer_groups:
        assert entry.threshold == 0.0
        assert entry.channels_before - entry.channels_after == math.floor(0.4 * entry.channels_before)
    for group in plan.channel_groups:
        score = pruner.scores(pruner.graph.group(group.name))
        assert score is not None
        assert (score[group.removed] == 0).all()
    assert plan.params_after < plan.params_before


def test_thresholds_mode_keeps_channels_at_or_above() -> None:
    pruner = make_pruner(random_detector(), min_channels=1)
    plan = pruner.plan(thresholds=dict.fromkeys(pruner.layer_groups, 0.7))
    for entry in plan.channel_groups:
        score = pruner.scores(pruner.graph.group(entry.name))
        assert score is not None
        expected = [i for i in range(entry.size) if score[i] >= 0.7]
        assert entry.kept == expected or (not expected and len(entry.kept) == 1)


def test_min_channels_and_round_to_hold_for_every_group() -> None:
    pruner = make_pruner(random_detector(), min_channels=5, round_to=4)
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.95))
    for entry in plan.channel_groups:
        kept = len(entry.kept)
        assert kept >= min(entry.size, 5)
        assert kept % 4 == 0 or kept == entry.size
        score = pruner.scores(pruner.graph.group(entry.name))
        assert score is not None
        removed = entry.removed
        if removed:  # the kept channels are the strongest ones
            assert min(score[entry.kept]) >= max(score[removed])


def test_coupling_mean_max_vote() -> None:
    model = ResNetTiny().eval()
    pruner_mean = make_pruner(model, coupling="mean")
    group = next(g for g in pruner_mean.graph.channel_groups if len(g.bns) >= 3)
    rows = torch.stack([model.get_submodule(r.name).weight.detach().abs()[list(r.indices)] for r in group.bns])
    rows = rows.double().numpy()
    np.testing.assert_allclose(pruner_mean.scores(group), rows.mean(0))
    pruner_max = GroupPruner(pruner_mean.graph, coupling="max", example_inputs=X, runtime="torch")
    np.testing.assert_allclose(pruner_max.scores(group), rows.max(0))
    pruner_vote = GroupPruner(pruner_mean.graph, coupling="vote", example_inputs=X, runtime="torch")
    majority = math.ceil(rows.shape[0] / 2)
    vote = pruner_vote.scores(group)
    assert vote is not None
    for threshold in (0.2, 0.5, 0.9):  # thresholding the vote score == majority of per-layer masks
        np.testing.assert_array_equal(vote >= threshold, (rows >= threshold).sum(0) >= majority)


def test_callable_importance_keeps_highest() -> None:
    def by_index(model: nn.Module, group: gp.ChannelGroup) -> torch.Tensor:
        return torch.arange(group.size, dtype=torch.float32)

    pruner = make_pruner(random_detector(), importance=by_index, min_channels=1)
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5))
    assert plan.importance == "by_index"
    for entry in plan.channel_groups:
        assert entry.kept == list(range(entry.size - len(entry.kept), entry.size))


def test_target_modes_land_within_one_percent_on_small_model() -> None:
    pruner = make_pruner(random_detector(), min_channels=1)
    for target in (0.8, 0.5):
        plan = pruner.plan(target_params=target)
        assert abs(plan.params_ratio - target) <= 0.01 * target
        plan = pruner.plan(target_macs=target)
        assert abs(plan.macs_ratio - target) <= 0.01 * target


def test_target_a_hair_out_of_reach_lands_on_the_closest_plan(caplog: pytest.LogCaptureFixture) -> None:
    # round_to=8 on a 36k-parameter model: one step of 8 channels is several % of the parameters
    pruner = make_pruner(random_detector(), min_channels=1, round_to=8)
    with pytest.raises(ValueError, match=r"cannot be met within 1% .* closest reachable value is (\d\.\d+)") as info:
        pruner.plan(target_params=0.8, strict=True)
    closest = float(re.search(r"closest reachable value is (\d\.\d+)", str(info.value)).group(1))  # type: ignore[union-attr]
    assert abs(closest - 0.8) > 0.008
    with caplog.at_level(logging.WARNING, logger="grouppruner.pruning.budget"):
        plan = pruner.plan(target_params=0.8)
    assert plan.params_ratio == pytest.approx(closest, abs=5e-5)
    assert f"closest reachable value is {closest:.4f}" in caplog.text
    # no channel step lands nearer to 0.8 than the plan chosen: one more or one fewer step of 8 is further away
    assert pruner.plan(target_params=0.9).params_ratio == pytest.approx(0.9, rel=0.01)


def test_target_below_the_minimum_widths_is_refused_strict_or_not() -> None:
    pruner = make_pruner(random_detector(), min_channels=4)
    unreachable = r"not reachable with .*: the smallest reachable value is (\d\.\d+)"
    for strict in (True, False):
        with pytest.raises(gp.InvalidOptionError, match=unreachable) as info:
            pruner.plan(target_params=0.01, strict=strict)
    smallest = float(re.search(r"smallest reachable value is (\d\.\d+)", str(info.value)).group(1))  # type: ignore[union-attr]
    plan = pruner.plan(target_params=smallest)
    assert plan.params_ratio == pytest.approx(smallest, abs=5e-5)
    assert all(len(g.kept) == min(g.size, 4) for g in plan.channel_groups)


def test_plan_disagreeing_with_its_solver_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The final check on the plan's own numbers catches any solver / plan disagreement."""
    pruner = make_pruner(random_detector(), min_channels=1)
    solve = pruner._solve

    def claims_more(*args: object, **kwargs: object) -> BudgetSolution:
        solution = solve(*args, **kwargs)  # type: ignore[arg-type]
        return dataclasses.replace(solution, reached=solution.reached * 0.9)

    monkeypatch.setattr(pruner, "_solve", claims_more)
    with pytest.raises(RuntimeError, match=r"target_macs: the plan reports 0\.\d+, the solver predicted"):
        pruner.plan(target_macs=0.5)


# ----------------------------------------------------------------------------- apply and folding


def test_apply_prunes_in_place_and_records_plan() -> None:
    model = random_detector()
    pruner = make_pruner(model, min_channels=2)
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5))
    shapes = [o.shape for o in model(X)]
    assert pruner.apply(plan) is model
    assert [o.shape for o in model(X)] == shapes
    assert count_params(model) == plan.params_after < plan.params_before
    assert count_macs(model, X) == plan.macs_after
    assert applied_plans(model) == [plan]
    assert model_fingerprint(model) != plan.fingerprint


class FoldTargets(nn.Module):
    """One producer feeding three 1x1 consumers: with bias, bias-free + BN, bias-free without BN."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = CBA(3, 8)
        self.with_bias = nn.Conv2d(8, 4, 1, bias=True)
        self.with_bn = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.bare = nn.Conv2d(8, 4, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return torch.cat([self.with_bias(y), self.with_bn(y), torch.relu(self.bare(y))], 1)


def test_folding_into_bias_running_mean_and_new_bias() -> None:
    model = FoldTargets().eval()
    randomize_bn(model, torch.Generator().manual_seed(2))
    pruner = make_pruner(model, min_channels=1)
    plan = pruner.plan(ratios={"stem/s1": 0.5})
    assert plan.add_bias == ["bare"]
    reference = gamma_zero_reference(model, pruner.graph, plan)
    mean_before = model.with_bn[1].running_mean.clone()
    pruner.apply(plan)
    assert not torch.equal(model.with_bn[1].running_mean, mean_before)
    assert model.bare.bias is not None
    assert count_params(model) == plan.params_after
    torch.testing.assert_close(model(X), reference(X), atol=1e-5, rtol=1e-5)


class Wide3x3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = CBA(3, 8)
        self.body = CBA(8, 8, k=3)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


def test_folding_is_exact_inside_3x3_and_approximate_on_borders() -> None:
    model = Wide3x3().eval()
    randomize_bn(model, torch.Generator().manual_seed(4))
    pruner = make_pruner(model, min_channels=1)
    plan = pruner.plan(ratios={"stem/s1": 0.5})
    reference = gamma_zero_reference(model, pruner.graph, plan)
    expected = reference(X)
    out = pruner.apply(plan)(X)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)
    assert (out - expected).abs().amax() > 1e-3  # border pixels: padding saw zeros, not the constant


# ----------------------------------------------------------------------------- bad input


def test_bad_options() -> None:
    graph = ChannelGraph(random_detector(), X)
    with pytest.raises(ValueError, match="min_channels"):
        GroupPruner(graph, min_channels=0, example_inputs=X)
    with pytest.raises(ValueError, match="round_to"):
        GroupPruner(graph, round_to=0, example_inputs=X)
    with pytest.raises(ValueError, match="coupling"):
        GroupPruner(graph, coupling="median", example_inputs=X)
    with pytest.raises(ValueError, match="importance"):
        GroupPruner(graph, importance="taylor", example_inputs=X)
    with pytest.raises(TypeError, match="importance"):
        GroupPruner(graph, importance=3, example_inputs=X)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown channel group 'nope'"):
        GroupPruner(graph, layer_groups={"a": ["nope"]}, example_inputs=X)
    with pytest.raises(ValueError, match="not prunable"):
        GroupPruner(graph, layer_groups={"a": ["head.0"]}, example_inputs=X)
    first = graph.channel_groups[0].name
    with pytest.raises(ValueError, match="two layer groups"):
        GroupPruner(graph, layer_groups={"a": [first], "b": [first]}, example_inputs=X)


def test_bad_plan_arguments() -> None:
    pruner = make_pruner(random_detector())
    name = next(iter(pruner.layer_groups))
    with pytest.raises(ValueError, match="exactly one"):
        pruner.plan()
    with pytest.raises(ValueError, match="exactly one"):
        pruner.plan(ratios={name: 0.1}, target_params=0.5)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            pruner.plan(ratios={name: bad})
    with pytest.raises(ValueError, match="NaN"):
        pruner.plan(ratios={name: float("nan")})
    with pytest.raises(KeyError, match="valid layer groups") as info:
        pruner.plan(ratios={"backbone/s99": 0.5})
    assert name in str(info.value)
    with pytest.raises(KeyError, match="unknown layer group"):
        pruner.plan(thresholds={"nope": 0.5})
    for bad in (0.0, 1.2, float("nan")):
        with pytest.raises(ValueError, match="target_params"):
            pruner.plan(target_params=bad)


def test_unreachable_target_names_smallest_value() -> None:
    pruner = make_pruner(random_detector(), min_channels=8)
    with pytest.raises(ValueError, match=r"smallest reachable value is (\d\.\d+)") as info:
        pruner.plan(target_params=0.05, strict=True)
    smallest = float(str(info.value).rsplit(" ", 1)[-1])
    plan = pruner.plan(target_params=smallest)
    assert plan.params_ratio == pytest.approx(smallest, abs=1e-4)


def test_nan_scores_are_rejected() -> None:
    model = random_detector()
    pruner = make_pruner(model)
    with torch.no_grad():
        model.backbone["s4"][1].weight[3] = float("nan")
    with pytest.raises(ValueError, match="NaN") as info:
        pruner.plan(ratios={})
    assert "backbone.s4" in str(info.value)

    def wrong_shape(model: nn.Module, group: gp.ChannelGroup) -> torch.Tensor:
        return torch.ones(group.size + 1)

    model = random_detector()
    with pytest.raises(ValueError, match="shape"):
        make_pruner(model, importance=wrong_shape).plan(ratios={})


def test_plan_for_another_model_is_rejected() -> None:
    pruner = make_pruner(random_detector(), min_channels=1)
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5))
    other = make_pruner(ResNetTiny().eval())
    with pytest.raises(ValueError, match="fingerprint"):
        other.apply(plan)
    pruner.apply(plan)
    with pytest.raises(ValueError, match="fingerprint"):  # the same model, already changed by the plan
        pruner.apply(plan)


def test_plan_for_another_instance_of_the_architecture_is_refused_unless_allowed() -> None:
    # Same architecture (same fingerprint), different trained weights: the plan's channel choice came from
    # model A's gammas and must not land silently on model B.
    pruner_a = make_pruner(random_detector(0), min_channels=1)
    plan = pruner_a.plan(ratios=dict.fromkeys(pruner_a.layer_groups, 0.5))
    assert plan.weights_digest is not None
    model_b = random_detector(1)
    pruner_b = make_pruner(model_b, min_channels=1)
    params = count_params(model_b)
    with pytest.raises(ValueError, match=r"other weights.*allow_other_weights=True"):
        pruner_b.apply(plan)
    assert count_params(model_b) == params  # refused before anything was removed
    pruner_b.apply(plan, allow_other_weights=True)  # the user means it
    assert count_params(model_b) == plan.params_after
    # Training after planning changes the gammas: the same model is refused too.
    pruner_c = make_pruner(random_detector(0), min_channels=1)
    plan_c = pruner_c.plan(ratios=dict.fromkeys(pruner_c.layer_groups, 0.5))
    bn = next(m for m in pruner_c.model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.weight[0] += 0.25
    with pytest.raises(ValueError, match="other weights"):
        pruner_c.apply(plan_c)


def test_plan_without_weights_digest_still_loads_and_applies() -> None:
    # Plans written before the field existed (JSON files, old checkpoints) load, and are applied unchecked.
    pruner = make_pruner(random_detector(0), min_channels=1)
    data = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5)).to_dict()
    del data["weights_digest"]
    old = PruningPlan.from_json(json.dumps(data))
    assert old.weights_digest is None
    other = make_pruner(random_detector(1), min_channels=1)
    other.apply(old)
    assert count_params(other.model) == old.params_after


# ----------------------------------------------------------------------------- optimizer, ONNX


def test_rebuild_optimizer_maps_pruned_parameters() -> None:
    model = random_detector()
    model.train()
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone")]
    optimizer = torch.optim.SGD([{"params": backbone, "lr": 0.1}, {"params": rest}], lr=0.01, momentum=0.9)
    pruner = make_pruner(model, min_channels=2)
    pruner.apply(pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5)))
    current = {id(p) for p in model.parameters()}
    stale = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in current]
    assert stale  # the old optimizer would update tensors the model no longer uses
    rebuilt = rebuild_optimizer(optimizer, model)
    assert type(rebuilt) is torch.optim.SGD
    assert [g["lr"] for g in rebuilt.param_groups] == [0.1, 0.01]
    assert rebuilt.param_groups[0]["momentum"] == 0.9
    assert {id(p) for g in rebuilt.param_groups for p in g["params"]} == current
    loss = sum(o.square().mean() for o in model(X))
    loss.backward()
    before = model.backbone["stem"][0].weight.detach().clone()
    rebuilt.step()
    assert not torch.equal(before, model.backbone["stem"][0].weight)
    foreign = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(ValueError, match="not part of the model"):
        rebuild_optimizer(foreign, model)


def test_onnx_export_matches_pytorch() -> None:
    ort = pytest.importorskip("onnxruntime")
    model = random_detector()
    pruner = make_pruner(model, min_channels=2, round_to=2)
    pruner.apply(pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.6)))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo
        torch.onnx.export(model, (X,), buffer, dynamo=False, opset_version=17, input_names=["images"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": X.numpy()})
    with torch.no_grad():
        expected = model(X)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_copy_keeps_applied_plan() -> None:
    model = random_detector()
    pruner = make_pruner(model, min_channels=1)
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.3))
    pruner.apply(plan)
    assert applied_plans(copy.deepcopy(model)) == [plan]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_prune_and_cost_model_is_exact(name: str) -> None:
    """Every coupling pattern of the graph zoo: forward works, shapes kept, predicted counts are the real ones."""
    model = ZOO[name]().eval()
    randomize_bn(model, torch.Generator().manual_seed(6))
    graph = ChannelGraph(model, X)
    pruner = GroupPruner(graph, example_inputs=X, min_channels=2, runtime="torch")
    if not pruner.layer_groups:
        pytest.skip(f"{name}: nothing prunable")
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5))
    with torch.no_grad():
        shapes = [o.shape for o in torch.utils._pytree.tree_leaves(model(X))]
    pruner.apply(plan)
    with torch.no_grad():
        assert [o.shape for o in torch.utils._pytree.tree_leaves(model(X))] == shapes
    assert count_params(model) == plan.params_after
    assert count_macs(model, X) == plan.macs_after
    assert plan.params_after < plan.params_before


@pytest.mark.parametrize("mode", ["ratios", "thresholds"])
def test_one_float_instead_of_a_mapping_is_an_option_type_error(mode: str) -> None:
    model = nn.Sequential(CBA(3, 8), CBA(8, 8), nn.Conv2d(8, 2, 1))
    pruner = GroupPruner(ChannelGraph(model, torch.randn(1, 3, 8, 8)), runtime="torch")
    expected = rf"plan\({mode}=\.\.\.\) takes a mapping of layer group -> value, got"
    with pytest.raises(gp.OptionTypeError, match=expected):
        pruner.plan(**{mode: 0.5})
    assert pruner.plan(**{mode: dict.fromkeys(pruner.layer_groups, 0.5)}).mode == mode  # what the message suggests
