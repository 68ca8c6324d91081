"""The sparse and the distillation stage as callback objects on an Ultralytics trainer.

Ultralytics' DDP launcher pickles the trainer's class, arguments, model and *callbacks* and rebuilds the trainer
in each worker, so a stage whose settings live in a callback object reaches every rank. Both objects are light
until training starts: at ``on_pretrain_routine_end`` (the model is on its device, wrapped in DDP, the optimizer,
scaler and EMA exist) each builds what it needs in the process that trains.

- :class:`SparseTraining`: :class:`~grouppruner.sparsity.BNSparsity` with the :class:`~grouppruner.sparsity.Dynamic`
  schedule on the channel graph's prunable BatchNorms, as a gradient hook of the trainers of :mod:`.trainer`
  (after ``unscale_``, before clipping); its schedule state is saved beside ``last.pt`` so that ``resume=``
  continues it.
- :class:`Distillation`: a :class:`~grouppruner.integrations.ultralytics.distill.DistillCriterion` (the stock
  loss plus the attention and output terms against the frozen dense model) as the student's criterion.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._utils.errors import UsageError
from ..._utils.io import atomic_write, load_tensor_file
from ...distill import GradientBalance
from ...sparsity import BNSparsity, Dynamic
from .distill import DistillCriterion, HeadDistillLoss, head_feature_channels
from .model import channel_graph, head

__all__ = ["GAMMA_THRESHOLD", "Distillation", "SparseTraining", "optimizer_steps"]

logger = logging.getLogger(__name__)

#: ``|gamma|`` below this counts as sparsified in the logged statistics.
GAMMA_THRESHOLD = 1e-2

_STATE_FILE = "grouppruner_sparsity.pt"


def _inner(trainer: Any) -> Any:
    from ultralytics.utils.torch_utils import unwrap_model

    return unwrap_model(trainer.model)


def optimizer_steps(trainer: Any) -> int:
    """How many optimizer steps the trainer's run makes: the length the sparsity schedule is sized to.

    Ultralytics steps the optimizer once ``accumulate`` batches have passed since the last step, counting batches
    over the whole run (epoch boundaries do not reset the count), and during the warmup (``warmup_epochs``, at
    most all epochs but the last) it ramps ``accumulate`` linearly from 1 to its nominal value
    (``round(nbs / batch)``, at most the number of batches of the run), rounded half to even. This counts the steps
    of that cadence from batch 0 to the last batch of the last epoch.
    """
    nb = len(trainer.train_loader)
    epochs = int(trainer.epochs)
    nominal = max(int(trainer.accumulate), 1)
    warmup_epochs = min(float(trainer.args.warmup_epochs), max(epochs - 1, 0))
    warmup = round(warmup_epochs * nb) if warmup_epochs > 0 else 0
    steps, last = 0, -1
    accumulate = nominal
    for batch in range(nb * epochs):
        if warmup and batch <= warmup:
            accumulate = max(1, int(np.interp(batch, [0, warmup], [1, nominal]).round()))
        if batch - last >= accumulate:
            steps, last = steps + 1, batch
    return steps


def _require_hooks(trainer: Any, what: str) -> None:
    if not hasattr(trainer, "gradient_hooks"):
        raise UsageError(
            f"{what} needs a grouppruner trainer (gradient hooks after unscale_): train with "
            "trainer=grouppruner.integrations.ultralytics.trainer_class(task), not "
            f"{type(trainer).__name__}"
        )


class SparseTraining:
    """Dynamic sparse training of the BatchNorm scales inside an Ultralytics trainer.

    Args:
        s: the L1 rate; each optimizer step adds ``s * sign(gamma)`` (or ``decay * s`` for the kept channels
            after warmup) to the unscaled gamma gradients.
        warmup: fraction of the run with the constant rate.
        keep: fraction of channels (the largest |gamma|) that get the decayed rate after warmup.
        decay: the kept channels' rate multiplier.
        scope: ``"global"`` or ``"group"`` quantile (see :class:`~grouppruner.sparsity.Dynamic`).

    Attributes:
        sparsity: the :class:`~grouppruner.sparsity.BNSparsity` while a trainer runs (``None`` before).
        stats: per layer group, the fraction of ``|gamma| <`` :data:`GAMMA_THRESHOLD` after the last epoch.
    """

    def __init__(
        self, s: float = 5e-3, *, warmup: float = 0.4, keep: float = 0.35, decay: float = 0.01, scope: str = "global"
    ) -> None:
        Dynamic(s, warmup=warmup, keep=keep, decay=decay, scope=scope, total_steps=1)  # type: ignore[arg-type]
        self.s, self.warmup, self.keep, self.decay, self.scope = s, warmup, keep, decay, scope
        self.sparsity: BNSparsity | None = None
        self.stats: dict[str, float] = {}

    def attach(self, target: Any) -> None:
        """Register on a ``YOLO`` object or a trainer (``add_callback``)."""
        target.add_callback("on_pretrain_routine_end", self.on_pretrain_routine_end)
        target.add_callback("on_model_save", self.on_model_save)
        target.add_callback("on_train_epoch_end", self.on_train_epoch_end)

    def __getstate__(self) -> dict[str, Any]:
        # DDP pickles the callbacks before training starts; a live regularizer never travels.
        return {**self.__dict__, "sparsity": None}

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        """Build the regularizer on the trained module and register its step as a gradient hook."""
        _require_hooks(trainer, "SparseTraining")
        graph = channel_graph(_inner(trainer), imgsz=int(trainer.args.imgsz))
        steps = max(optimizer_steps(trainer), 1)
        schedule = Dynamic(
            self.s,
            warmup=self.warmup,
            keep=self.keep,
            decay=self.decay,
            scope=self.scope,  # type: ignore[arg-type]
            total_steps=steps,
        )
        self.sparsity = BNSparsity(graph, schedule=schedule, scaler=trainer.scaler)
        if trainer.start_epoch > 0:
            self._resume(trainer, steps)
        trainer.gradient_hooks.append(self.step)
        logger.info("sparse training: %r, %d optimizer steps", self.sparsity, steps)

    def _resume(self, trainer: Any, steps: int) -> None:
        assert self.sparsity is not None
        path = Path(trainer.wdir) / _STATE_FILE
        saved = load_tensor_file(path, what="a sparsity state") if path.is_file() else None
        if saved is not None and saved["epoch"] == trainer.start_epoch - 1:
            self.sparsity.load_state_dict(saved["sparsity"])
            return
        # Killed between last.pt and this file: the schedule position is the one of the epoch boundary.
        at = round(steps * trainer.start_epoch / trainer.epochs)
        self.sparsity.schedule.load_state_dict({**self.sparsity.schedule.state_dict(), "last_step": at})
        logger.warning("%s is not from epoch %d: sparsity schedule set to step %d", path, trainer.start_epoch, at)

    def step(self, trainer: Any) -> None:
        """The gradient hook: ``BNSparsity.step()`` on the unscaled gradients."""
        assert self.sparsity is not None
        self.sparsity.step()

    def on_train_epoch_end(self, trainer: Any) -> None:
        if self.sparsity is not None:
            stats = self.sparsity.stats(threshold=GAMMA_THRESHOLD)
            self.stats = {name: round(s.below, 4) for name, s in stats.items()}
            logger.info("sparse epoch %d: fraction of |gamma| < %g: %s", trainer.epoch + 1, GAMMA_THRESHOLD, self.stats)

    def on_model_save(self, trainer: Any) -> None:
        """Save the schedule beside ``last.pt`` (``resume=`` reads it back)."""
        if self.sparsity is not None:
            with atomic_write(Path(trainer.wdir) / _STATE_FILE) as file:
                torch.save({"epoch": int(trainer.epoch), "sparsity": self.sparsity.state_dict()}, file)


class Distillation:
    """Distil from a frozen dense model inside an Ultralytics trainer.

    Args:
        teacher: the dense model's Ultralytics checkpoint (a file, so that every DDP worker loads it).
        attention: weight of the attention term on the neck outputs feeding the head (default 0.1 and
            ``output`` 0.2: each term's gradient about a third of the stock loss's on a pruned yolov8n,
            ``benchmarks/ultralytics_distill.py --gradients``; at 1 and 1 they were 2.9x and 1.6x).
        output: weight of the output term (class logits and DFL distributions).
        temperature: softening temperature of the output term.
        channel: weight of the channel-wise term on the same neck outputs, each student channel against the
            teacher channel it was kept from (:func:`~.distill.head_feature_channels`); logged with the attention
            term under ``att``. 0 (default) disables it.
        off_epochs: the last ``off_epochs`` epochs of the run train with the stock loss alone (distillation off
            while the learning rate anneals, as RTMDet switches its extra terms off when mosaic closes).
        balance_every: measure both terms' gradient norms against the stock loss's every this many batches
            (:class:`~grouppruner.distill.GradientBalance`; 0: never; single-process training only).

    Attributes:
        gradient_ratio: after training, per term the mean ratio of its gradient norm to the stock loss's
            (empty when nothing was measured).
    """

    def __init__(
        self,
        teacher: str | os.PathLike[str],
        *,
        attention: float = 0.1,
        output: float = 0.2,
        temperature: float = 3.0,
        off_epochs: int = 0,
        balance_every: int = 50,
        channel: float = 0.0,
    ) -> None:
        self.teacher = str(teacher)
        if not Path(self.teacher).is_file():
            raise FileNotFoundError(f"{self.teacher}: no such teacher checkpoint")
        HeadDistillLoss(16, attention=attention, output=output, temperature=temperature, channel=channel)  # checks
        if isinstance(off_epochs, bool) or not isinstance(off_epochs, int) or off_epochs < 0:
            raise ValueError(f"Distillation: off_epochs must be an int >= 0, got {off_epochs!r}")
        self.attention, self.output, self.temperature, self.channel = attention, output, temperature, channel
        self.off_epochs = off_epochs
        if isinstance(balance_every, bool) or not isinstance(balance_every, int) or balance_every < 0:
            raise ValueError(f"Distillation: balance_every must be an int >= 0, got {balance_every!r}")
        self.balance_every = balance_every
        self.gradient_ratio: dict[str, float] = {}
        self._distilling: DistillCriterion | None = None

    def __getstate__(self) -> dict[str, Any]:
        # DDP pickles the callbacks before training starts; a loaded teacher never travels.
        return {**self.__dict__, "_distilling": None}

    def attach(self, target: Any) -> None:
        """Register on a ``YOLO`` object or a trainer (``add_callback``)."""
        target.add_callback("on_pretrain_routine_end", self.on_pretrain_routine_end)
        target.add_callback("on_train_epoch_start", self.on_train_epoch_start)
        target.add_callback("on_train_end", self.on_train_end)

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        """Load the teacher on the trainer's device and make the student's criterion a distilling one."""
        from ultralytics.nn.tasks import load_checkpoint

        student = _inner(trainer)
        teacher, _ = load_checkpoint(self.teacher, device=trainer.device)
        teacher = teacher.float().eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        if head(teacher).nc != head(student).nc or head(teacher).reg_max != head(student).reg_max:
            raise UsageError(f"{self.teacher}: the teacher's head differs from the student's (classes or DFL bins)")
        terms = HeadDistillLoss(
            head(student).reg_max,
            attention=self.attention,
            output=self.output,
            temperature=self.temperature,
            channel=self.channel,
            channel_index=head_feature_channels(student, imgsz=int(trainer.args.imgsz)) if self.channel else None,
        )
        base = student.criterion if getattr(student, "criterion", None) is not None else student.init_criterion()
        # The measurement differentiates outside DDP's backward, so it is made where no gradient is reduced.
        alone = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        balance = (
            GradientBalance(student.parameters(), every=self.balance_every) if self.balance_every and alone else None
        )
        self._distilling = DistillCriterion(base, teacher, terms, balance=balance)
        student.criterion = self._distilling
        logger.info(
            "distilling from %s (attention %g, output %g, off for the last %d epochs)",
            self.teacher,
            self.attention,
            self.output,
            self.off_epochs,
        )

    def on_train_epoch_start(self, trainer: Any) -> None:
        """Switch to the stock loss for the last ``off_epochs`` epochs (a resumed run lands on the same side)."""
        if self._distilling is None:
            return
        active = int(trainer.epoch) < int(trainer.epochs) - self.off_epochs
        if self._distilling.active and not active:
            logger.info("epoch %d: distillation off, the stock loss alone", int(trainer.epoch) + 1)
        self._distilling.active = active

    def on_train_end(self, trainer: Any) -> None:
        """Give the student back its own criterion (the teacher is released)."""
        student: nn.Module = _inner(trainer)
        criterion = getattr(student, "criterion", None)
        if isinstance(criterion, DistillCriterion):
            if criterion.balance is not None and criterion.balance.measured:
                summary = criterion.balance.summary()
                self.gradient_ratio = {name: round(summary[name]["ratio"], 4) for name in ("att", "kd")}
                logger.info("distillation gradient norms against the stock loss's, means: %s", self.gradient_ratio)
            student.criterion = criterion.base
