"""The paper's three-stage recipe on YOLOv4, end to end and resumable.

Stages, in order (each writes its checkpoint atomically into ``out_dir`` and is skipped when a run resumes):

1. ``dense``: train a YOLOv4 on the data (a stand-in for the user's trained detector);
2. ``sparse``: dynamic sparse training with :class:`~grouppruner.sparsity.BNSparsity` on the channel graph;
3. ``pruned``: group channel pruning to a parameter budget with :class:`~grouppruner.pruning.GroupPruner`;
4. ``recovered``: fine-tune the pruned model with :class:`~grouppruner.distill.AttentionDistiller` from the
   sparse model (the teacher).

Every stage reports mAP@0.5 on the validation split, parameters and MACs. With no data folder, a synthetic
VOC-format data set is generated first (:func:`~grouppruner.detection.make_synthetic_voc`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..checkpoint import atomic_write, load_pruned, save_pruned
from ..distill import AttentionDistiller
from ..graph import ChannelGraph
from ..profile import count_macs, count_params
from ..pruning import GroupPruner
from ..sparsity import BNSparsity, Dynamic
from .data import VOCDetection, collate
from .loss import YoloLoss, kmeans_anchors
from .models import YOLOv4, yolov4
from .synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from .train import evaluate, train_one_epoch

__all__ = ["STAGES", "RecipeConfig", "StageResult", "run_recipe"]

logger = logging.getLogger(__name__)

STAGES = ("dense", "sparse", "pruned", "recovered")


@dataclass
class RecipeConfig:
    """Options of :func:`run_recipe`. The defaults run in about four minutes on two idle CPU cores.

    Attributes:
        out_dir: where checkpoints (``<stage>.pt``) and ``results.json`` go; a run with the same ``out_dir``
            resumes after the last finished stage.
        data_root: a VOCdevkit-style folder; ``None`` generates a synthetic one in ``out_dir/data``.
        classes: class names of the data set.
        num_images: images to generate when ``data_root`` is ``None``.
        image_size: square network input side in pixels.
        backbone, width, depth: the YOLOv4 variant (see :func:`~grouppruner.detection.yolov4`).
        batch_size: batch size of every training stage.
        lr: AdamW learning rate of the dense stage (cosine-annealed to ``lr / 20``); the sparse and recovery
            stages fine-tune at ``lr / 5``.
        dense_epochs, sparse_epochs, recover_epochs: epochs of each training stage.
        sparsity: the rate ``s`` of the :class:`~grouppruner.sparsity.Dynamic` schedule.
        target_params: fraction of the parameters the pruned model keeps.
        min_channels, round_to: passed to :class:`~grouppruner.pruning.GroupPruner`.
        distill_weight: weight of the attention-distillation loss next to the detection loss.
        seed: seed of data generation, initialization and shuffling.
    """

    out_dir: str
    data_root: str | None = None
    classes: tuple[str, ...] = SYNTHETIC_CLASSES
    num_images: int = 400
    image_size: int = 128
    backbone: str = "cspdarknet53"
    width: float = 0.25
    depth: float = 0.34
    batch_size: int = 16
    lr: float = 5e-3
    dense_epochs: int = 24
    sparse_epochs: int = 6
    recover_epochs: int = 6
    sparsity: float = 1e-3
    target_params: float = 0.35
    min_channels: int = 8
    round_to: int | None = None
    distill_weight: float = 10.0
    seed: int = 0


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


class _Run:
    """The state shared by the stages of one recipe run."""

    def __init__(self, config: RecipeConfig, progress: bool) -> None:
        self.config = config
        self.progress = progress
        self.out = Path(config.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        data_root = Path(config.data_root) if config.data_root else self.out / "data"
        if config.data_root is None and not (data_root / "ImageSets" / "Main" / "train.txt").is_file():
            logger.info("generating %d synthetic images in %s", config.num_images, data_root)
            make_synthetic_voc(
                data_root, config.num_images, image_size=config.image_size, classes=config.classes, seed=config.seed
            )
        size = config.image_size
        generator = torch.Generator().manual_seed(config.seed)
        train_set = VOCDetection(data_root, "train", size, augment=True, classes=config.classes, generator=generator)
        val_set = VOCDetection(data_root, "val", size, classes=config.classes)
        self.train_loader = DataLoader(
            train_set, batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=generator
        )
        self.val_loader = DataLoader(val_set, batch_size=config.batch_size, collate_fn=collate)
        self.anchors = self._anchors(train_set)
        self.loss_fn = YoloLoss(len(config.classes), anchors=self.anchors)
        self.example = torch.zeros(1, 3, size, size)

    def _anchors(self, train_set: VOCDetection) -> Tensor:
        # The cfg anchors are for 416-pixel inputs; small demo inputs need anchors fitted to their boxes.
        boxes = torch.cat([train_set.letterbox(i).apply(a.boxes) for i, a in enumerate(train_set.annotations)])
        wh = boxes[:, 2:] - boxes[:, :2]
        return kmeans_anchors(wh, 9, seed=self.config.seed).view(3, 3, 2)

    def new_model(self) -> YOLOv4:
        torch.manual_seed(self.config.seed)
        c = self.config
        return yolov4(len(c.classes), backbone=c.backbone, width=c.width, depth=c.depth, anchors=self.anchors)

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)

    def epochs(self, count: int, stage: str) -> Iterator[int]:
        for epoch in range(count):
            logger.info("%s: epoch %d/%d", stage, epoch + 1, count)
            yield epoch

    def result(self, stage: str, model: YOLOv4, extra: dict[str, Any]) -> StageResult:
        path = self.out / f"{stage}.pt"
        save_pruned(model, path)
        metrics = evaluate(model, self.val_loader, progress=self.progress)
        return StageResult(
            stage=stage,
            map50=float(metrics["map"]),
            params=count_params(model),
            macs=count_macs(model.eval(), self.example),
            checkpoint=str(path),
            extra=extra,
        )

    def load(self, stage: str) -> YOLOv4:
        model = self.new_model()
        load_pruned(model, self.out / f"{stage}.pt")
        return model


def _dense(run: _Run) -> tuple[YOLOv4, dict[str, Any]]:
    model = run.new_model()
    optimizer = run.optimizer(model, run.config.lr)
    epochs = run.config.dense_epochs
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=run.config.lr / 20)
    loss: dict[str, float] = {}
    for _ in run.epochs(epochs, "dense"):
        loss = train_one_epoch(model, run.train_loader, optimizer, run.loss_fn, progress=run.progress)
        schedule.step()
    return model, {"train_loss": loss.get("loss")}


def _sparse(run: _Run) -> tuple[YOLOv4, dict[str, Any]]:
    model = run.load("dense")
    graph = ChannelGraph(model, run.example)
    steps = run.config.sparse_epochs * len(run.train_loader)
    sparsity = BNSparsity(graph, schedule=Dynamic(run.config.sparsity, total_steps=steps))
    optimizer = run.optimizer(model, run.config.lr / 5)
    for _ in run.epochs(run.config.sparse_epochs, "sparse"):
        train_one_epoch(
            model, run.train_loader, optimizer, run.loss_fn, step_hooks=[lambda _: sparsity.step()],
            progress=run.progress,
        )
    stats = {name: asdict(s) for name, s in sparsity.stats().items()}
    return model, {"sparsity": stats}


def _pruned(run: _Run) -> tuple[YOLOv4, dict[str, Any]]:
    model = run.load("sparse")
    graph = ChannelGraph(model, run.example)
    pruner = GroupPruner(graph, min_channels=run.config.min_channels, round_to=run.config.round_to)
    plan = pruner.plan(target_params=run.config.target_params)
    pruner.apply(plan)
    logger.info("pruning plan:\n%s", plan.summary())
    return model, {"plan": plan.summary()}


def _recovered(run: _Run) -> tuple[YOLOv4, dict[str, Any]]:
    teacher = run.load("sparse")
    student = run.load("pruned")
    distiller = AttentionDistiller(teacher, student, student.distill_layers)
    weight = run.config.distill_weight

    def loss_fn(outputs: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        detection, parts = run.loss_fn(outputs, targets)
        attention, _ = distiller.loss()
        return detection + weight * attention, {**parts, "attention": attention.detach()}

    optimizer = run.optimizer(student, run.config.lr / 5)
    loss: dict[str, float] = {}
    for _ in run.epochs(run.config.recover_epochs, "recovered"):
        loss = train_one_epoch(
            student, run.train_loader, optimizer, loss_fn, forward_fn=distiller, progress=run.progress
        )
    distiller.remove()
    return student, {"train_loss": loss.get("loss"), "attention_loss": loss.get("attention")}


_STAGE_FUNCTIONS: dict[str, Callable[[_Run], tuple[YOLOv4, dict[str, Any]]]] = {
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

    Raises:
        ValueError: a ``results.json`` written for a different configuration (use another ``out_dir``).
    """
    out = Path(config.out_dir)
    results_path = out / "results.json"
    done: dict[str, StageResult] = {}
    if results_path.is_file():
        # Checked before any data is generated or loaded: a refused run should cost nothing.
        saved = json.loads(results_path.read_text(encoding="utf-8"))
        if saved.get("config") != json.loads(json.dumps(asdict(config))):
            raise ValueError(f"{results_path}: written for another configuration; use a new out_dir")
        # A stage counts as done only if it and every stage before it left their checkpoints (looked up in
        # out_dir, so a relative out_dir resumes from any working directory).
        for record in saved["stages"]:
            if not (out / f"{record['stage']}.pt").is_file():
                break
            done[record["stage"]] = StageResult(**record)
    run = _Run(config, progress)
    for stage in STAGES:
        if stage in done:
            logger.info("%s: done earlier (mAP %.3f), skipped", stage, done[stage].map50)
            continue
        model, extra = _STAGE_FUNCTIONS[stage](run)
        done[stage] = run.result(stage, model, extra)
        logger.info("%s: mAP@0.5 %.3f, %d params", stage, done[stage].map50, done[stage].params)
        _write_json_atomic(
            results_path, {"config": asdict(config), "stages": [asdict(done[s]) for s in STAGES if s in done]}
        )
    return [done[s] for s in STAGES]
