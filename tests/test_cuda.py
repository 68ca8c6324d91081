"""The GPU paths: BNSparsity under a real CUDA GradScaler (fp16) and bf16 autocast, the reference recipe on CUDA,
and the Ultralytics flow on ``device=0`` with AMP. Skipped where CUDA is not available.

Run them on a GPU machine, in the environment of the real libraries (a CUDA torch build)::

    YOLO_OFFLINE=1 python -m pytest -m cuda tests/test_cuda.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from grouppruner.sparsity import BNSparsity

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).cuda()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bn_sparsity_adds_the_l1_term_to_unscaled_gradients_on_cuda(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16, growth_interval=10**9, enabled=dtype == torch.float16)
    sparsity = BNSparsity(model, schedule=1e-2, scaler=scaler)
    x, y = torch.rand(8, 3, 16, 16, device="cuda"), torch.randint(0, 4, (8,), device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    gammas = [model[1].weight, model[4].weight]
    task = [g.grad.clone() for g in gammas]
    sparsity.step()
    for gamma, grad in zip(gammas, task, strict=True):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        torch.testing.assert_close(gamma.grad, grad + 1e-2 * torch.sign(gamma.detach()), rtol=1e-5, atol=1e-7)
    before = [g.detach().clone() for g in gammas]
    scaler.step(opt)
    scaler.update()
    for gamma, old, grad in zip(gammas, before, task, strict=True):
        torch.testing.assert_close(gamma.detach(), old - 0.1 * (grad + 1e-2 * torch.sign(old)), rtol=1e-5, atol=1e-6)


def test_reference_recipe_on_cuda_with_fp16(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from grouppruner.recipe import run_recipe
    from runs import tiny_recipe_config

    config = tiny_recipe_config(tmp_path / "run", device="cuda", amp="fp16")
    results = run_recipe(config)
    dense, _, pruned, recovered = results
    assert abs(pruned.params / dense.params - 0.6) <= 0.01
    assert recovered.params == pruned.params
    assert all(0.0 <= r.map50 <= 1.0 for r in results)


@pytest.mark.libraries
def test_ultralytics_compress_on_gpu_with_amp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ultralytics")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    from grouppruner.integrations import ultralytics as gpu

    monkeypatch.chdir(tmp_path)
    gpu.make_synthetic_yolo("data", 24, image_size=64)
    train = {"imgsz": 64, "batch": 8, "workers": 0, "plots": False, "device": 0, "amp": True, "verbose": False}
    YOLO("yolov8n.yaml").train(data="data/data.yaml", epochs=1, project=str(tmp_path / "d"), name="t", **train)
    result = gpu.compress(
        str(tmp_path / "d" / "t" / "weights" / "last.pt"),
        data="data/data.yaml",
        out="runs/yolo",
        target_macs=0.5,
        sparse_epochs=1,
        recover_epochs=2,
        **train,
    )
    assert [s.stage for s in result.stages] == list(gpu.STAGES)
    assert result.stages[2].macs / result.stages[0].macs == pytest.approx(0.5, abs=0.01)
    assert next(gpu.load(result.checkpoint).model.parameters()).dtype == torch.float32
    assert gpu.is_pruned(result.model) and all(0.0 <= s.map50_95 <= 1.0 for s in result.stages)
