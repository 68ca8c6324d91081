"""BNSparsity under DistributedDataParallel: two gloo processes on localhost.

The BatchNorms run in eval mode (running statistics): every sample is then processed independently, so the
all-reduced mean gradient of two half batches equals the gradient of the whole batch in one process, and the
comparison isolates what BNSparsity does. (In train mode each rank would normalize with its own half-batch
statistics, a difference DDP has without any regularizer; SyncBatchNorm is the usual remedy.)
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ddp_helpers import run_workers
from grouppruner.sparsity import BNSparsity, Dynamic

WORLD = 2
STEPS = 4
MODES = ("step", "penalty")


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1.0, 1.0)
    return model.eval()


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(2 * WORLD, 3, 8, 8, generator=g), torch.randint(0, 3, (2 * WORLD,), generator=g)


def _train(model: nn.Module, mode: str, shard: slice, s: float = 2e-2) -> None:
    """STEPS SGD steps; Dynamic switches to per-channel rates halfway."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsity = BNSparsity(model, schedule=Dynamic(s, total_steps=STEPS, warmup=0.5, keep=0.5, decay=0.1))
    for t in range(STEPS):
        x, y = _batch(t)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[shard]), y[shard])
        if mode == "penalty":
            (loss + sparsity.penalty()).backward()
            sparsity.schedule.step()
        else:
            loss.backward()
            sparsity.step()
        opt.step()


def _worker(rank: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        result = {}
        for mode in MODES:
            model = _model()
            _train(DDP(model), mode, slice(2 * rank, 2 * rank + 2))  # BNSparsity unwraps the DDP wrapper
            result[mode] = model.state_dict()
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_stay_identical_and_match_single_process_on_the_whole_batch(tmp_path: Path) -> None:
    run_workers(_worker, WORLD, tmp_path)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    torch.set_num_threads(1)
    for mode in MODES:
        reference = _model()
        _train(reference, mode, slice(None))
        unregularized = _model()
        _train(unregularized, mode, slice(None), s=0.0)
        for key, value in reference.state_dict().items():
            assert torch.equal(results[0][mode][key], results[1][mode][key]), (mode, key)  # replicas identical
            torch.testing.assert_close(results[0][mode][key], value, rtol=1e-5, atol=1e-6, msg=f"{mode} {key}")
        for key in ("1.weight", "4.weight"):  # the regularizer did act on the gammas
            gap = (results[0][mode][key] - unregularized.state_dict()[key]).abs().max().item()
            assert gap > 1e-3, (mode, key, gap)
