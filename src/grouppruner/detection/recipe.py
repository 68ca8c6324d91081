"""The paper's three-stage recipe on YOLOv4, end to end and resumable.

Stages, in order (each writes its checkpoint atomically into ``out_dir`` and is skipped when a run resumes):

1. ``dense``: train a YOLOv4 on the data (a stand-in for the user's trained detector);
2. ``sparse``: dynamic sparse training with :class:`~grouppruner.sparsity.BNSparsity` on the channel graph (SGD
   with momentum), ending with a bimodal |gamma| histogram;
3. ``pruned``: group channel pruning with per-layer-group thresholds, to a parameter budget, with
   :class:`~grouppruner.pruning.GroupPruner`;
4. ``recovered``: fine-tune the pruned model, then distil from the dense model (the teacher) with
   :class:`~grouppruner.distill.AttentionDistiller` and :class:`~grouppruner.detection.YoloOutputDistill`.

Every stage reports mAP@0.5 on the validation split, parameters and MACs. With no data folder, a synthetic
VOC-format data set is generated first (:func:`~grouppruner.detection.make_synthetic_voc`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..checkpoint import CheckpointError, atomic_write, load_pruned, load_tensor_file, save_pruned
from ..distill import AttentionDistiller
from ..graph import ChannelGraph
from ..profile import count_macs, count_params
from ..pruning import GroupPruner
from ..resume import Stateful, load_training_state, save_training_state
from ..sparsity import BNSparsity, Constant, Dynamic, Schedule
from .data import VOCDetection, collate
from .distill import YoloOutputDistill
from .loss import YoloLoss, kmeans_anchors
from .models import YOLOv4, yolov4
from .synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from .train import LossFn, StepHook, evaluate, train_one_epoch

__all__ = [
    "GAMMA_THRESHOLD",
    "STAGES",
    "STAGE_OF_OPTION",
    "RecipeConfig",
    "RecipeRun",
    "StageResult",
    "first_changed_stage",
    "load_weights",
    "run_recipe",
    "sparse_optimizer",
    "weights_digest",
]

logger = logging.getLogger(__name__)

STAGES = ("dense", "sparse", "pruned", "recovered")


#: ``|gamma|`` below this counts as sparsified in the sparse stage's statistics (``StageResult.extra``).
GAMMA_THRESHOLD = 1e-2

_CHOICES: dict[str, tuple[str, ...]] = {
    "sparse_optimizer": ("sgd", "adamw"),
    "sparsity_schedule": ("dynamic", "constant"),
    "sparsity_scope": ("global", "group"),
    "prune_scope": ("group", "global"),
    "prune_by": ("params", "gamma"),
    "teacher": ("dense", "sparse"),
    "amp": ("off", "bf16", "fp16"),
}


@dataclass
class RecipeConfig:
    """Options of :func:`run_recipe`. The defaults take 16.5 CPU-minutes (about nine minutes on two idle cores).

    Invalid values raise ``ValueError`` at construction, naming the field and what it accepts.

    Attributes:
        out_dir: where checkpoints (``<stage>.pt``) and ``results.json`` go; a run with the same ``out_dir``
            resumes after the last finished stage.
        data_root: a VOCdevkit-style folder (its ``train`` and ``val`` splits are used); ``None`` generates a
            synthetic one in ``out_dir/data``.
        classes: class names of the data set.
        num_images: images to generate when ``data_root`` is ``None``.
        val_fraction: fraction of the generated images in the validation split, in (0, 1) (the rest is
            ``train``); a large split keeps the mAP differences between stages above the noise.
        image_size: square network input side in pixels.
        backbone, width, depth: the YOLOv4 variant (see :func:`~grouppruner.detection.yolov4`).
        batch_size: batch size of every training stage.
        lr: AdamW learning rate of the dense stage (cosine-annealed to ``lr / 20``).
        dense_epochs, sparse_epochs, recover_epochs: epochs of each training stage.
        sparse_optimizer: ``"sgd"`` (SGD with Nesterov momentum 0.9, as network slimming and the paper) or
            ``"adamw"``. Adam divides every gradient, the L1 term included, by its running magnitude, so the
            L1 pull on a gamma is no longer ``lr * s`` and the scales do not collapse to zero.
        sparse_lr: learning rate of the sparse stage, constant: the dynamic rule's warmup is a fraction of the
            steps, and under a cosine decay about 70 % of the L1 pull would land in the first 40 % of them, so
            that every gamma collapses before the strongest are spared.
        sparsity: the rate ``s`` of the L1 term on the BatchNorm scales. What matters is the total pull
            ``sparse_lr * s * steps / (1 - momentum)``: a short run needs a larger ``s`` than the paper's
            1e-4 .. 5e-3 over hundreds of epochs. The default (pull 1.2 over the demo's 16 epochs, 0.5 of it in the
            warmup) drives the channels the dynamic rule does not spare below 1e-2.
        sparsity_schedule: ``"dynamic"`` (the paper's :class:`~grouppruner.sparsity.Dynamic`: constant ``s`` for
            the first 40 % of the steps, then the strongest 35 % of the channels get 1 % of ``s``) or
            ``"constant"`` (:class:`~grouppruner.sparsity.Constant`, as network slimming).
        sparsity_keep: the fraction of channels the dynamic rule spares (``Dynamic(keep=)``; paper: 0.35).
            Parameters scale with in x out channels, so keeping a fraction ``k`` of every layer's channels keeps
            about ``k^2`` of the parameters: ``k`` a little below ``sqrt(target_params)`` (0.5 for 0.35) lets the
            budget remove only channels that sparse training zeroed. Above it, pruning must cut live channels
            (measured: ``keep=0.6`` with a 0.35 budget fell from 0.46 to 0.01 mAP); far below it, sparse training
            zeroes channels the budget could have kept (``keep=0.35``: 0.30 mAP after sparse training).
        sparsity_scope: where the dynamic rule's quantile is taken: ``"global"`` (paper) or ``"group"`` (every
            layer group spares its own strongest ``sparsity_keep``).
        target_params: fraction of the parameters the pruned model keeps (``prune_by="params"``).
        prune_by: ``"params"``: the per-layer-group fractions are solved for ``target_params``; ``"gamma"``:
            every layer group drops its channels with ``|gamma| < gamma_threshold`` (fractions read off the
            gamma distributions, whatever size that gives).
        gamma_threshold: the |gamma| threshold of ``prune_by="gamma"``.
        prune_scope: ``"group"``: one threshold per layer group (the paper's grouping by feature stride and
            module structure, ``ChannelGraph.layer_groups()``); ``"global"``: one threshold over all channels.
        min_channels, round_to: passed to :class:`~grouppruner.pruning.GroupPruner`.
        recover_lr: AdamW learning rate of the recovery stage (cosine-annealed to ``recover_lr / 20``); the
            dense stage's rate: from the demo's pruned model, 24 recovery epochs reached mAP 0.573 / 0.580 / 0.592 /
            0.608 at 1e-3 / 2e-3 / 3e-3 / 5e-3 (one seed; the dense model has 0.594).
        finetune_epochs: the first this many recovery epochs fine-tune on the detection loss alone; the
            remaining ``recover_epochs - finetune_epochs`` add the distillation terms (the paper fine-tunes
            the pruned model before distilling).
        teacher: ``"dense"`` (the original model, as in the paper) or ``"sparse"`` (the model that was pruned).
        distill_weight: weight of the spatial-attention distillation loss
            (:class:`~grouppruner.distill.AttentionDistiller` on ``YOLOv4.distill_layers``); 0 disables it.
        output_distill_weight: weight of the output-level term
            (:class:`~grouppruner.detection.YoloOutputDistill`); 0 disables it. Its raw value on a freshly
            pruned demo student is about 25 times the detection loss (class KL times ``T^2 = 9``, box L2 in grid
            cells), so the default keeps it at the detection loss's scale; the attention term (about 0.04 raw
            over the nine layers) is weighted 10 for the same reason.
        distill_temperature: temperature of the output-level KL terms.
        seed: seed of data generation, initialization and shuffling.
        weights: the user's trained detector to compress: a ``state_dict`` file of
            :func:`~grouppruner.detection.yolov4` with these ``classes`` / ``backbone`` / ``width`` / ``depth``, or a
            :func:`~grouppruner.checkpoint.save_pruned` file. The dense stage then loads it instead of training
            (``dense_epochs`` is ignored) and only measures it.
        device: where the training stages run: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when
            available); graph tracing, pruning and checkpoints stay on the CPU. Not part of a run's identity:
            a run started on one device resumes on another.
        amp: mixed precision of the training forward passes: ``"off"``, ``"bf16"`` (autocast, no scaler; CPU
            or CUDA) or ``"fp16"`` (autocast with a ``GradScaler``; CUDA only). The sparsity regulariser and the
            distiller see unscaled gradients and fp32 attention maps either way.
    """

    out_dir: str
    data_root: str | None = None
    classes: tuple[str, ...] = SYNTHETIC_CLASSES
    num_images: int = 600
    val_fraction: float = 0.5
    image_size: int = 128
    backbone: str = "cspdarknet53"
    width: float = 0.25
    depth: float = 0.34
    batch_size: int = 16
    lr: float = 5e-3
    dense_epochs: int = 50
    sparse_epochs: int = 16
    recover_epochs: int = 24
    sparse_optimizer: str = "sgd"
    sparse_lr: float = 0.02
    sparsity: float = 0.02
    sparsity_schedule: str = "dynamic"
    sparsity_keep: float = 0.5
    sparsity_scope: str = "group"
    target_params: float = 0.35
    prune_by: str = "params"
    gamma_threshold: float = GAMMA_THRESHOLD
    prune_scope: str = "group"
    min_channels: int = 8
    round_to: int | None = None
    recover_lr: float = 5e-3
    finetune_epochs: int = 6
    teacher: str = "dense"
    distill_weight: float = 10.0
    output_distill_weight: float = 0.05
    distill_temperature: float = 3.0
    seed: int = 0
    weights: str | None = None
    device: str = "cpu"
    amp: str = "off"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"RecipeConfig.{name} must be one of {allowed}, got {value!r}")
        positive = (
            "num_images",
            "image_size",
            "width",
            "depth",
            "batch_size",
            "lr",
            "sparse_lr",
            "recover_lr",
            "distill_temperature",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"RecipeConfig.{name} must be > 0, got {getattr(self, name)!r}")
        non_negative = (
            "dense_epochs",
            "sparse_epochs",
            "recover_epochs",
            "finetune_epochs",
            "sparsity",
            "gamma_threshold",
            "distill_weight",
            "output_distill_weight",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"RecipeConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("val_fraction", "target_params", "sparsity_keep"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0 and not (name != "val_fraction" and value == 1.0):
                bounds = "(0, 1)" if name == "val_fraction" else "(0, 1]"
                raise ValueError(f"RecipeConfig.{name} must be in {bounds}, got {value!r}")
        if self.device not in ("cpu", "cuda", "auto") and not re.fullmatch(r"cuda:\d+", self.device):
            raise ValueError(f"RecipeConfig.device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"RecipeConfig.weights: no such file {self.weights!r}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"RecipeConfig.classes must be distinct class names, got {self.classes!r}")
        if self.finetune_epochs > self.recover_epochs:
            raise ValueError(
                f"RecipeConfig.finetune_epochs ({self.finetune_epochs}) must be <= recover_epochs "
                f"({self.recover_epochs})"
            )


@dataclass
class StageResult:
    """What one stage produced.

    Attributes:
        stage: one of :data:`STAGES`.
        map50: VOC mAP@0.5 on the validation split.
        params: number of parameters.
        macs: conv + linear MACs for one ``image_size`` x ``image_size`` image.
        checkpoint: path of the stage's checkpoint (a :func:`~grouppruner.checkpoint.save_pruned` file).
        extra: stage-specific numbers (training loss, sparsity statistics, pruning summary).
    """

    stage: str
    map50: float
    params: int
    macs: int
    checkpoint: str
    extra: dict[str, Any] = field(default_factory=dict)


def _write_json_atomic(path: Path, data: Any) -> None:
    with atomic_write(path) as file:
        file.write(json.dumps(data, indent=2).encode())


class RecipeRun:
    """The state shared by the stages of one recipe run: data, anchors, loss and checkpoint lookup.

    :func:`run_recipe` drives it; benchmarks use it to run single stages (:meth:`run_stage`) from checkpoints
    made elsewhere, e.g. several recovery variants from one pruned model.

    Args:
        config: the options; the data is generated here when ``config.data_root`` is ``None`` and
            ``out_dir/data`` has none yet.
        progress: show tqdm progress bars.
        checkpoints: stage -> checkpoint file to read that stage's model from (default
            ``out_dir/<stage>.pt``).

    Attributes:
        train_loader, val_loader: ``DataLoader`` s of the ``train`` (augmented, shuffled) and ``val`` splits.
        loss_fn: the :class:`~grouppruner.detection.YoloLoss` with anchors fitted to the training boxes.
        example: a ``(1, 3, image_size, image_size)`` zero input for graph tracing and MACs.
        device: where training and evaluation run (from ``config.device``).

    Raises:
        ValueError: ``config.device`` asks for CUDA on a machine without it, or ``amp="fp16"`` off CUDA
            (checked before any data is generated).
    """

    def __init__(
        self, config: RecipeConfig, progress: bool = False, checkpoints: Mapping[str, str | Path] | None = None
    ) -> None:
        self.config = config
        self.progress = progress
        self.device = _resolve_device(config.device)
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(f"RecipeConfig.amp='fp16' needs CUDA (device {self.device}); use amp='bf16' on a CPU")
        self.checkpoints = {stage: Path(path) for stage, path in (checkpoints or {}).items()}
        self.out = Path(config.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        data_root = Path(config.data_root) if config.data_root else self.out / "data"
        if config.data_root is None and not (data_root / "ImageSets" / "Main" / "train.txt").is_file():
            logger.info("generating %d synthetic images in %s", config.num_images, data_root)
            make_synthetic_voc(
                data_root,
                config.num_images,
                image_size=config.image_size,
                classes=config.classes,
                seed=config.seed,
                split_fractions=(1.0 - config.val_fraction, config.val_fraction, 0.0),
            )
        size = config.image_size
        self.generator = generator = torch.Generator().manual_seed(config.seed)
        train_set = VOCDetection(data_root, "train", size, augment=True, classes=config.classes, generator=generator)
        val_set = VOCDetection(data_root, "val", size, classes=config.classes)
        self.train_loader = DataLoader(
            train_set, batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=generator
        )
        self.val_loader = DataLoader(val_set, batch_size=config.batch_size, collate_fn=collate)
        self.anchors = self._weights_anchors(config.weights) if config.weights else self._anchors(train_set)
        self.loss_fn = YoloLoss(len(config.classes), anchors=self.anchors).to(self.device)
        self.example = torch.zeros(1, 3, size, size)
        self._state_files: list[Path] = []

    def _anchors(self, train_set: VOCDetection) -> Tensor:
        # The cfg anchors are for 416-pixel inputs; small demo inputs need anchors fitted to their boxes.
        boxes = torch.cat([train_set.letterbox(i).apply(a.boxes) for i, a in enumerate(train_set.annotations)])
        wh = boxes[:, 2:] - boxes[:, :2]
        # Seeded by the data, not by config.seed: runs with other training seeds on the same data (and the same
        # dense checkpoint) must train with the anchors saved in that checkpoint.
        return kmeans_anchors(wh, 9, seed=0).view(3, 3, 2)

    def _weights_anchors(self, weights: str) -> Tensor:
        # A trained detector keeps the anchors it was trained with; the loss must use the same.
        c = self.config
        model = yolov4(len(c.classes), backbone=c.backbone, width=c.width, depth=c.depth)
        load_weights(model, weights)
        return model.anchors.clone()

    def new_model(self) -> YOLOv4:
        """A freshly initialised YOLOv4 of the configured variant (seeded: the same weights every call)."""
        torch.manual_seed(self.config.seed)
        c = self.config
        return yolov4(len(c.classes), backbone=c.backbone, width=c.width, depth=c.depth, anchors=self.anchors)

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
        """``epochs`` epochs; without ``schedule``, the learning rate is cosine-annealed to 1/20 over them.

        After every epoch the whole training state (model, optimizer, schedule, ``stateful`` objects such as the
        sparsity regularizer, RNGs, the loader's generator) is saved to ``out_dir/<stage>.epoch.pt``; a run
        killed mid-stage resumes from it exactly. :meth:`run_stage` removes the file when the stage is done.
        """
        if schedule is None:
            lr = optimizer.param_groups[0]["lr"]
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=lr / 20)
        model.to(self.device)  # before the optimizer state is restored: it is cast to the parameters' device
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.config.amp == "fp16")
        stateful = {**(stateful or {}), "scaler": scaler}
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.amp)
        state_path = self.out / f"{_file_stem(stage)}.epoch.pt"
        start = 0
        if state_path.is_file():
            start = load_training_state(
                state_path,
                model=model,
                optimizer=optimizer,
                scheduler=schedule,
                generator=self.generator,
                extra=stateful,
            )
            logger.info("%s: resuming after epoch %d/%d", stage, start, epochs)
        self._state_files.append(state_path)
        loss: dict[str, float] = {}
        for epoch in range(start, epochs):
            logger.info("%s: epoch %d/%d", stage, epoch + 1, epochs)
            loss = train_one_epoch(
                model,
                self.train_loader,
                optimizer,
                loss_fn or self.loss_fn,
                forward_fn=forward_fn,
                step_hooks=step_hooks,
                scaler=scaler if scaler.is_enabled() else None,
                autocast_dtype=autocast,
                device=self.device,
                progress=self.progress,
            )
            schedule.step()
            save_training_state(
                state_path,
                epoch + 1,
                model=model,
                optimizer=optimizer,
                scheduler=schedule,
                generator=self.generator,
                extra=stateful,
            )
        return loss

    def result(self, stage: str, model: YOLOv4, extra: dict[str, Any]) -> StageResult:
        """Save ``model`` as ``out_dir/<stage>.pt`` and measure it (validation mAP@0.5, params, MACs)."""
        path = self.out / f"{stage}.pt"
        model.cpu()
        save_pruned(model, path)
        metrics = evaluate(model.to(self.device), self.val_loader, device=self.device, progress=self.progress)
        model.cpu()
        return StageResult(
            stage=stage,
            map50=float(metrics["map"]),
            params=count_params(model),
            macs=count_macs(model.eval(), self.example),
            checkpoint=str(path),
            extra=extra,
        )

    def load(self, stage: str) -> YOLOv4:
        """The model of a finished stage, from ``checkpoints[stage]`` or ``out_dir/<stage>.pt``."""
        model = self.new_model()
        load_pruned(model, self.checkpoints.get(stage, self.out / f"{stage}.pt"))
        return model

    def run_stage(self, stage: str) -> StageResult:
        """Run one stage of :data:`STAGES` from the checkpoints of the stages before it and measure it.

        Writes ``out_dir/<stage>.pt`` (not ``results.json``).

        Raises:
            KeyError: an unknown stage name.
            FileNotFoundError: a checkpoint this stage reads is missing.
        """
        if stage not in _STAGE_FUNCTIONS:
            raise KeyError(f"unknown stage {stage!r}; stages: {STAGES}")
        # Each stage draws its randomness from its own seed, so a stage gives the same result whether the
        # stages before it ran in this process or were read back from their checkpoints.
        stage_seed = self.config.seed * len(STAGES) + STAGES.index(stage)
        torch.manual_seed(stage_seed)
        self.generator.manual_seed(stage_seed)
        self._state_files = []
        model, extra = _STAGE_FUNCTIONS[stage](self)
        result = self.result(stage, model, extra)
        for path in self._state_files:
            path.unlink(missing_ok=True)
        logger.info("%s: mAP@0.5 %.3f, %d params", stage, result.map50, result.params)
        return result


def _dense(run: RecipeRun) -> tuple[YOLOv4, dict[str, Any]]:
    model = run.new_model()
    if run.config.weights is not None:
        load_weights(model, run.config.weights)
        logger.info("dense: loaded the trained detector from %s (no training)", run.config.weights)
        return model, {"weights": run.config.weights, "weights_sha256": weights_digest(model)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.config.lr, weight_decay=5e-4)
    loss = run.train(model, optimizer, run.config.dense_epochs, "dense")
    return model, {"train_loss": loss.get("loss")}


def _sparse(run: RecipeRun) -> tuple[YOLOv4, dict[str, Any]]:
    c = run.config
    model = run.load("dense")
    graph = ChannelGraph(model, run.example)
    steps = max(c.sparse_epochs * len(run.train_loader), 1)
    schedule: Schedule = (
        Dynamic(c.sparsity, keep=c.sparsity_keep, scope=c.sparsity_scope, total_steps=steps)  # type: ignore[arg-type]
        if c.sparsity_schedule == "dynamic"
        else Constant(c.sparsity)
    )
    sparsity = BNSparsity(graph, schedule=schedule)
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


def _pruned(run: RecipeRun) -> tuple[YOLOv4, dict[str, Any]]:
    c = run.config
    model = run.load("sparse")
    graph = ChannelGraph(model, run.example)
    layer_groups = None
    if c.prune_scope == "global":
        layer_groups = {"all": [group for members in graph.layer_groups().values() for group in members]}
    pruner = GroupPruner(graph, layer_groups=layer_groups, min_channels=c.min_channels, round_to=c.round_to)
    if c.prune_by == "params":
        plan = pruner.plan(target_params=c.target_params)
    else:
        plan = pruner.plan(thresholds=dict.fromkeys(pruner.layer_groups, c.gamma_threshold))
    pruner.apply(plan)
    logger.info("pruning plan:\n%s", plan.summary())
    kept = {lg.name: lg.channels_after / max(lg.channels_before, 1) for lg in plan.layer_groups}
    return model, {"plan": plan.summary(), "kept_channels": kept}


def _recovered(run: RecipeRun) -> tuple[YOLOv4, dict[str, Any]]:
    c = run.config
    teacher = run.load(c.teacher)
    student = run.load("pruned")
    teacher_digest = weights_digest(teacher)
    optimizer = torch.optim.AdamW(student.parameters(), lr=c.recover_lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(c.recover_epochs, 1), eta_min=c.recover_lr / 20
    )
    extra: dict[str, Any] = {"teacher": c.teacher, "teacher_sha256": teacher_digest}
    finetune = c.finetune_epochs if c.distill_weight or c.output_distill_weight else c.recover_epochs
    loss: dict[str, float] = {}
    if finetune:
        loss = run.train(student, optimizer, finetune, "recovered (fine-tune)", schedule=schedule)
        extra["finetune_loss"] = loss.get("loss")
    if c.recover_epochs > finetune:
        distiller = AttentionDistiller(teacher, student, student.distill_layers)
        output_distill = YoloOutputDistill.from_model(teacher, temperature=c.distill_temperature).to(run.device)

        def loss_fn(outputs: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
            detection, parts = run.loss_fn(outputs, targets)
            total = detection
            logged = {**parts, "detection": detection.detach()}
            if c.distill_weight:
                attention, _ = distiller.loss()
                total = total + c.distill_weight * attention
                logged["attention"] = c.distill_weight * attention.detach()
            if c.output_distill_weight:
                output, output_parts = output_distill(outputs, distiller.last_teacher_output, targets)
                total = total + c.output_distill_weight * output
                logged["output"] = c.output_distill_weight * output.detach()
                logged.update({f"output_{k}": c.output_distill_weight * v for k, v in output_parts.items()})
            return total, logged

        try:
            loss = run.train(
                student,
                optimizer,
                c.recover_epochs - finetune,
                "recovered (distill)",
                schedule=schedule,
                loss_fn=loss_fn,
                forward_fn=distiller,
            )
        finally:
            distiller.remove()
        # the weighted distillation parts, mean over the last epoch: they show whether each term acted
        extra["distill_loss"] = {
            k: v for k, v in loss.items() if k in ("detection", "attention") or k.startswith("output")
        }
    if weights_digest(teacher) != teacher_digest:
        raise RuntimeError("recovery changed the teacher's weights")  # a frozen teacher is the contract
    extra["train_loss"] = loss.get("loss")
    return student, extra


def load_weights(model: YOLOv4, path: str | Path) -> None:
    """Load a user's trained detector into ``model``: a ``state_dict`` file or a ``save_pruned`` file.

    Args:
        model: a freshly built :func:`~grouppruner.detection.yolov4` of the intended variant.
        path: ``torch.save(model.state_dict(), path)`` of that variant, or a
            :func:`~grouppruner.checkpoint.save_pruned` file of it.

    Raises:
        CheckpointError: the file cannot be read, or does not fit the model (the message names the file, the
            mismatching keys and, for the heads, the class count the file was trained for).
    """
    path = Path(path)
    state = load_tensor_file(path, what="a state_dict or a grouppruner checkpoint")
    if isinstance(state, dict) and "grouppruner/meta" in state:
        load_pruned(model, path)
        return
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: neither a state_dict (a dict of tensors) nor a grouppruner checkpoint")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        problems = [f"missing keys {missing[:3]}"] if missing else []
        problems += [f"unexpected keys {unexpected[:3]}"] if unexpected else []
        problems += [f"{k} has shape {got}, the model expects {want}" for k, got, want in wrong[:3]]
        head = next((got for k, got, _ in wrong if k.startswith("head.")), None)
        if head is not None:
            problems.append(f"its heads predict {head[0] // 3 - 5} classes, the model {model.num_classes}")
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
    raise ValueError(f"sparse optimizer must be one of {_CHOICES['sparse_optimizer']}, got {kind!r}")


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (16 hex characters) of the model's ``state_dict`` names, shapes and values.

    Unlike :func:`~grouppruner.plan.model_fingerprint` (architecture only) it tells two checkpoints of the same
    architecture apart, e.g. the dense and the sparse model.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


#: The first stage each option affects: changing it reruns that stage and the ones after it.
STAGE_OF_OPTION: dict[str, str] = {
    **dict.fromkeys(
        (
            "data_root",
            "classes",
            "num_images",
            "val_fraction",
            "image_size",
            "backbone",
            "width",
            "depth",
            "batch_size",
            "lr",
            "dense_epochs",
            "seed",
            "weights",
            "amp",
        ),
        "dense",
    ),
    **dict.fromkeys(
        (
            "sparse_optimizer",
            "sparse_lr",
            "sparsity",
            "sparsity_schedule",
            "sparsity_keep",
            "sparsity_scope",
            "sparse_epochs",
        ),
        "sparse",
    ),
    **dict.fromkeys(
        ("target_params", "prune_by", "gamma_threshold", "prune_scope", "min_channels", "round_to"), "pruned"
    ),
    **dict.fromkeys(
        (
            "recover_lr",
            "recover_epochs",
            "finetune_epochs",
            "teacher",
            "distill_weight",
            "output_distill_weight",
            "distill_temperature",
        ),
        "recovered",
    ),
}


#: Options that do not change what a stage computes, only where: a run may resume with other values.
_NOT_STAGE_OPTIONS = ("out_dir", "device")


def first_changed_stage(previous: Mapping[str, Any], config: RecipeConfig) -> str | None:
    """The first stage whose options differ between a saved configuration and ``config``.

    Args:
        previous: the ``config`` of an earlier ``results.json`` (JSON values).
        config: the new options.

    Returns:
        A stage of :data:`STAGES` (``"dense"`` for an option unknown to :data:`STAGE_OF_OPTION`), or ``None``
        when nothing that matters changed (``out_dir`` never matters).
    """
    current = json.loads(json.dumps(asdict(config)))
    keys = (set(previous) | set(current)) - set(_NOT_STAGE_OPTIONS)
    changed = [k for k in keys if previous.get(k) != current.get(k)]
    stages = [STAGE_OF_OPTION.get(k, "dense") for k in changed]
    if changed:
        first = min(stages, key=STAGES.index)
        logger.info("options changed since the last run (%s): rerunning from %s", ", ".join(sorted(changed)), first)
        return first
    return None


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"RecipeConfig.device={name!r}, but torch sees no CUDA device on this machine")
    return device


def _file_stem(stage: str) -> str:
    """``"recovered (fine-tune)"`` -> ``"recovered-fine-tune"``: a stage label as a file name."""
    return "-".join("".join(ch if ch.isalnum() else " " for ch in stage).split())


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}


_STAGE_FUNCTIONS: dict[str, Callable[[RecipeRun], tuple[YOLOv4, dict[str, Any]]]] = {
    "dense": _dense,
    "sparse": _sparse,
    "pruned": _pruned,
    "recovered": _recovered,
}


def run_recipe(config: RecipeConfig, *, progress: bool = False) -> list[StageResult]:
    """Run (or resume) the dense -> sparse -> pruned -> recovered recipe.

    Finished stages are read back from ``out_dir/results.json`` and their checkpoints are reused; a stage whose
    checkpoint is missing runs again. ``results.json`` is rewritten atomically after every stage.

    Args:
        config: the options; images are ``(N, 3, image_size, image_size)``.
        progress: show tqdm progress bars for training and evaluation.

    Returns:
        One :class:`StageResult` per stage, in :data:`STAGES` order.

    A folder written with other options is not refused: the stages that the changed options affect (and the
    ones after them) run again, the others are kept (:data:`STAGE_OF_OPTION` says which option belongs to which
    stage); a stage interrupted mid-way resumes at its last finished epoch (:meth:`RecipeRun.train`).

    Raises:
        ValueError: ``out_dir`` is a file, or its ``results.json`` is not a recipe result.
    """
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is a file; give a folder (new or of an earlier run)")
    results_path = out / "results.json"
    done: dict[str, StageResult] = {}
    if results_path.is_file():
        # Read before any data is generated or loaded: a refused run should cost nothing.
        try:
            saved = json.loads(results_path.read_text(encoding="utf-8"))
            records = [StageResult(**record) for record in saved["stages"]]
            previous = saved["config"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{results_path}: not a recipe result ({type(error).__name__}: {error})") from error
        changed = first_changed_stage(previous, config)
        keep = len(STAGES) if changed is None else STAGES.index(changed)
        # A stage counts as done only if it and every stage before it left their checkpoints (looked up in
        # out_dir, so a relative out_dir resumes from any working directory).
        for record in records:
            if STAGES.index(record.stage) >= keep or not (out / f"{record.stage}.pt").is_file():
                break
            done[record.stage] = record
    run = RecipeRun(config, progress)
    for stage in STAGES:
        if stage in done:
            logger.info("%s: done earlier (mAP %.3f), skipped", stage, done[stage].map50)
            continue
        done[stage] = run.run_stage(stage)
        _write_json_atomic(
            results_path, {"config": asdict(config), "stages": [asdict(done[s]) for s in STAGES if s in done]}
        )
    return [done[s] for s in STAGES]
