"""PlanSearch (plans chosen by measured accuracy), adaptive BatchNorm, and the planner options it draws on."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import grouppruner as gp
from grouppruner.graph import ChannelGraph
from grouppruner.profile import count_macs, count_params
from grouppruner.pruning import GroupPruner, PlanSearch, recalibrate_batchnorm
from nets import fixed_latency_model, random_detector

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
CALIBRATION = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]

pytestmark = pytest.mark.usefixtures("one_thread")


def make_pruner(seed: int = 0, **options: object) -> GroupPruner:
    model = random_detector(seed)
    options.setdefault("runtime", "torch")  # exact widths on the tiny detector: no runtime channel block
    return GroupPruner(ChannelGraph(model, X), example_inputs=X, min_channels=1, **options)  # type: ignore[arg-type]


def output_match(reference: nn.Module) -> object:
    """An evaluate(): minus the squared distance of the pruned model's outputs to the dense model's."""
    with torch.no_grad():
        target = [t.clone() for t in _flat(reference.eval()(X))]

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        return -sum(float((a - b).pow(2).mean()) for a, b in zip(_flat(model(X)), target, strict=True))

    return evaluate


def _flat(out: object) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]  # type: ignore[list-item]


def records(search_result: gp.pruning.SearchResult) -> list[tuple[object, ...]]:
    return [(r.index, r.kind, r.widths, r.reached, r.score) for r in search_result.records]


# ----------------------------------------------------------------------------- adaptive BatchNorm


def test_recalibration_sets_running_stats_to_the_batch_average_and_leaves_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5)).eval()
    model[3].train()  # a submodule frozen in another mode keeps it
    bn = model[1]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(4, 3, 8, 8) * (i + 1) + i for i in range(3)]
    assert recalibrate_batchnorm(model, batches, num_batches=2) == 2
    with torch.no_grad():
        features = [model[0](b) for b in batches[:2]]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features])
    variances = torch.stack([f.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for f in features])
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
    assert int(bn.num_batches_tracked) == 2
    for name, value in model.state_dict().items():
        if name in weights:
            assert torch.equal(value, weights[name]), name
    assert bn.momentum == 0.1 and not model.training and not bn.training and model[3].training


def test_recalibration_refuses_an_empty_source_and_skips_models_without_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    used_up = (b for b in CALIBRATION)
    recalibrate_batchnorm(model, used_up)
    with pytest.raises(ValueError, match=r"yielded no batch.*generator"):
        recalibrate_batchnorm(model, used_up)
    assert recalibrate_batchnorm(nn.Conv2d(3, 4, 3), []) == 0
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_batchnorm(model, CALIBRATION, num_batches=0)


# ----------------------------------------------------------------------------- planner options


def test_rank_normalisation_cuts_every_layer_group_by_the_same_share() -> None:
    pruner = make_pruner()
    plan = pruner.plan(target_params=0.5, normalise="rank")
    assert abs(plan.params_ratio - 0.5) <= 0.005
    kept = [g.channels_after / g.channels_before for g in plan.layer_groups]
    # one common share, up to one channel of the smallest group (kept counts are whole channels)
    step = max(1 / g.channels_before for g in plan.layer_groups)
    assert max(kept) - min(kept) <= step + 1e-9
    default = pruner.plan(target_params=0.5)
    assert [g.channels_after for g in default.layer_groups] != [g.channels_after for g in plan.layer_groups]


def test_layer_group_bias_moves_the_budget_between_groups_and_still_meets_it() -> None:
    pruner = make_pruner()
    name = "backbone/s16"
    base = {g.name: g.channels_after for g in pruner.plan(target_params=0.5).layer_groups}
    more = pruner.plan(target_params=0.5, layer_group_bias={name: 4.0})
    less = pruner.plan(target_params=0.5, layer_group_bias={name: 0.25})
    widths = {"more": {g.name: g.channels_after for g in more.layer_groups}}
    widths["less"] = {g.name: g.channels_after for g in less.layer_groups}
    assert widths["more"][name] < base[name] < widths["less"][name]
    for plan in (more, less):
        assert abs(plan.params_ratio - 0.5) <= 0.005
    with pytest.raises(ValueError, match="layer_group_bias applies to the target modes"):
        pruner.plan(ratios={name: 0.5}, layer_group_bias={name: 2.0})
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        pruner.plan(target_params=0.5, layer_group_bias={name: 0.0})
    with pytest.raises(KeyError, match="unknown layer group 'nope'"):
        pruner.plan(target_params=0.5, layer_group_bias={"nope": 2.0})
    with pytest.raises(ValueError, match="normalise must be"):
        pruner.plan(target_params=0.5, normalise="mean")


# ----------------------------------------------------------------------------- the search


@pytest.mark.parametrize("mode", ["target_params", "target_macs", "target_latency"])
def test_every_scored_candidate_meets_the_budget_on_the_pruned_model(mode: str) -> None:
    pruner = make_pruner()
    dense = copy.deepcopy(pruner.model)
    latency = fixed_latency_model(dense, X)
    measured: list[float] = []

    def evaluate(model: nn.Module) -> float:
        if mode == "target_params":
            measured.append(count_params(model) / count_params(dense))
        elif mode == "target_macs":
            measured.append(count_macs(model, X) / count_macs(dense, X))
        else:
            measured.append(latency.predict(model) / latency.predict(dense))
        return measured[-1]

    result = PlanSearch(
        pruner, evaluate=evaluate, calibration=CALIBRATION, candidates=8, latency_model=latency, **{mode: 0.5}
    ).run()
    scored = [r for r in result.records if r.score is not None]
    assert len(scored) >= 3 and {"solver", "perturb", "random"} <= {r.kind for r in scored}
    assert [r.kind for r in result.records[:2]] == ["solver", "uniform"]
    assert len({json.dumps(r.widths, sort_keys=True) for r in scored}) == len(scored)  # distinct width vectors
    for record, value in zip(scored, measured, strict=True):
        assert abs(value - 0.5) <= 0.01 * 0.5, (record.kind, value)
        assert record.reached is not None and math.isclose(record.reached, value, rel_tol=1e-9)
    assert all(r.reached is None and not r.widths for r in result.records if r.score is None)
    # the searched model itself was never touched
    assert count_params(pruner.model) == count_params(dense)


def test_the_best_candidate_is_chosen_and_its_plan_applies() -> None:
    pruner = make_pruner()

    def evaluate(model: nn.Module) -> float:  # a score the search cannot know in advance: the neck's width
        return float(sum(m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "neck" in n))

    for mode, pick in (("max", max), ("min", min)):
        search = PlanSearch(
            pruner, evaluate=evaluate, calibration=CALIBRATION, candidates=6, target_params=0.5, mode=mode
        )
        result = search.run()
        scored = [r for r in result.records if r.score is not None]
        best = pick(r.score for r in scored)
        assert result.best.score == best
        assert result.best.index == min(r.index for r in scored if r.score == best)  # ties: the lowest index
        assert {g.name: g.channels_after for g in result.plan.layer_groups} == result.best.widths
    pruned = pruner.apply(result.plan)
    assert count_params(pruned) == result.plan.params_after


def test_adaptive_batchnorm_scores_the_solver_plan_better_than_stale_statistics() -> None:
    pruner = make_pruner()
    evaluate = output_match(copy.deepcopy(pruner.model))
    plan = pruner.plan(target_params=0.5)
    stale = copy.deepcopy(pruner)
    stale_score = evaluate(stale.apply(plan).eval())
    record = PlanSearch(pruner, evaluate=evaluate, calibration=CALIBRATION, candidates=1, target_params=0.5).step()
    assert record.kind == "solver" and record.score is not None
    assert record.score != stale_score
    assert set(record.seconds) == {"plan", "apply", "calibrate", "evaluate"} and record.total_seconds > 0


def test_search_is_deterministic_by_seed() -> None:
    def run(seed: int) -> list[tuple[object, ...]]:
        pruner = make_pruner()
        return records(
            PlanSearch(
                pruner,
                evaluate=output_match(copy.deepcopy(pruner.model)),
                calibration=CALIBRATION,
                target_macs=0.5,
                candidates=5,
                seed=seed,
            ).run()
        )

    first = run(3)
    assert first == run(3)
    other = run(4)
    assert first[0] == other[0]  # the solver's plan does not depend on the seed
    assert [r[2] for r in first[1:]] != [r[2] for r in other[1:]]


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_result_as_one_run(tmp_path: object) -> None:
    state = tmp_path / "search.json"  # type: ignore[operator]
    pruner = make_pruner()
    evaluate = output_match(copy.deepcopy(pruner.model))
    options = {"evaluate": evaluate, "calibration": CALIBRATION, "target_params": 0.4, "seed": 1}
    whole = PlanSearch(pruner, candidates=6, **options).run()  # type: ignore[arg-type]

    calls = 0

    def dies_on_the_fourth(model: nn.Module) -> float:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt  # stands in for kill -9 between two atomic writes
        return evaluate(model)  # type: ignore[operator]

    killed = {**options, "evaluate": dies_on_the_fourth}
    with pytest.raises(KeyboardInterrupt):
        PlanSearch(pruner, candidates=6, state_path=state, **killed).run()  # type: ignore[arg-type]
    saved = json.loads(state.read_text())
    assert 3 <= len(saved["records"]) < 6  # what finished before the kill (unscorable candidates cost no call)
    assert not list(state.parent.glob(".search.json.*.tmp"))
    resumed = PlanSearch(pruner, candidates=6, state_path=state, **options).run()  # type: ignore[arg-type]
    assert records(resumed) == records(whole)
    assert resumed.best.index == whole.best.index and resumed.plan == whole.plan
    # more candidates extend the same search
    longer = PlanSearch(pruner, candidates=8, state_path=state, **options).run()  # type: ignore[arg-type]
    assert records(longer)[:6] == records(whole) and len(longer.records) == 8
    # fewer candidates than the state holds: the same result as a search of that many (the state is kept)
    fewer = PlanSearch(pruner, candidates=3, state_path=state, **options).run()  # type: ignore[arg-type]
    alone = PlanSearch(pruner, candidates=3, **options).run()  # type: ignore[arg-type]
    assert records(fewer) == records(alone) and fewer.best.index == alone.best.index and fewer.plan == alone.plan
    assert len(json.loads(state.read_text())["records"]) == 8


def test_a_state_of_another_search_is_refused(tmp_path: object) -> None:
    state = tmp_path / "search.json"  # type: ignore[operator]
    pruner = make_pruner()
    evaluate = output_match(copy.deepcopy(pruner.model))
    PlanSearch(
        pruner, evaluate=evaluate, calibration=CALIBRATION, candidates=1, target_params=0.5, state_path=state
    ).run()
    with pytest.raises(ValueError, match="other budget, seed"):
        PlanSearch(
            pruner,
            evaluate=evaluate,
            calibration=CALIBRATION,
            candidates=2,
            target_params=0.4,
            seed=2,
            state_path=state,
        ).run()
    other = make_pruner(seed=5)  # the same architecture, other weights
    with pytest.raises(ValueError, match="other weights_digest"):
        PlanSearch(
            other, evaluate=evaluate, calibration=CALIBRATION, candidates=2, target_params=0.5, state_path=state
        ).run()


def test_bad_options_and_bad_scores_are_refused() -> None:
    pruner = make_pruner()
    with pytest.raises(ValueError, match="exactly one of"):
        PlanSearch(pruner, evaluate=float, calibration=CALIBRATION)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad candidates=0"):
        PlanSearch(pruner, evaluate=float, calibration=CALIBRATION, target_params=0.5, candidates=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad mode"):
        PlanSearch(pruner, evaluate=float, calibration=CALIBRATION, target_params=0.5, mode="best")  # type: ignore[arg-type]
    search = PlanSearch(pruner, evaluate=lambda m: math.nan, calibration=CALIBRATION, target_params=0.5)
    with pytest.raises(ValueError, match="evaluate returned nan for candidate 0"):
        search.step()
    done = PlanSearch(pruner, evaluate=lambda m: 1.0, calibration=CALIBRATION, target_params=0.5, candidates=1)
    done.run()
    with pytest.raises(RuntimeError, match="all 1 candidates are scored"):
        done.step()
    generator = PlanSearch(
        pruner, evaluate=lambda m: 1.0, calibration=(b for b in CALIBRATION), target_params=0.5, candidates=3
    )
    with pytest.raises(ValueError, match="generator is used up"):
        generator.run()
