"""Exact resume: the whole state of a training loop at an epoch boundary, in one pickle-free file.

A run killed at any point (``kill -9`` included) and restarted from the last :func:`save_training_state` file
continues exactly as if it had never stopped, on the same device: the model, the optimizer, the LR scheduler,
any other ``state_dict()`` object (e.g. :class:`~grouppruner.sparsity.BNSparsity`), the random number generators
of torch, NumPy and Python, and the data loader's ``torch.Generator`` (shuffling and augmentation) are saved and
restored together::

    start = 0
    if path.exists():
        start = load_training_state(path, model=model, optimizer=opt, scheduler=sched, generator=gen)
    for epoch in range(start, epochs):
        train_one_epoch(...)
        sched.step()
        save_training_state(path, epoch + 1, model=model, optimizer=opt, scheduler=sched, generator=gen)

The file is written atomically and holds only tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ._utils.errors import CheckpointError
from .checkpoint import StateMismatch, atomic_write, load_tensor_file

__all__ = ["Stateful", "load_training_state", "save_training_state"]

_FORMAT = "grouppruner.training_state"
_VERSION = 1


class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` (optimizers, LR schedulers, BNSparsity, ...)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


def save_training_state(
    path: str | os.PathLike[str],
    epoch: int,
    *,
    model: nn.Module,
    optimizer: Stateful | None = None,
    scheduler: Stateful | None = None,
    generator: torch.Generator | None = None,
    extra: Mapping[str, Stateful] | None = None,
    fingerprint: str | None = None,
) -> None:
    """Write the state of a training loop after ``epoch`` finished epochs to ``path`` (atomically).

    Args:
        path: destination file; its directory must exist.
        epoch: finished epochs (the loop resumes at this epoch index).
        model: the model being trained (its ``state_dict``; the architecture must be rebuilt to load it).
        optimizer: its optimizer.
        scheduler: its learning-rate scheduler.
        generator: the ``torch.Generator`` of the data loader (and of augmentation drawing from it).
        extra: more objects with ``state_dict()``, by name (e.g. ``{"sparsity": bn_sparsity}``).
        fingerprint: a string naming what the state was made with (e.g. a digest of the options);
            :func:`load_training_state` given another one refuses the file.
    """
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy form is (name, key array, position, has_gauss, gauss)
    state: dict[str, Any] = {
        "format": _FORMAT,
        "version": _VERSION,
        "epoch": int(epoch),
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached_gauss),
            "python": random.getstate(),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None:
            state[name] = obj.state_dict()
    if generator is not None:
        state["generator"] = generator.get_state()
    state["extra"] = {name: obj.state_dict() for name, obj in (extra or {}).items()}
    with atomic_write(path) as file:
        torch.save(state, file)


def load_training_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: Stateful | None = None,
    scheduler: Stateful | None = None,
    generator: torch.Generator | None = None,
    extra: Mapping[str, Stateful] | None = None,
    fingerprint: str | None = None,
) -> int:
    """Restore what :func:`save_training_state` wrote into the given objects and the global RNGs.

    Args:
        path: a file written by :func:`save_training_state`.
        model: the model, freshly built with the saved architecture.
        optimizer: the optimizer to restore, or ``None``.
        scheduler: the LR scheduler to restore, or ``None``.
        generator: the data loader's generator to restore, or ``None``.
        extra: more objects to restore, by the names they were saved under.
        fingerprint: when given, the file must have been saved with the same ``fingerprint`` (a state made with
            other options is refused, not resumed).

    Returns:
        The epoch to resume at (the number of finished epochs).

    Raises:
        CheckpointError: the file cannot be read, is not a training state, or does not match the objects
            (the message names the file and what differs), or was saved with another ``fingerprint``; the objects
            are then left as they were.
    """
    file = Path(path)
    state = load_tensor_file(file, what="a training state")
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise CheckpointError(f"{file}: not a grouppruner training state")
    if state.get("version") != _VERSION:
        raise CheckpointError(f"{file}: training state version {state.get('version')!r}, expected {_VERSION}")
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{file}: made with other options (fingerprint {state.get('fingerprint')!r:.40}, this run {fingerprint!r})"
        )
    wanted = {"optimizer": optimizer, "scheduler": scheduler, **(extra or {})}
    missing = [name for name, obj in wanted.items() if obj is not None and name not in {**state, **state["extra"]}]
    if missing or (generator is not None and "generator" not in state):
        raise CheckpointError(f"{file}: holds no state for {missing or ['generator']}")
    # Check the model first: a mismatch must leave every object untouched.
    saved = state["model"]
    mismatch = StateMismatch.between(model, saved)
    if not mismatch.fits():
        raise CheckpointError(f"{file}: the model state does not fit {type(model).__name__}: {mismatch.describe()}")
    model.load_state_dict(saved)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    for name, obj in (extra or {}).items():
        obj.load_state_dict(state["extra"][name])
    if generator is not None:
        generator.set_state(state["generator"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["epoch"])
