"""Ultralytics trainer subclasses: gradient hooks on unscaled gradients, and pruned models kept as they are.

Two changes to the stock trainers, nothing else (data, augmentation, loss, EMA, validation, checkpoints are
Ultralytics' own):

- :meth:`GroupPrunerTrainerMixin.optimizer_step` runs the registered *gradient hooks* (the sparse stage's
  :meth:`~grouppruner.sparsity.BNSparsity.step`) after ``scaler.unscale_`` and before gradient clipping and
  ``scaler.step``: the hooks see true gradients whatever the loss scale, and clipping sees the L1 term.
- :meth:`GroupPrunerTrainerMixin.get_model` hands a pruned model over as it is, where the stock trainers build a
  fresh model from its yaml and copy the weights that fit (which silently undoes the pruning). This also covers
  ``resume=`` and the DDP workers, which load the checkpoint through ``get_model``.

The classes live in an importable module because Ultralytics' DDP launcher pickles the trainer class by its
module path and rebuilds it in every worker; the stage objects travel as callbacks (:mod:`.callbacks`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer as _DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer as _OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer as _PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer as _SegmentationTrainer

from ..._utils.errors import UsageError
from .model import is_pruned

__all__ = [
    "CLIP_NORM",
    "DetectionTrainer",
    "GradientHook",
    "GroupPrunerTrainerMixin",
    "OBBTrainer",
    "PoseTrainer",
    "SegmentationTrainer",
    "pruned_copy",
    "trainer_class",
]

logger = logging.getLogger(__name__)

#: The gradient-norm limit of Ultralytics' ``optimizer_step`` (kept equal, so that only the hook order differs).
CLIP_NORM = 10.0

GradientHook = Callable[[Any], None]


class GroupPrunerTrainerMixin:
    """What the grouppruner trainers add to an Ultralytics trainer (listed before it in the bases).

    Attributes:
        gradient_hooks: callables ``hook(trainer)`` run once per optimizer step on unscaled gradients; the
            stage callbacks append to it when training starts.
    """

    gradient_hooks: list[GradientHook]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.gradient_hooks = []
        super().__init__(*args, **kwargs)

    def optimizer_step(self) -> None:
        """Unscale, run the gradient hooks, clip to :data:`CLIP_NORM`, step, update the scaler, zero, EMA.

        The order of ``torch.amp``'s documented recipe for gradient clipping under a ``GradScaler``; with AMP off
        the scaler is disabled and ``unscale_`` / ``update`` do nothing.
        """
        trainer: Any = self
        trainer.scaler.unscale_(trainer.optimizer)
        for hook in self.gradient_hooks:
            hook(trainer)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), max_norm=CLIP_NORM)
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.optimizer.zero_grad()
        if trainer.ema:
            trainer.ema.update(trainer.model)

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        """A pruned ``weights`` model as it is (see :func:`pruned_copy`); anything else as the stock trainer builds."""
        kept = pruned_copy(self, weights)
        if kept is not None:
            return kept
        built: nn.Module = super().get_model(cfg=cfg, weights=weights, verbose=verbose)  # type: ignore[misc]
        return built


def pruned_copy(trainer: Any, weights: Any) -> nn.Module | None:
    """A float, trainable copy of ``weights`` if it is a pruned model, else ``None``.

    Args:
        trainer: the Ultralytics trainer (its data set's class count is checked).
        weights: what Ultralytics passes to ``get_model``: a module, a checkpoint dict or ``None``.

    Raises:
        UsageError: the pruned model's head has another class count than the data set (the head's output
            convs are not rebuilt for a pruned model).
    """
    source = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
    if not (isinstance(source, nn.Module) and is_pruned(source)):
        return None
    nc = trainer.data["nc"]
    if getattr(source, "nc", nc) != nc:
        raise UsageError(
            f"the pruned model predicts {source.nc} classes and the data set {trainer.args.data} has {nc}; "
            "a pruned model fine-tunes on data with the classes it was pruned for"
        )
    model = copy.deepcopy(source).float()
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # the trainer freezes DFL again by name
    logger.info("fine-tuning the pruned model as it is (not rebuilt from its yaml)")
    return model


class DetectionTrainer(GroupPrunerTrainerMixin, _DetectionTrainer):  # type: ignore[misc]
    """Ultralytics' ``DetectionTrainer`` with :class:`GroupPrunerTrainerMixin`."""


class SegmentationTrainer(GroupPrunerTrainerMixin, _SegmentationTrainer):  # type: ignore[misc]
    """Ultralytics' ``SegmentationTrainer`` with :class:`GroupPrunerTrainerMixin`."""


class PoseTrainer(GroupPrunerTrainerMixin, _PoseTrainer):  # type: ignore[misc]
    """Ultralytics' ``PoseTrainer`` with :class:`GroupPrunerTrainerMixin`."""


class OBBTrainer(GroupPrunerTrainerMixin, _OBBTrainer):  # type: ignore[misc]
    """Ultralytics' ``OBBTrainer`` (oriented boxes) with :class:`GroupPrunerTrainerMixin`."""


_BY_TASK: dict[str, type] = {
    "detect": DetectionTrainer,
    "segment": SegmentationTrainer,
    "pose": PoseTrainer,
    "obb": OBBTrainer,
}


def trainer_class(task: str) -> type:
    """The grouppruner trainer for an Ultralytics task (``"detect"``, ``"segment"``, ``"pose"``, ``"obb"``).

    Raises:
        UsageError: another task (classification has no detection head to keep).
    """
    try:
        return _BY_TASK[task]
    except KeyError:
        raise UsageError(
            f"no grouppruner trainer for the Ultralytics task {task!r}; trainers exist for {sorted(_BY_TASK)}"
        ) from None
