"""fuse_for_inference / export_onnx: BatchNorm folded by torch's fusion, outputs unchanged, onnxruntime parity."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from grouppruner.export import ExportError, export_onnx, fuse_for_inference
from grouppruner.graph import ChannelGraph
from grouppruner.pruning import GroupPruner
from nets import random_detector
from zoo import ZOO

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))

pytestmark = pytest.mark.usefixtures("one_thread")


def _pruned_detector() -> nn.Module:
    model = random_detector()
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, min_channels=2)
    pruner.apply(pruner.plan(target_params=0.5))
    return model


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return [out] if isinstance(out, torch.Tensor) else list(out)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_fused_equals_unfused(name: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    with torch.no_grad():  # non-trivial BN statistics, or the fold would be an identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    fused = fuse_for_inference(model, X)
    assert fused is not model and not fused.training
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert remaining < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for got, want in zip(_outputs(fused, X), _outputs(model, X), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_pruned_detector_fuses_every_bn_and_stays_close() -> None:
    model = _pruned_detector()
    fused = fuse_for_inference(model, X)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(1, 3, 32, 32)  # another input than the one the check used
    for got, want in zip(_outputs(fused, x), _outputs(model, x), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the original is untouched unless inplace=True
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fuse_for_inference(model, X, inplace=True) is model


def test_fused_model_traces() -> None:
    fused = fuse_for_inference(_pruned_detector(), X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; tracing must still work
        traced = torch.jit.trace(fused, X)
    for got, want in zip(_outputs(traced, X), _outputs(fused, X), strict=True):
        torch.testing.assert_close(got, want)


class _SharedConvOutput(nn.Module):
    """A conv output used both by its BN and directly: folding the BN would change the second use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_unsafe_fold_is_refused() -> None:
    model = _SharedConvOutput().eval()
    with torch.no_grad():
        model.bn.running_var.fill_(4.0)
    with pytest.raises(ExportError, match="differs from the original"):
        fuse_for_inference(model, X)


def test_onnx_parity_of_the_fused_pruned_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    model = _pruned_detector()
    reference = copy.deepcopy(model)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo
        data = export_onnx(model, X, path, input_names=["images"])
    assert path.read_bytes() == data
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert not any(node.op_type == "BatchNormalization" for node in _onnx_nodes(data))
    outputs = session.run(None, {"images": X.numpy()})
    for got, want in zip(outputs, _outputs(reference, X), strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def _onnx_nodes(data: bytes) -> list:  # type: ignore[type-arg]
    onnx = pytest.importorskip("onnx")
    return list(onnx.load_from_string(data).graph.node)


@pytest.mark.parametrize("fuse", [True, False])
def test_export_and_fuse_give_the_caller_its_train_mode_back(fuse: bool) -> None:
    pytest.importorskip("onnx")
    model = random_detector().train()
    model.head.eval()  # a submodule the user froze in eval mode stays so
    modes = {name: m.training for name, m in model.named_modules()}
    fused = fuse_for_inference(model, X)
    assert not fused.training and {name: m.training for name, m in model.named_modules()} == modes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, X[:1], fuse=fuse, check=False)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.training and not model.head.training


def test_unchecked_exports_log_their_folding_at_debug_only(caplog) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    caplog.set_level("INFO", logger="grouppruner")
    export_onnx(model, x, check=False)  # what the latency model and the runtime timer do, hundreds of times
    assert "folded" not in caplog.text
    fuse_for_inference(model, x)
    assert "fuse_for_inference: folded 1 BatchNorms" in caplog.text
