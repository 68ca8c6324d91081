"""The four stages of the recipe, each a function of a :class:`StageRun` (what a stage may use of its run).

``dense`` trains (or loads the user's) detector, ``sparse`` runs dynamic sparse training, ``pruned`` applies group
channel pruning, ``recovered`` fine-tunes and distils; each returns the stage's model and the numbers it records.
:func:`~grouppruner.recipe.run_recipe` runs them in order through
:meth:`RecipeRun.run_stage <grouppruner.recipe.RecipeRun.run_stage>`; :class:`~grouppruner.recipe.RecipeRun` is
the :class:`StageRun` the recipe passes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .._utils.digest import weights_digest
from .._utils.errors import InternalError, InvalidOptionError
from .._utils.io import StateMismatch, load_tensor_file
from ..checkpoint import CheckpointError, load_pruned
from ..detection.darknet import DarknetModel, read_weights
from ..detection.distill import YoloOutputDistill
from ..detection.models import Detector
from ..detection.train import LossFn, StepHook, evaluate
from ..distill import AttentionDistiller, GradientBalance
from ..graph import ChannelGraph
from ..pruning import GroupPruner, PlanSearch, PruningPlan, teacher_channels
from ..resume import Stateful
from ..sparsity import BNSparsity, Constant, Dynamic, Schedule
from .config import CHOICES, GAMMA_THRESHOLD, RecipeConfig
from .distributed import Distributed

__all__ = ["STAGE_FUNCTIONS", "StageRun", "distilled_layers", "load_weights", "sparse_optimizer"]

logger = logging.getLogger(__name__)

#: The recovery measures each distillation term's gradient norm on every this many distillation steps.
BALANCE_EVERY = 20


class StageRun(Protocol):
    """What a stage function may use of the run it belongs to: the contract between the stages and
    :class:`~grouppruner.recipe.RecipeRun`, which implements it.

    Attributes:
        config: the run's options.
        distributed: the processes of the run (one, or a data-parallel group).
        device: where training runs.
        example: a ``(1, 3, image_size, image_size)`` zero input for graph tracing and MACs.
        out: the run folder (a stage may keep its own resumable state there, e.g. the plan search's).
    """

    config: RecipeConfig
    distributed: Distributed
    device: torch.device
    example: Tensor
    out: Path

    @property
    def train_loader(self) -> DataLoader[Any]:
        """The augmented, shuffled training batches."""
        ...

    @property
    def plain_train_loader(self) -> DataLoader[Any]:
        """The training batches without augmentation, in order."""
        ...

    @property
    def loss_fn(self) -> nn.Module:
        """The detection loss, ``(outputs, targets) -> (loss, parts)``."""
        ...

    def new_model(self) -> Detector:
        """A freshly initialised detector of the configured kind (seeded)."""
        ...

    def load(self, stage: str) -> Detector:
        """The model of a finished stage."""
        ...

    def train(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        stage: str,
        *,
        schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
        loss_fn: LossFn | None = None,
        forward_fn: Callable[[Tensor], Any] | None = None,
        step_hooks: Sequence[StepHook] = (),
        stateful: Mapping[str, Stateful] | None = None,
    ) -> dict[str, float]:
        """Train ``model`` for ``epochs`` epochs, resumable per epoch; the mean losses of the last epoch."""
        ...


def _dense(run: StageRun) -> tuple[Detector, dict[str, Any]]:
    model = run.new_model()
    if run.config.weights is not None:
        load_weights(model, run.config.weights)
        logger.info("dense: loaded the trained detector from %s (no training)", run.config.weights)
        return model, {"weights": run.config.weights, "weights_sha256": weights_digest(model)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.config.lr, weight_decay=5e-4)
    loss = run.train(model, optimizer, run.config.dense_epochs, "dense")
    return model, {"train_loss": loss.get("loss")}


def _sparse(run: StageRun) -> tuple[Detector, dict[str, Any]]:
    c = run.config
    model = run.load("dense")
    graph = ChannelGraph(model, run.example)
    steps = max(c.sparse_epochs * len(run.train_loader), 1)
    schedule: Schedule = (
        Dynamic(
            c.sparsity,
            warmup=c.sparsity_warmup,
            keep=c.sparsity_keep,
            scope=c.sparsity_scope,  # type: ignore[arg-type]
            total_steps=steps,
        )
        if c.sparsity_schedule == "dynamic"
        else Constant(c.sparsity)
    )
    # Under fp16 an overflow is the GradScaler's to handle (it skips the step); the regularizer, which runs after
    # unscale_, must not stop the run on the inf gradients of that step.
    sparsity = BNSparsity(graph, schedule=schedule, check_finite=c.amp != "fp16")
    optimizer = sparse_optimizer(model, c.sparse_optimizer, c.sparse_lr)
    constant_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loss = run.train(
        model,
        optimizer,
        c.sparse_epochs,
        "sparse",
        schedule=constant_lr,
        step_hooks=[lambda _: sparsity.step()],
        stateful={"sparsity": sparsity},
    )
    stats = sparsity.stats(threshold=GAMMA_THRESHOLD)
    below = {name: s.below for name, s in stats.items()}
    logger.info("sparse: fraction of |gamma| < %g per layer group: %s", GAMMA_THRESHOLD, _rounded(below))
    return model, {
        "train_loss": loss.get("loss"),
        "gamma_threshold": GAMMA_THRESHOLD,
        "below_threshold": below,
        "sparsity": {name: asdict(s) for name, s in stats.items()},
    }


def _pruned(run: StageRun) -> tuple[Detector, dict[str, Any]]:
    c = run.config
    model = run.load("sparse")
    graph = ChannelGraph(model, run.example)
    layer_groups = None
    if c.prune_scope == "global":
        layer_groups = {"all": [group for members in graph.layer_groups().values() for group in members]}
    pruner = GroupPruner(
        graph, layer_groups=layer_groups, min_channels=c.min_channels, round_to=c.round_to, runtime=c.runtime
    )
    extra: dict[str, Any] = {}
    if c.search_candidates:
        plan, extra["search"] = _searched_plan(run, pruner)
    elif c.budget:
        plan = pruner.plan(**c.budget)
    else:
        plan = pruner.plan(thresholds=dict.fromkeys(pruner.layer_groups, c.gamma_threshold))
    if plan.latency is not None:
        extra["latency"] = plan.latency
    run.distributed.check_same(plan.summary(), "the pruning plan")
    pruner.apply(plan)
    logger.info("pruning plan:\n%s", plan.summary())
    kept = {lg.name: lg.channels_after / max(lg.channels_before, 1) for lg in plan.layer_groups}
    return model, {"plan": plan.summary(), "kept_channels": kept, **extra}


#: Batches of the plain training split: the first recalibrate each candidate's BatchNorms, the next score it.
SEARCH_CALIBRATION_BATCHES = 8
SEARCH_SCORED_BATCHES = 8


def _searched_plan(run: StageRun, pruner: GroupPruner) -> tuple[PruningPlan, dict[str, Any]]:
    """The plan :class:`~grouppruner.pruning.PlanSearch` picks for the budget (see
    :attr:`RecipeConfig.search_candidates <grouppruner.recipe.RecipeConfig>`), and what it measured."""
    c = run.config
    batches = list(itertools.islice(run.plain_train_loader, SEARCH_CALIBRATION_BATCHES + SEARCH_SCORED_BATCHES))
    calibration = [images for images, _ in batches[:SEARCH_CALIBRATION_BATCHES]]
    scored = batches[SEARCH_CALIBRATION_BATCHES:] or batches  # a small training split: scored on the same images
    search = PlanSearch(
        pruner,
        **c.budget,
        evaluate=lambda model: float(evaluate(model, scored)["map"]),
        calibration=calibration,
        calibration_batches=SEARCH_CALIBRATION_BATCHES,
        candidates=c.search_candidates,
        seed=c.seed,
        state_path=run.out / "search.json" if run.distributed.is_main else None,
    )
    result = search.run()
    solver = next((r.score for r in result.records if r.kind == "solver"), None)
    logger.info(
        "plan search: candidate %d (%s) chosen, mAP@0.5 %.4f on %d training images (the solver's plan: %s), %.0f s",
        result.best.index,
        result.best.kind,
        result.best.score,
        sum(len(targets) for _, targets in scored),
        "not scored" if solver is None else f"{solver:.4f}",
        result.seconds,
    )
    summary = {
        "chosen": result.best.index,
        "kind": result.best.kind,
        "scores": {f"{r.index}:{r.kind}": r.score for r in result.records},
        "seconds": result.seconds,
    }
    return result.plan, summary


def _recovered(run: StageRun) -> tuple[Detector, dict[str, Any]]:
    c = run.config
    teacher = run.load(c.teacher)
    student = run.load("pruned")
    teacher_digest = weights_digest(teacher)
    optimizer = torch.optim.AdamW(student.parameters(), lr=c.recover_lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(c.recover_epochs, 1), eta_min=c.recover_lr / 20
    )
    extra: dict[str, Any] = {"teacher": c.teacher, "teacher_sha256": teacher_digest}
    distills = bool(c.distill_weight or c.output_distill_weight or c.channel_distill_weight)
    finetune = c.finetune_epochs if distills else c.recover_epochs
    off = c.distill_off_epochs if distills else 0
    loss: dict[str, float] = {}
    layers = distilled_layers(student, c.distill_layers)
    channel_index = None
    if c.channel_distill_weight:
        # each kept channel against the teacher channel it was kept from; mapped before training moves the
        # student to the run's device, where the example input is not
        graph = ChannelGraph(student, run.example)
        channel_index = {name: teacher_channels(student, name, graph=graph) for name in layers}
    if finetune:
        loss = run.train(student, optimizer, finetune, "recovered (fine-tune)", schedule=schedule)
        extra["finetune_loss"] = loss.get("loss")
    if c.recover_epochs - off > finetune:
        distiller = AttentionDistiller(teacher, student, layers, channel_index=channel_index)
        output_distill = YoloOutputDistill.from_model(teacher, temperature=c.distill_temperature).to(run.device)
        # Measured on one process only: the gradient of a gathered loss would need the other processes' graphs.
        balance = None if run.distributed.active else GradientBalance(student.parameters(), every=BALANCE_EVERY)

        def loss_fn(outputs: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
            # Losses of the whole batch: in a parallel run, this process's shard gathered with the others'.
            distributed, size = run.distributed, len(targets)
            outputs, targets = distributed.gather_outputs(outputs), distributed.gather_targets(targets)
            detection, parts = run.loss_fn(outputs, targets)
            total = detection
            logged = {**parts, "detection": detection.detach()}
            terms = {"detection": detection}
            if c.distill_weight:
                attention = distributed.batch_mean(distiller.loss()[0], size)
                total = total + c.distill_weight * attention
                logged["attention"] = c.distill_weight * attention.detach()
                terms["attention"] = c.distill_weight * attention
            if c.channel_distill_weight:
                channel = distributed.batch_mean(distiller.channel_loss()[0], size)
                total = total + c.channel_distill_weight * channel
                logged["channel"] = c.channel_distill_weight * channel.detach()
                terms["channel"] = c.channel_distill_weight * channel
            if c.output_distill_weight:
                teacher_outputs = distributed.gather_outputs(distiller.last_teacher_output)
                output, output_parts = output_distill(outputs, teacher_outputs, targets)
                total = total + c.output_distill_weight * output
                logged["output"] = c.output_distill_weight * output.detach()
                logged.update({f"output_{k}": c.output_distill_weight * v for k, v in output_parts.items()})
                terms["output"] = c.output_distill_weight * output
            if balance is not None and student.training:
                ratios = balance.observe(terms)
                if ratios is not None:
                    logger.info(
                        "gradient norm against the detection loss's: %s",
                        ", ".join(f"{k} x{v:.3g}" for k, v in ratios.items() if k != "detection"),
                    )
            return total, logged

        try:
            loss = run.train(
                student,
                optimizer,
                c.recover_epochs - finetune - off,
                "recovered (distill)",
                schedule=schedule,
                loss_fn=loss_fn,
                forward_fn=distiller,
                stateful={"gradient_balance": balance} if balance is not None else None,
            )
        finally:
            distiller.remove()
        # the weighted distillation parts, mean over the last epoch: they show whether each term acted
        extra["distill_loss"] = {
            k: v for k, v in loss.items() if k in ("detection", "attention", "channel") or k.startswith("output")
        }
        if balance is not None:
            extra["gradient_ratio"] = {k: v["ratio"] for k, v in balance.summary().items() if k != "detection"}
            logger.info("recovery: mean gradient norm against the detection loss's: %s", extra["gradient_ratio"])
    if off:
        loss = run.train(student, optimizer, off, "recovered (distillation off)", schedule=schedule)
    if weights_digest(teacher) != teacher_digest:
        raise InternalError("recovery changed the teacher's weights")  # a frozen teacher is the contract
    extra["train_loss"] = loss.get("loss")
    return student, extra


def distilled_layers(model: Detector, which: str) -> list[str]:
    """The names of ``model.distill_layers`` that :attr:`RecipeConfig.distill_layers` selects, in order.

    Args:
        model: a YOLOv4 (``distill_layers`` under ``backbone.`` and ``neck.``) or a darknet model.
        which: ``"all"``, ``"backbone"`` or ``"neck"``.

    Raises:
        InvalidOptionError: no layer of ``model`` is under ``which`` (e.g. ``"backbone"`` for a darknet model).
    """
    if which == "all":
        return list(model.distill_layers)
    chosen = [name for name in model.distill_layers if name.startswith(f"{which}.")]
    if not chosen:
        raise InvalidOptionError(
            f"RecipeConfig.distill_layers={which!r}: none of the model's distill_layers {model.distill_layers} is "
            f"under {which!r}; use 'all'"
        )
    return chosen


def load_weights(model: Detector, path: str | Path) -> None:
    """Load a user's trained detector into ``model``: a ``state_dict`` file or a ``save_pruned`` file, or for a
    darknet model its darknet ``.weights`` file.

    Args:
        model: a freshly built :func:`~grouppruner.detection.yolov4` of the intended variant, or a
            :class:`~grouppruner.detection.darknet.DarknetModel`.
        path: ``torch.save(model.state_dict(), path)`` of that variant, or a
            :func:`~grouppruner.checkpoint.save_pruned` file of it; a ``.weights`` file for a darknet model.

    Raises:
        CheckpointError: the file cannot be read, or does not fit the model (the message names the file, the
            mismatching keys and, for the heads, the class count the file was trained for).
    """
    path = Path(path)
    if isinstance(model, DarknetModel):
        read_weights(model, path)
        return
    state = load_tensor_file(path, what="a state_dict or a grouppruner checkpoint")
    if isinstance(state, dict) and "grouppruner/meta" in state:
        load_pruned(model, path)
        return
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: neither a state_dict (a dict of tensors) nor a grouppruner checkpoint")
    mismatch = StateMismatch.between(model, state)
    if not mismatch.fits():
        problems = [f"missing keys {mismatch.missing[:3]}"] if mismatch.missing else []
        problems += [f"unexpected keys {mismatch.unexpected[:3]}"] if mismatch.unexpected else []
        problems += [f"{k} has shape {got}, the model expects {want}" for k, got, want in mismatch.wrong[:3]]
        head = next(((got, want) for k, got, want in mismatch.wrong if k.startswith("head.")), None)
        if head is not None and head[0][0] != head[1][0]:
            classes = head[0][0] // 3 - 5
            plural = "es" if classes != 1 else ""
            problems.append(f"its heads predict {classes} class{plural}, the model {model.num_classes}")
        elif head is not None:  # same outputs, other inputs: the layers before the heads have another width
            problems.append(
                f"its heads read {head[0][1]} channels, the model's {head[1][1]}: a model of another width "
                "(check width / depth / backbone)"
            )
        raise CheckpointError(f"{path}: does not fit the configured YOLOv4: " + "; ".join(problems))
    model.load_state_dict(state)


def sparse_optimizer(model: nn.Module, kind: str, lr: float) -> torch.optim.Optimizer:
    """The optimizer of the sparse stage: ``"sgd"`` (Nesterov momentum 0.9) or ``"adamw"``, weight decay 5e-4.

    With SGD the L1 term moves every gamma by ``lr * s`` per step (times ``1 / (1 - momentum)`` at steady
    state), so unimportant scales reach zero; see :attr:`RecipeConfig.sparse_optimizer`.
    """
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    raise InvalidOptionError(f"sparse optimizer must be one of {CHOICES['sparse_optimizer']}, got {kind!r}")


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}


STAGE_FUNCTIONS: dict[str, Callable[[StageRun], tuple[Detector, dict[str, Any]]]] = {
    "dense": _dense,
    "sparse": _sparse,
    "pruned": _pruned,
    "recovered": _recovered,
}
