"""LatencyModel: monotone fitted units, JSON cache round-trip and key checks, target_latency planning."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from grouppruner import latency as latency_module
from grouppruner.graph import ChannelGraph
from grouppruner.latency import LatencyCacheError, LatencyKey, LatencyModel, _find_units
from grouppruner.pruning import GroupPruner
from nets import fixed_latency_model, random_detector
from zoo import PlainCNN

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector_latency() -> tuple[nn.Module, LatencyModel]:
    torch.set_num_threads(1)
    model = random_detector()
    return model, fixed_latency_model(model, X)


def test_units_cover_every_conv_with_its_bn_and_activation() -> None:
    model = PlainCNN()
    units = _find_units(model, X, None)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(units) == sorted(convs)
    for index in range(3):  # Conv -> BatchNorm -> LeakyReLU blocks: the conv's unit times all three
        unit = units[f"backbone.{index}.0"]
        assert [type(m) for m in unit.tail] == [nn.BatchNorm2d, nn.LeakyReLU]
    assert units["head"].tail == ()
    assert units["backbone.1.0"].input_shape == (1, 8, 16, 16)


def _synthetic_time(fn: functools.partial, repeats: int, device: torch.device) -> float:  # type: ignore[type-arg]
    """A deterministic stand-in for the clock: 2 us + 1 ns per multiply-accumulate, with +-3 % ripple."""
    block, x = fn.func, fn.args[0]
    conv = block[0]
    out = block(x)
    macs = out.shape[0] * out.shape[2] * out.shape[3] * conv.out_channels * conv.in_channels // conv.groups
    ripple = 1.0 + 0.03 * math.sin(conv.in_channels * 7.0 + conv.out_channels)
    return (2e-6 + 1e-9 * macs) * ripple


def test_fitted_units_are_monotone_and_close_to_the_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real fitting path (sampled widths, weighted non-negative least squares) on timings of known form."""
    monkeypatch.setattr(latency_module, "_time_call", _synthetic_time)
    model = random_detector()
    latency = LatencyModel.measure(model, X, repeats=1)
    assert latency.layers
    for layer in latency.layers.values():
        assert len({(ci, co) for ci, co, _ in layer.samples}) >= 4
        assert all(c >= 0 for c in layer.coef)
        for cin, cout, seconds in layer.samples:
            assert layer.predict(cin, cout) == pytest.approx(seconds, rel=0.08), layer.name
        widths = [(max(1, layer.in_channels * k // 4), max(1, layer.out_channels * k // 4)) for k in range(1, 5)]
        times = [layer.predict(ci, co) for ci, co in widths]
        assert times == sorted(times), layer.name


def test_prediction_is_monotone_in_width(detector_latency: tuple[nn.Module, LatencyModel]) -> None:
    _, latency = detector_latency
    for layer in latency.layers.values():
        assert all(c >= 0 for c in layer.coef)
        cin, cout = layer.in_channels, layer.out_channels
        widths = [(max(1, cin * k // 4), max(1, cout * k // 4)) for k in range(1, 5)]
        times = [layer.predict(ci, co) for ci, co in widths]
        assert times == sorted(times), layer.name
        assert layer.predict(cin, max(1, cout // 2)) <= layer.predict(cin, cout)
        assert layer.predict(max(1, cin // 2), cout) <= layer.predict(cin, cout)


def test_predictor_of_a_removal_shrinks_and_matches_predict_of_the_pruned_model(
    detector_latency: tuple[nn.Module, LatencyModel],
) -> None:
    model, latency = detector_latency
    model = copy.deepcopy(model)
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, min_channels=2, runtime="torch")
    predict = latency.predictor(model)
    dense = predict({})
    assert dense == pytest.approx(latency.predict(model))
    assert dense == pytest.approx(latency.dense_s)  # the residual makes the full-width prediction exact
    plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5))
    removed: dict[tuple[str, str], int] = {}
    for entry in plan.channel_groups:
        for ref in pruner.graph.group(entry.name).layers:
            key = (ref.name, ref.dim)
            removed[key] = removed.get(key, 0) + entry.size - len(entry.kept)
    before_apply = predict(removed)
    assert before_apply < dense
    pruner.apply(plan)
    assert latency.predict(model) == pytest.approx(before_apply)


def test_cache_round_trip(tmp_path: Path, detector_latency: tuple[nn.Module, LatencyModel]) -> None:
    model, latency = detector_latency
    path = tmp_path / "latency.json"
    latency.save(path)
    loaded = LatencyModel.load(path, expect=latency.key)
    assert loaded.state_dict() == latency.state_dict()
    assert loaded.predict(model) == latency.predict(model)
    # measure(cache=) on an existing file loads it instead of timing again
    again = LatencyModel.measure(model, X, cache=path, threads=latency.key.threads)
    assert again.state_dict() == latency.state_dict()


@pytest.mark.parametrize(
    "change",
    [
        {"device": "cuda:Some Other GPU"},
        {"input_shapes": [[1, 3, 64, 64]]},
        {"threads": 7},
        {"dtype": "torch.float16"},
    ],
)
def test_cache_for_another_setting_is_a_clear_error(
    tmp_path: Path, detector_latency: tuple[nn.Module, LatencyModel], change: dict[str, object]
) -> None:
    model, latency = detector_latency
    path = tmp_path / "latency.json"
    other = LatencyModel.from_state_dict(latency.state_dict())
    other.key = dataclasses.replace(latency.key, **change)  # type: ignore[arg-type]
    other.save(path)
    field = next(iter(change))
    with pytest.raises(LatencyCacheError, match=f"another setting.*{field}"):
        LatencyModel.measure(model, X, cache=path, threads=latency.key.threads)
    with pytest.raises(LatencyCacheError, match=field):
        LatencyModel.load(path, expect=LatencyModel.key_for(model, X) if field != "threads" else latency.key)


def test_cache_for_another_model_or_format_is_a_clear_error(
    tmp_path: Path, detector_latency: tuple[nn.Module, LatencyModel]
) -> None:
    _, latency = detector_latency
    with pytest.raises(LatencyCacheError, match="another model"):
        latency.predict(PlainCNN())
    path = tmp_path / "latency.json"
    state = latency.state_dict()
    state["format"] = 99
    path.write_text(json.dumps(state))
    with pytest.raises(LatencyCacheError, match="format"):
        LatencyModel.load(path)
    path.write_text("{not json")
    with pytest.raises(LatencyCacheError, match="not valid JSON"):
        LatencyModel.load(path)


def test_key_describes_device_threads_dtype_and_shape() -> None:
    key = LatencyModel.key_for(PlainCNN(), X)
    assert isinstance(key, LatencyKey)
    assert key.device.startswith("cpu:") and key.threads == torch.get_num_threads()
    assert key.dtype == "torch.float32" and key.input_shapes == [[1, 3, 32, 32]]
    assert key.mismatch(key) == []


# a tiny model is mostly fixed per-layer overhead: 0.8 is within reach, 0.5 is not
@pytest.mark.parametrize("target", [0.8, 0.9])
def test_target_latency_lands_on_the_models_prediction(
    detector_latency: tuple[nn.Module, LatencyModel], target: float
) -> None:
    model, latency = detector_latency
    model = copy.deepcopy(model)
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, min_channels=2, runtime="torch")
    dense = latency.predict(model)
    plan = pruner.plan(target_latency=target, latency_model=latency, verify_steps=0)
    assert plan.mode == "target_latency" and plan.target == target and plan.runtime == "torch"
    # the first plan is measured and recorded even without a correction step
    assert plan.latency is not None and len(plan.latency["steps"]) == 1 and plan.latency["runtime"] == "torch"
    assert plan.latency["steps"][0]["predicted"] == pytest.approx(target, rel=0.01)
    pruner.apply(plan)
    # against the model's own prediction (1 % solver tolerance), never against a wall-clock time
    assert latency.predict(model) / dense == pytest.approx(target, rel=0.01)


def test_latency_weight_trades_parameters_for_latency(detector_latency: tuple[nn.Module, LatencyModel]) -> None:
    model, latency = detector_latency
    predicted = {}
    for weight in (0.0, 2.0):
        pruned = copy.deepcopy(model)
        pruner = GroupPruner(ChannelGraph(pruned, X), example_inputs=X, min_channels=2, runtime="torch")
        plan = pruner.plan(target_params=0.5, latency_model=latency, latency_weight=weight)
        assert plan.params_ratio == pytest.approx(0.5, rel=0.01)
        pruner.apply(plan)
        predicted[weight] = latency.predict(pruned)
    assert predicted[2.0] <= predicted[0.0]


def test_latency_options_are_checked(detector_latency: tuple[nn.Module, LatencyModel]) -> None:
    model, latency = detector_latency
    pruner = GroupPruner(ChannelGraph(copy.deepcopy(model), X), example_inputs=X, min_channels=2, runtime="torch")
    with pytest.raises(ValueError, match="latency_weight must be >= 0"):
        pruner.plan(target_params=0.5, latency_model=latency, latency_weight=-1.0)
    with pytest.raises(ValueError, match="target modes"):
        pruner.plan(ratios={}, latency_model=latency, latency_weight=1.0)
    with pytest.raises(ValueError, match=r"target_latency must be a fraction in \(0, 1\]"):
        pruner.plan(target_latency=1.5, latency_model=latency)
    with pytest.raises(ValueError, match="exactly one"):
        pruner.plan(target_latency=0.5, target_params=0.5, latency_model=latency)


def test_nonnegative_fit_meets_the_optimality_conditions() -> None:
    """KKT: x >= 0; the gradient of ||a x - b||^2 vanishes where x > 0 and is >= 0 where x = 0."""
    from grouppruner._utils.fitting import nonnegative_lstsq as _nonnegative_lstsq

    rng = np.random.default_rng(0)
    active_at_zero = 0
    for _ in range(200):
        a, b = rng.random((6, 4)), rng.standard_normal(6)
        x = _nonnegative_lstsq(a, b)
        gradient = a.T @ (a @ x - b)
        assert (x >= 0).all()
        assert np.abs(gradient[x > 1e-12]).max(initial=0.0) < 1e-9
        assert gradient[x <= 1e-12].min(initial=0.0) > -1e-9
        active_at_zero += int((x <= 1e-12).any())
    assert active_at_zero > 50  # the constraint binds in many of the draws: the test exercises it
