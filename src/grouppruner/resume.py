"""Exact resume: the whole state of a training loop at an epoch boundary, in one pickle-free file.

A run killed at any point (``kill -9`` included) and restarted from the last :func:`save_training_state` file
continues exactly as if it had never stopped, on the same device: the model, the optimizer, the LR scheduler,
any other ``state_dict()`` object (e.g. :class:`~grouppruner.sparsity.BNSparsity`), the random number generators
of torch, NumPy and Python, and the data loader's ``torch.Generator`` (shuffling and augmentation) are saved and
restored together::

    state = TrainingState(model, optimizer=opt, scheduler=sched, generator=gen)
    start = state.load(path) if path.exists() else 0
    for epoch in range(start, epochs):
        train_one_epoch(...)
        sched.step()
        state.save(path, epoch + 1)

The file is written atomically and holds only tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ._utils.errors import CheckpointError
from ._utils.io import StateMismatch, atomic_write, load_tensor_file

__all__ = ["Stateful", "TrainingState", "load_training_state", "save_training_state"]

_FORMAT = "grouppruner.training_state"
_VERSION = 1


class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` (optimizers, LR schedulers, BNSparsity, ...)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


@dataclass
class TrainingState:
    """The objects whose state makes a training loop resumable: what :meth:`save` writes and :meth:`load` restores,
    together with the global RNGs of torch (CUDA included), NumPy and Python.

    Attributes:
        model: the model being trained (its ``state_dict``; the architecture must be rebuilt to load it).
        optimizer: its optimizer, or ``None``.
        scheduler: its learning-rate scheduler, or ``None``.
        generator: the ``torch.Generator`` of the data loader (and of augmentation drawing from it), or ``None``.
        extra: more objects with ``state_dict()``, by name (e.g. ``{"sparsity": bn_sparsity}``).
        fingerprint: a string naming what the state was made with (e.g. a digest of the options); :meth:`load`
            refuses a file saved with another one.
    """

    model: nn.Module
    optimizer: Stateful | None = None
    scheduler: Stateful | None = None
    generator: torch.Generator | None = None
    extra: Mapping[str, Stateful] = field(default_factory=dict)
    fingerprint: str | None = None

    def save(self, path: str | os.PathLike[str], epoch: int) -> None:
        """Write the state after ``epoch`` finished epochs to ``path`` (atomically; its directory must exist)."""
        kind, keys, pos, has_gauss, cached_gauss = np.random.get_state(legacy=True)
        assert isinstance(keys, np.ndarray)  # the legacy form is (name, key array, position, has_gauss, gauss)
        state: dict[str, Any] = {
            "format": _FORMAT,
            "version": _VERSION,
            "epoch": int(epoch),
            "fingerprint": self.fingerprint,
            "model": self.model.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached_gauss),
                "python": random.getstate(),
            },
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        for name, obj in (("optimizer", self.optimizer), ("scheduler", self.scheduler)):
            if obj is not None:
                state[name] = obj.state_dict()
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        state["extra"] = {name: obj.state_dict() for name, obj in self.extra.items()}
        with atomic_write(path) as file:
            torch.save(state, file)

    def load(self, path: str | os.PathLike[str]) -> int:
        """Restore what :meth:`save` wrote into the objects and the global RNGs.

        Returns:
            The epoch to resume at (the number of finished epochs).

        Raises:
            CheckpointError: the file cannot be read, is not a training state, does not match the objects (the
                message names the file and what differs), or was saved with another ``fingerprint``; the objects
                are then left as they were.
        """
        file = Path(path)
        state = load_tensor_file(file, what="a training state")
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise CheckpointError(f"{file}: not a grouppruner training state")
        if state.get("version") != _VERSION:
            raise CheckpointError(f"{file}: training state version {state.get('version')!r}, expected {_VERSION}")
        if self.fingerprint is not None and state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{file}: made with other options (fingerprint {state.get('fingerprint')!r:.40}, "
                f"this run {self.fingerprint!r})"
            )
        wanted = {"optimizer": self.optimizer, "scheduler": self.scheduler, **self.extra}
        missing = [name for name, obj in wanted.items() if obj is not None and name not in {**state, **state["extra"]}]
        if missing or (self.generator is not None and "generator" not in state):
            raise CheckpointError(f"{file}: holds no state for {missing or ['generator']}")
        # Check the model first: a mismatch must leave every object untouched.
        saved = state["model"]
        mismatch = StateMismatch.between(self.model, saved)
        if not mismatch.fits():
            raise CheckpointError(
                f"{file}: the model state does not fit {type(self.model).__name__}: {mismatch.describe()}"
            )
        self.model.load_state_dict(saved)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for name, obj in self.extra.items():
            obj.load_state_dict(state["extra"][name])
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        kind, keys, *rest = rng["numpy"]
        np.random.set_state((kind, keys.numpy(), *rest))
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return int(state["epoch"])


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
    """``TrainingState(model, ...).save(path, epoch)``: the state of a loop after ``epoch`` finished epochs.

    The keyword arguments are the fields of :class:`TrainingState`.
    """
    TrainingState(model, optimizer, scheduler, generator, extra or {}, fingerprint).save(path, epoch)


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
    """``TrainingState(model, ...).load(path)``: restore a saved loop; returns the epoch to resume at.

    The keyword arguments are the fields of :class:`TrainingState`; see :meth:`TrainingState.load` for the errors.
    """
    return TrainingState(model, optimizer, scheduler, generator, extra or {}, fingerprint).load(path)
