"""Runtimes: the channel block, runners in onnxruntime and eager PyTorch, interleaved timing, landing target_latency."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from grouppruner import latency as latency_module
from grouppruner import runtime as runtime_module
from grouppruner.graph import ChannelGraph
from grouppruner.latency import LatencyModel
from grouppruner.pruning import GroupPruner, verify
from grouppruner.pruning.plan import PruningPlan
from grouppruner.runtime import (
    DEFAULT_RUNTIME,
    LatencyComparison,
    Runtime,
    compare_latency,
    cpu_vector_block,
    resolve_runtime,
)
from nets import random_detector
from zoo import PlainCNN

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("flags", "capability", "block"),
    [({"avx2", "avx512f"}, "AVX2", 16), ({"avx2", "fma"}, "AVX2", 8), ({"neon"}, "DEFAULT", 1), (set(), "AVX512", 16)],
)
def test_vector_block_follows_the_cpu_flags(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], capability: str, block: int
) -> None:
    monkeypatch.setattr(runtime_module, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert cpu_vector_block() == block
    assert Runtime("onnxruntime").channel_block == block
    assert Runtime("torch").channel_block == 1


def test_runtime_names_and_options_are_checked() -> None:
    assert resolve_runtime(None).name == DEFAULT_RUNTIME == "onnxruntime"
    assert resolve_runtime("torch") == Runtime("torch")
    given = Runtime("onnxruntime", threads=2, block=16)
    assert resolve_runtime(given) is given and given.describe() == {
        "name": "onnxruntime",
        "threads": 2,
        "block": 16,
        "spin_wait": False,
        "deploy": None,
    }
    with pytest.raises(ValueError, match="runtime must be one of"):
        resolve_runtime("tensorrt")
    with pytest.raises(TypeError, match="runtime must be a name"):
        resolve_runtime(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block must be"):
        Runtime("onnxruntime", block=0)
    with pytest.raises(ValueError, match="threads must be"):
        Runtime("torch", threads=0)


@pytest.mark.parametrize("block", [8, 16])
def test_default_runtime_puts_kept_widths_on_the_block(block: int) -> None:
    model = random_detector()
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, runtime=Runtime("onnxruntime", block=block))
    assert pruner.round_to == block
    plan = pruner.plan(target_macs=0.9)  # the mini detector's widths (8 .. 64) allow little more at block 16
    assert plan.runtime == "onnxruntime" and plan.round_to == block
    for group in plan.channel_groups:
        assert len(group.kept) % block == 0 or len(group.kept) == group.size, group.name
    assert any(len(g.kept) < g.size for g in plan.channel_groups)
    # an explicit round_to wins over the runtime's block; the torch runtime keeps any width
    assert (
        GroupPruner(pruner.graph, example_inputs=X, round_to=4, runtime=Runtime("onnxruntime", block=16)).round_to == 4
    )
    assert GroupPruner(pruner.graph, example_inputs=X, runtime="torch").round_to is None


def test_default_runtime_is_onnxruntime_with_this_cpus_block() -> None:
    pruner = GroupPruner(ChannelGraph(PlainCNN(), X), example_inputs=X)
    assert pruner.runtime.name == "onnxruntime"
    block = cpu_vector_block()
    assert pruner.round_to == (block if block > 1 else None)


def test_runners_agree_and_onnxruntime_runs_the_exported_model() -> None:
    pytest.importorskip("onnxruntime")
    model = random_detector()
    with torch.no_grad():
        reference = model(X)  # a list of (1, C, H, W) maps, one per scale
    before = copy.deepcopy(model.state_dict())
    ort_out = Runtime("onnxruntime", threads=1).runner(model, X)()
    torch_out = Runtime("torch", threads=1).runner(model, X)()
    assert len(ort_out) == len(torch_out) == len(reference)
    for ours, eager, ref in zip(ort_out, torch_out, reference, strict=True):
        assert torch.allclose(eager, ref)
        assert np.allclose(ours, ref.numpy(), atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the export works on a copy
    with pytest.raises(ValueError, match="forward_fn cannot be exported"):
        Runtime("onnxruntime").runner(model, X, forward_fn=lambda m, x: m(x))


def test_compare_latency_reports_ratios_to_the_first_runner() -> None:
    slow, fast = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
    torch_runtime = Runtime("torch", threads=1)
    runners = [torch_runtime.runner(slow, X), torch_runtime.runner(fast, X)]
    result = compare_latency(runners, runtime=torch_runtime, rounds=5, calls=2, min_call_s=1e-3)
    assert result.ratios[0] == 1.0 and len(result.seconds) == 2 and result.rounds == 5
    assert all(len(samples) == 5 for samples in result.samples)
    assert 0 < result.ratios[1] < 1  # 16x fewer output channels: faster on any machine
    assert result.to_dict()["runtime"] == "torch" and "samples" not in result.to_dict()
    with pytest.raises(ValueError, match="compare_latency needs"):
        compare_latency([], rounds=1)


def _plan(target: float) -> PruningPlan:
    return PruningPlan("f", "target_latency", target, "bn_l1", "mean", 8, None, [], [], 1, 1, 1, 1)


@pytest.mark.parametrize("bias", [0.7, 1.3])
def test_land_latency_corrects_a_biased_prediction(monkeypatch: pytest.MonkeyPatch, bias: float) -> None:
    """The runtime measures ``bias`` times what the latency model predicted (plus a constant): the loop must
    correct its ask until the measured fraction is near the target, within the step bound."""

    def measured_fraction(asked: float) -> float:
        return min(1.0, 0.05 + bias * asked)

    def fake_compare(runners: list[Any], *, runtime: Runtime, rounds: int) -> LatencyComparison:
        ratio = runners[1]()
        return LatencyComparison("onnxruntime", 2, 8, [1.0, ratio], [1.0, ratio], rounds, (0.5, 0.6))

    monkeypatch.setattr(verify, "compare_latency", fake_compare)
    asks: list[float] = []

    def plan_for(asked: float) -> tuple[PruningPlan, float]:
        asks.append(asked)
        return _plan(asked), asked

    plan = verify.land_latency(
        0.5,
        plan_for,
        lambda p: p,  # type: ignore[arg-type,return-value]
        lambda: 1.0,
        lambda p: lambda: measured_fraction(p.target),  # type: ignore[attr-defined]
        Runtime("onnxruntime", threads=2, block=8),
        steps=3,
    )
    assert plan.latency is not None
    assert abs(plan.latency["ratio"] - 0.5) <= verify.LANDING_TOLERANCE
    assert 2 <= len(plan.latency["steps"]) <= 4 and len(asks) == len(plan.latency["steps"])
    assert plan.latency["threads"] == 2 and plan.latency["block"] == 8 and plan.latency["load_average"] == [0.5, 0.6]
    assert asks[0] == 0.5 and math.isclose(plan.latency["steps"][0]["measured"], measured_fraction(0.5))


def test_land_latency_keeps_the_closest_plan_when_steps_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_compare(runners: list[Any], *, runtime: Runtime, rounds: int) -> LatencyComparison:
        ratio = runners[1]()
        return LatencyComparison("torch", 1, 1, [1.0, ratio], [1.0, ratio], rounds)

    monkeypatch.setattr(verify, "compare_latency", fake_compare)
    plan = verify.land_latency(
        0.5,
        lambda asked: (_plan(asked), asked),
        lambda p: p,  # type: ignore[arg-type,return-value]
        lambda: 1.0,
        lambda p: lambda: 0.9,  # the runtime never gets faster: no plan can land
        Runtime("torch", threads=1),
        steps=1,
    )
    assert plan.latency is not None and len(plan.latency["steps"]) == 2 and plan.latency["ratio"] == 0.9


def _synthetic_unit_time(unit: Any, cin: int, cout: int, repeats: int, runtime: Runtime) -> float:
    """2 us + 1 ns per (C_in * C_out), 1.5 times slower off the block: a clock-free stand-in for onnxruntime."""
    seconds = 2e-6 + 1e-9 * cin * cout
    block = runtime.channel_block
    on = all(c % block == 0 or c < block for c in (cin, cout))
    return seconds if on else 1.5 * seconds


def test_latency_model_in_onnxruntime_sees_what_rounding_buys(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(latency_module, "_time_unit", _synthetic_unit_time)
    model = random_detector()
    latency = LatencyModel.measure(model, X, repeats=1, runtime=Runtime("onnxruntime", threads=1, block=8))
    assert latency.key.runtime == "onnxruntime" and latency.key.block == 8 and latency.key.threads == 1
    wide = [layer for layer in latency.layers.values() if layer.in_channels > 8 and layer.out_channels > 8]
    assert wide
    for layer in wide:
        on_widths = [(ci, co) for ci, co, _ in layer.samples if layer.on_block(ci, co)]
        off_widths = [(ci, co) for ci, co, _ in layer.samples if not layer.on_block(ci, co)]
        assert len(on_widths) >= 3 and off_widths, layer.name
        assert all(ci % 8 == 0 or ci < 8 for ci, _ in on_widths)
        assert layer.off_block == pytest.approx(1.5, rel=0.1), layer.name
        cin, cout = layer.in_channels // 8 * 8, layer.out_channels // 8 * 8
        assert layer.predict(cin - 1, cout - 1) > layer.predict(cin, cout)  # a channel fewer, but off the block
    restored = LatencyModel.from_state_dict(latency.state_dict())
    assert restored.key == latency.key
    assert all(restored.layers[n].off_block == latency.layers[n].off_block for n in latency.layers)
    with pytest.raises(ValueError, match="drop forward_fn"):
        LatencyModel.measure(model, X, runtime="onnxruntime", forward_fn=lambda m, x: m(x))


def test_old_latency_caches_read_as_eager_torch() -> None:
    model = random_detector()
    state = LatencyModel.measure(model, X, repeats=1).state_dict()
    for key in ("runtime", "block"):
        state["key"].pop(key)
    for layer in state["layers"]:
        layer.pop("block")
        layer.pop("off_block")
    restored = LatencyModel.from_state_dict(state)
    assert restored.key.runtime == "torch" and restored.key.block == 1
    assert all(layer.off_block == 1.0 for layer in restored.layers.values())


@pytest.mark.slow
def test_target_latency_lands_on_the_measured_latency_in_torch() -> None:
    """End to end on a real clock: plan, measure interleaved, correct; recorded as measured."""
    torch.manual_seed(0)
    model = nn.Sequential(
        *[nn.Sequential(nn.Conv2d(c, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()) for c in (3, 64, 64, 64)]
    ).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.1, 1.0)
    x = torch.randn(1, 3, 48, 48)
    pruner = GroupPruner(ChannelGraph(model, x), example_inputs=x, runtime=Runtime("torch", threads=1))
    plan = pruner.plan(target_latency=0.6)
    assert plan.latency is not None and plan.latency["runtime"] == "torch" and plan.latency["threads"] == 1
    assert 1 <= len(plan.latency["steps"]) <= 4
    assert plan.latency["dense_s"] > plan.latency["pruned_s"] > 0
    assert plan.latency["ratio"] == pytest.approx(0.6, abs=0.1)
    assert PruningPlan.from_json(plan.to_json()).latency == plan.latency


@pytest.mark.parametrize(
    "tail", [(nn.BatchNorm2d(24), nn.SiLU()), (nn.BatchNorm2d(24), nn.LeakyReLU(0.1)), (nn.ReLU(),), ()]
)
def test_unit_graphs_are_what_the_deployment_export_writes(tail: tuple[nn.Module, ...]) -> None:
    """The directly written unit graph has the deployment export's ops and shapes (BatchNorm folded)."""
    onnx = pytest.importorskip("onnx")
    from grouppruner._utils.onnx_units import unit_onnx
    from grouppruner.export import export_onnx

    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=not tail or not isinstance(tail[0], nn.BatchNorm2d))
    block = nn.Sequential(conv, *tail).eval()
    x = torch.randn(1, 16, 20, 20)
    data = unit_onnx(conv, tail, tuple(x.shape))
    assert data is not None
    ours, exported = onnx.load_from_string(data), onnx.load_from_string(export_onnx(block, x, check=False))
    assert [n.op_type for n in ours.graph.node] == [n.op_type for n in exported.graph.node]
    out = runtime_module.onnx_session(data, 1).run(None, {"x": x.numpy()})[0]
    assert out.shape == tuple(block(x).shape)
    assert unit_onnx(conv, (nn.GELU(),), tuple(x.shape)) is None  # no direct form: the caller exports instead


