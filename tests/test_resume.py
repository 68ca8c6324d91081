"""Exact resume: a loop restarted from save_training_state continues bit-identically."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grouppruner as gp
from grouppruner.resume import load_training_state, save_training_state


def _parts(
    seed: int = 0,
) -> tuple[
    nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, gp.BNSparsity, DataLoader, torch.Generator
]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    sparsity = gp.BNSparsity(model, schedule=gp.sparsity.Dynamic(1e-2, total_steps=12, warmup=0.3))
    fixed = torch.Generator().manual_seed(123)  # the data set is the same in every process, like files on disk
    data = TensorDataset(torch.randn(24, 3, 8, 8, generator=fixed), torch.randn(24, 2, 8, 8, generator=fixed))
    generator = torch.Generator().manual_seed(seed)
    return model, opt, sched, sparsity, DataLoader(data, batch_size=6, shuffle=True, generator=generator), generator


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, sparsity: gp.BNSparsity, loader: DataLoader) -> None:
    for x, y in loader:
        # Every RNG a loop may draw from: torch (dropout-like noise), NumPy and Python (augmentation).
        noise = torch.rand(1).item() + float(np.random.rand()) + random.random()
        loss = ((model(x * (1 + 0.01 * noise)) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        sparsity.step()
        opt.step()


def _train(epochs: range, parts: tuple, path: Path | None) -> None:
    model, opt, sched, sparsity, loader, generator = parts
    for epoch in epochs:
        _epoch(model, opt, sparsity, loader)
        sched.step()
        if path is not None:
            save_training_state(
                path,
                epoch + 1,
                model=model,
                optimizer=opt,
                scheduler=sched,
                generator=generator,
                extra={"sparsity": sparsity},
            )


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    straight = _parts()
    _train(range(3), straight, None)

    random.seed(1)
    np.random.seed(1)
    first = _parts()
    _train(range(1), first, tmp_path / "state.pt")
    # The process dies here; a new one builds everything afresh (other seeds) and resumes.
    random.seed(99)
    np.random.seed(99)
    resumed = _parts(seed=7)
    model, opt, sched, sparsity, _, generator = resumed
    start = load_training_state(
        tmp_path / "state.pt",
        model=model,
        optimizer=opt,
        scheduler=sched,
        generator=generator,
        extra={"sparsity": sparsity},
    )
    assert start == 1
    _train(range(start, 3), resumed, None)
    for a, b in zip(straight[0].state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert sparsity.schedule.last_step == straight[3].schedule.last_step == 12
    assert opt.param_groups[0]["lr"] == straight[1].param_groups[0]["lr"]


def test_bad_training_states_name_the_file_and_leave_the_model(tmp_path: Path) -> None:
    model, opt, sched, _, _, _ = _parts()
    path = tmp_path / "state.pt"
    save_training_state(path, 1, model=model, optimizer=opt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(gp.CheckpointError, match=r"state\.pt: the model state does not fit Sequential"):
        load_training_state(path, model=other, optimizer=opt)
    with pytest.raises(gp.CheckpointError, match=r"state\.pt: holds no state for \['scheduler'\]"):
        load_training_state(path, model=model, scheduler=sched)
    gp.save_pruned(model, tmp_path / "pruned.pt")
    with pytest.raises(gp.CheckpointError, match=r"pruned\.pt: not a grouppruner training state"):
        load_training_state(tmp_path / "pruned.pt", model=model)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(gp.CheckpointError, match=r"junk\.pt: cannot be read as a training state"):
        load_training_state(tmp_path / "junk.pt", model=model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_state_saved_with_another_fingerprint_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    model, opt, sched, _, _, _ = _parts()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()  # momentum buffers and a scheduler step: state a load would visibly restore
    sched.step()
    path = tmp_path / "sparse.epoch.pt"
    save_training_state(path, 3, model=model, optimizer=opt, scheduler=sched, fingerprint="options-a")
    fresh, fresh_opt, fresh_sched, _, _, _ = _parts(seed=1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(gp.CheckpointError, match=r"sparse\.epoch\.pt: made with other options"):
        load_training_state(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, fingerprint="options-b")
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert fresh_opt.state_dict()["state"] == {} and fresh_sched.last_epoch == 0  # untouched too
    kwargs = {"model": fresh, "optimizer": fresh_opt, "scheduler": fresh_sched}
    assert load_training_state(path, **kwargs, fingerprint="options-a") == 3
    assert load_training_state(path, **kwargs) == 3  # no fingerprint asked: any state loads
