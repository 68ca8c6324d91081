"""Ultralytics checkpoints of pruned models: ``YOLO(path)`` loads the pruned architecture.

An Ultralytics ``.pt`` file pickles the model object, so a pruned module comes back with its pruned layers by
itself; what :func:`save` adds is what makes such a file safe to use: the applied
:class:`~grouppruner.pruning.PruningPlan` list and the architecture fingerprints under the key
``"grouppruner"`` (JSON, checked by :func:`load`), and the atomic write. The rest of the file is the layout
Ultralytics' own ``save_model`` writes (the module in fp16, ``train_args``), so ``.val()``, ``.predict()`` and
``.export()`` take it unchanged.

What the file cannot do alone is survive ``YOLO(path).train()``: Ultralytics' stock trainer rebuilds the model
from its yaml and copies the weights that still fit. A pruned module's yaml makes that rebuild stop with a
sentence naming the calls that work (:func:`~.model.refuse_rebuild`): :func:`load` returns a ``YOLO`` whose
``.train()`` keeps the pruned module, and the trainers of :mod:`.trainer` do the same for
``YOLO(path).train(trainer=...)``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._utils.errors import CheckpointError
from ..._utils.io import atomic_write
from ...pruning import PruningPlan, model_fingerprint
from ._require import require_ultralytics
from .model import PLANS_ATTRIBUTE, detection_model, is_pruned, plan_records, refuse_rebuild

__all__ = ["is_pruned", "keep_pruned_model", "load", "meta_of", "save"]

logger = logging.getLogger(__name__)

_KEY = "grouppruner"
_FORMAT = "grouppruner.ultralytics"
_VERSION = 1


def save(model: Any, path: str | os.PathLike[str], *, train_args: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as an Ultralytics checkpoint with its pruning plans, atomically.

    Args:
        model: a ``YOLO`` object or its module (pruned or not).
        path: the ``.pt`` file; its folder is created.
        train_args: the ``train_args`` to record (default: the module's ``args``, as Ultralytics keeps them).

    Returns:
        ``path``.
    """
    ultralytics = require_ultralytics()
    path = Path(path)
    if path.suffix != ".pt":
        raise CheckpointError(f"{path}: an Ultralytics checkpoint must end in .pt")
    inner = detection_model(model)
    plans = plan_records(inner)
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "pruned_fingerprint": model_fingerprint(inner),
        "original_fingerprint": plans[0]["fingerprint"] if plans else model_fingerprint(inner),
        "plans": plans,
    }
    args = train_args if train_args is not None else getattr(inner, "args", {})
    snapshot: Any = copy.deepcopy(inner).half()
    if hasattr(snapshot, "criterion"):
        snapshot.criterion = None  # training-only state (and a distillation teacher) stays out of the file
    for parameter in snapshot.parameters():
        parameter.requires_grad_(False)
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": snapshot,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": dict(args) if isinstance(args, dict) else vars(args),
        "date": datetime.now(timezone.utc).isoformat(),
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 (Ultralytics); pruned with grouppruner",
        _KEY: json.dumps(meta, allow_nan=False),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        torch.save(ckpt, file)
    logger.info("saved %s (%d pruning plans) to %s", type(inner).__name__, len(plans), path)
    return path


def meta_of(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``"grouppruner"`` metadata of a loaded checkpoint dict, ``None`` for a plain Ultralytics file.

    Raises:
        CheckpointError: damaged metadata.
    """
    raw = ckpt.get(_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
        for plan in meta["plans"]:
            PruningPlan.from_dict(plan)  # validates the record
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{path}: damaged grouppruner metadata ({error})") from error
    result: dict[str, Any] = meta
    return result


def _check_restored(model: nn.Module, meta: dict[str, Any], path: str | os.PathLike[str]) -> None:
    found = model_fingerprint(model)
    if found != meta["pruned_fingerprint"]:
        raise CheckpointError(
            f"{path}: the pruned architecture cannot be restored: the module in the file has fingerprint {found}, "
            f"its pruning record says {meta['pruned_fingerprint']} (file edited, or saved by another Ultralytics "
            "version whose modules differ)"
        )
    if not is_pruned(model):
        setattr(model, PLANS_ATTRIBUTE, json.dumps(meta["plans"]))
    if meta["plans"]:
        refuse_rebuild(model)  # files written before the refusal existed


def keep_pruned_model(yolo: Any) -> None:
    """Make ``yolo.train()`` fine-tune its (pruned) module instead of a model rebuilt from the yaml.

    Ultralytics' ``Model.train`` asks the new trainer's ``get_model`` for a model built from ``model.yaml`` with
    the weights that fit copied in. This registers a callback that runs when the trainer is created and gives
    that trainer (the instance, not its class) a ``get_model`` that returns the pruned module instead
    (:func:`~grouppruner.integrations.ultralytics.trainer.pruned_copy`). For multi-GPU training pass
    ``trainer=`` one of :mod:`.trainer` instead: the DDP workers rebuild the trainer from its class.
    """
    from .trainer import pruned_copy

    def keep_pruned(trainer: Any) -> None:
        stock = trainer.get_model

        def get_model(cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
            kept = pruned_copy(trainer, weights)
            built: nn.Module = kept if kept is not None else stock(cfg=cfg, weights=weights, verbose=verbose)
            return built

        trainer.get_model = get_model

    yolo.add_callback("on_pretrain_routine_start", keep_pruned)


def load(path: str | os.PathLike[str]) -> Any:
    """``YOLO(path)``, checked against its pruning record, whose ``.train()`` keeps the pruned architecture.

    Args:
        path: an Ultralytics ``.pt`` file (written by :func:`save`, by a trainer of :mod:`.trainer`, or a plain
            Ultralytics checkpoint, which loads unchanged); Ultralytics' ``weights_only`` loading
            (``ULTRALYTICS_SAFE_LOAD=1``) loads split-free models too (:mod:`.deploy`).

    Returns:
        An ``ultralytics.YOLO``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file cannot be read as an Ultralytics checkpoint, or the pruned architecture cannot
            be restored (the module in it does not match its pruning record).
    """
    require_ultralytics()
    from ultralytics import YOLO

    from .deploy import SplitFreeC2f

    # Ultralytics' weights_only loading (ULTRALYTICS_SAFE_LOAD=1) unpickles only classes registered as safe; it
    # registers its own, and a split-free model has one of ours.
    torch.serialization.add_safe_globals([SplitFreeC2f])
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        yolo = YOLO(str(path))
    except (AttributeError, ModuleNotFoundError, ImportError) as error:
        raise CheckpointError(
            f"{path}: the pruned architecture cannot be restored: {type(error).__name__}: {error} (saved by "
            "another Ultralytics version?)"
        ) from error
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a loadable Ultralytics checkpoint: {first}") from error
    meta = meta_of(yolo.ckpt or {}, path)
    if meta is not None:
        _check_restored(yolo.model, meta, path)
        keep_pruned_model(yolo)
    return yolo