def test_plans_record_runtime_and_measured_latency_as_json() -> None:
    plan = _plan(0.5)
    plan.runtime = "onnxruntime"
    plan.latency = {"runtime": "onnxruntime", "threads": 2, "block": 8, "ratio": 0.51, "load_average": [1.0, 1.2]}
    again = PruningPlan.from_json(plan.to_json())
    assert again.runtime == "onnxruntime" and again.latency == plan.latency
    assert "latency x0.510 measured in onnxruntime (2 threads, block 8" in plan.summary()
    old = plan.to_dict()
    del old["runtime"], old["latency"]  # a plan saved before runtimes existed
    assert PruningPlan.from_dict(old).runtime is None
    with pytest.raises(ValueError, match="latency must be null or an object"):
        PruningPlan.from_dict({**plan.to_dict(), "latency": 0.5})


def test_a_latency_model_of_another_runtime_is_refused() -> None:
    model = random_detector()
    latency = LatencyModel.measure(model, X, repeats=1)  # eager PyTorch
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, runtime=Runtime("onnxruntime", block=8))
    with pytest.raises(ValueError, match="measured in 'torch', the pruner plans for 'onnxruntime'"):
        pruner.plan(target_latency=0.9, latency_model=latency)


def test_verify_steps_none_plans_on_the_prediction_alone() -> None:
    from nets import fixed_latency_model

    model = random_detector()
    latency = fixed_latency_model(model, X)
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, min_channels=2, runtime="torch")
    plan = pruner.plan(target_latency=0.85, latency_model=latency, verify_steps=None)
    assert plan.latency is None and plan.target == 0.85  # nothing measured
    with pytest.raises(ValueError, match="verify_steps must be None or an int >= 0"):
        pruner.plan(target_latency=0.85, latency_model=latency, verify_steps=-1)


