"""AttentionDistiller under DistributedDataParallel: two gloo processes on localhost."""

from __future__ import annotations

import copy
import os
import sys
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ddp_helpers import run_workers
from grouppruner.distill import AttentionDistiller

LAYERS = ["stem", "stage1", "stage2"]
WORLD = 2
STEPS = 2
LR = 0.1


def _net(width: int) -> nn.Sequential:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1))

    return nn.Sequential(
        OrderedDict(
            stem=block(3, width),
            stage1=block(width, 2 * width),
            stage2=block(2 * width, 4 * width),
            head=nn.Conv2d(4 * width, 6, 1),
        )
    )


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return _net(8), _net(4)


def _data() -> torch.Tensor:
    return torch.randn(2 * WORLD, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _step_loss(out: torch.Tensor, kd: torch.Tensor) -> torch.Tensor:
    # The task term touches the head so every student parameter gets a gradient.
    return kd + 1e-3 * out.square().mean()


def _worker(rank: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # stay on loopback whatever the hostname resolves to
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        shard = _data()[2 * rank : 2 * rank + 2]
        result: dict[str, object] = {}
        for mode in ("wrap_student", "wrap_distiller"):
            teacher, student = _models()
            if mode == "wrap_student":
                distiller = AttentionDistiller(teacher, DDP(student), LAYERS)
                model: nn.Module = distiller
            else:
                distiller = AttentionDistiller(teacher, student, LAYERS)
                model = DDP(distiller)
            opt = torch.optim.SGD(student.parameters(), lr=LR)
            losses, fired = [], []
            for _ in range(STEPS):
                out = model(shard)
                fired.append(list(distiller.student_recorder.maps))
                kd, _ = distiller.loss()
                losses.append(kd.item())
                _step_loss(out, kd).backward()
                opt.step()
                opt.zero_grad()
            result[mode] = {"losses": losses, "fired": fired, "state": copy.deepcopy(student.state_dict())}
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _reference() -> tuple[list[list[float]], dict[str, torch.Tensor]]:
    """Single process: per-shard losses, gradients averaged over shards (what DDP all-reduces)."""
    teacher, student = _models()
    data = _data()
    distiller = AttentionDistiller(teacher, student, LAYERS)
    opt = torch.optim.SGD(student.parameters(), lr=LR)
    losses: list[list[float]] = [[] for _ in range(WORLD)]
    for _ in range(STEPS):
        grads = [torch.zeros_like(p) for p in student.parameters()]
        for rank in range(WORLD):
            # Train-mode BN normalises with batch statistics: the running buffers do not change the outputs.
            out = distiller(data[2 * rank : 2 * rank + 2])
            kd, _ = distiller.loss()
            losses[rank].append(kd.item())
            _step_loss(out, kd).backward()
            for g, p in zip(grads, student.parameters(), strict=True):
                g += p.grad / WORLD
            opt.zero_grad()
        for g, p in zip(grads, student.parameters(), strict=True):
            p.grad = g
        opt.step()
        opt.zero_grad()
    return losses, student.state_dict()


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_single_process(tmp_path: Path) -> None:
    run_workers(_worker, WORLD, tmp_path)
    ref_losses, ref_state = _reference()
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for mode in ("wrap_student", "wrap_distiller"):
            got = result[mode]
            assert got["fired"] == [LAYERS] * STEPS, (mode, rank)
            torch.testing.assert_close(
                torch.tensor(got["losses"]), torch.tensor(ref_losses[rank]), rtol=1e-5, atol=1e-8
            )
            for key, value in ref_state.items():
                if "running" in key or "num_batches" in key:
                    continue  # per-shard BN statistics: DDP broadcasts rank 0's at the next forward
                torch.testing.assert_close(got["state"][key], value, rtol=1e-5, atol=1e-6, msg=f"{mode} {key}")
