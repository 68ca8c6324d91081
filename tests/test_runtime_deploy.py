"""What ships is what is measured: onnxruntime's spinning threads and the deployment rewrite of a Runtime."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from grouppruner import latency as latency_module
from grouppruner import runtime as runtime_module
from grouppruner.graph import ChannelGraph
from grouppruner.latency import LatencyCacheError, LatencyModel
from grouppruner.pruning import GroupPruner
from grouppruner.runtime import DEFAULT_SPIN_WAIT, Runtime, session_options
from nets import random_detector

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))

pytestmark = pytest.mark.usefixtures("one_thread")

SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


class _Doubled(nn.Module):
    """A stand-in deployment rewrite whose output tells that it ran: the wrapped model's outputs times 2."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [2 * y for y in self.inner(x)]


def test_spin_wait_sets_both_pools_of_every_session() -> None:
    pytest.importorskip("onnxruntime")
    assert DEFAULT_SPIN_WAIT is False
    default = session_options(2)
    assert [default.get_session_config_entry(k) for k in SPIN_KEYS] == ["0", "0"]
    spinning = Runtime("onnxruntime", threads=2, spin_wait=True).session_options()
    assert [spinning.get_session_config_entry(k) for k in SPIN_KEYS] == ["1", "1"]
    assert spinning.intra_op_num_threads == 2
    with pytest.raises(TypeError, match="spin_wait must be a bool"):
        Runtime("onnxruntime", spin_wait="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="deploy must be None or callable"):
        Runtime("onnxruntime", deploy=3)  # type: ignore[arg-type]


def test_runner_and_latency_units_open_their_sessions_with_the_runtimes_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    opened: list[bool] = []
    real = runtime_module.onnx_session

    def recording(data: Any, threads: int, *, spin_wait: bool = DEFAULT_SPIN_WAIT) -> Any:
        opened.append(spin_wait)
        return real(data, threads, spin_wait=spin_wait)

    monkeypatch.setattr(runtime_module, "onnx_session", recording)
    monkeypatch.setattr(latency_module, "onnx_session", recording)
    spin_wait = not DEFAULT_SPIN_WAIT  # the non-default value: it must reach every session
    runtime = Runtime("onnxruntime", threads=1, block=8, spin_wait=spin_wait)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    runtime.runner(model, X)()
    latency = LatencyModel.measure(model, X, repeats=1, runtime=runtime)
    assert len(opened) > 2 and set(opened) == {spin_wait}  # the runner, every unit and the whole model
    assert latency.key.spin_wait is spin_wait


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_runner_times_the_deployed_model_and_leaves_the_model_alone(name: str) -> None:
    if name == "onnxruntime":
        pytest.importorskip("onnxruntime")
    model = random_detector().eval()
    with torch.no_grad():
        reference = model(X)
    out = Runtime(name, threads=1, deploy=_Doubled).runner(model, X)()
    for got, ref in zip(out, reference, strict=True):
        np.testing.assert_allclose(np.asarray(got), 2 * ref.numpy(), atol=1e-4)
    assert not isinstance(model, _Doubled) and all(not isinstance(m, _Doubled) for m in model.modules())


def test_latency_model_times_the_deployed_whole_model_and_keys_its_cache_on_it(tmp_path: Any) -> None:
    calls: list[int] = []

    def slower(model: nn.Module) -> nn.Module:
        """Three forwards per call: a deployed graph that costs more than the model as it is."""
        calls.append(1)

        class Thrice(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = model

            def forward(self, x: torch.Tensor) -> Any:
                self.inner(x)
                self.inner(x)
                return self.inner(x)

        return Thrice()

    model = random_detector()
    plain = LatencyModel.measure(model, X, repeats=3, runtime=Runtime("torch", threads=1))
    cache = tmp_path / "latency.json"
    runtime = Runtime("torch", threads=1, deploy=slower)
    deployed = LatencyModel.measure(model, X, repeats=3, runtime=runtime, cache=cache)
    assert calls and deployed.key.deploy == "slower" and plain.key.deploy is None
    assert deployed.dense_s > 2 * plain.dense_s  # the whole model was timed through the rewrite
    with pytest.raises(LatencyCacheError, match="deploy: 'slower' vs None"):
        LatencyModel.load(cache, expect=plain.key)
    old = json.loads(cache.read_text())
    old["key"].pop("deploy")
    old["key"].pop("spin_wait")
    old["key"]["runtime"] = "onnxruntime"  # a cache from before spin_wait: onnxruntime spun then
    restored = LatencyModel.from_state_dict(old)
    assert restored.key.spin_wait is True and restored.key.deploy is None


def test_target_latency_measures_dense_and_candidates_through_the_rewrite() -> None:
    deployed: list[int] = []

    def counting(model: nn.Module) -> nn.Module:
        deployed.append(sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)))
        return model

    model = random_detector()
    dense_width = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, runtime=Runtime("torch", threads=1, deploy=counting))
    plan = pruner.plan(target_latency=0.9, verify_steps=0)
    assert plan.latency is not None and plan.latency["deploy"] == "counting" and plan.latency["spin_wait"] is False
    assert deployed.count(dense_width) >= 2  # the latency model's whole-model timing and the dense runner
    assert any(width < dense_width for width in deployed)  # the candidate, pruned, through the rewrite