@pytest.mark.parametrize(("measured", "warnings"), [((0.78, 0.74, 0.705), 0), ((0.95, 0.95, 0.95, 0.95), 1)])
def test_target_latency_warns_once_on_the_measured_outcome_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, measured: tuple[float, ...], warnings: int
) -> None:
    """The solver's misses of the intermediate asks (channel steps of 8 are coarse) log at DEBUG; a warning comes
    only when the final plan's measured fraction misses the target."""
    import logging

    from nets import fixed_latency_model

    ratios = iter(measured)

    def fake_compare(runners: list[Any], *, runtime: Runtime, rounds: int) -> LatencyComparison:
        ratio = next(ratios)
        return LatencyComparison("torch", 1, 8, [1.0, ratio], [1.0, ratio], rounds)

    monkeypatch.setattr(verify, "compare_latency", fake_compare)
    model = random_detector()
    runtime = Runtime("torch", threads=1, block=8)
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, min_channels=2, runtime=runtime)
    with caplog.at_level(logging.DEBUG, logger="grouppruner"):
        plan = pruner.plan(target_latency=0.7, latency_model=fixed_latency_model(model, X), verify_steps=3)
    assert plan.latency is not None and 2 <= len(plan.latency["steps"]) <= len(measured)
    misses = [r for r in caplog.records if "cannot be met within 1%" in r.getMessage()]
    assert misses and all(r.levelno == logging.DEBUG for r in misses)  # the coarse steps were hit, quietly
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == warnings
    assert all("the closest plan measured 0.950" in r.getMessage() for r in warned)
