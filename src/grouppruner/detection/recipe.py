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

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .._utils.errors import CheckpointError, InvalidOptionError
from ..checkpoint import atomic_write, load_pruned, save_pruned
from ..profile import count_macs, count_params
from ..resume import Stateful, load_training_state, save_training_state
from .config import GAMMA_THRESHOLD, STAGE_OF_OPTION, STAGES, RecipeConfig, first_changed_stage, stage_fingerprint
from .darknet import DarknetModel
from .darknet.recipe import check_recipe_cfg, export_stage, recipe_loss
from .data import VOCDetection, collate
from .distributed import Distributed, RankShard
from .loss import YoloLoss, kmeans_anchors
from .models import yolov4
from .run_folder import RunLock, check_file_record, file_record, read_results, write_results
from .stages import STAGE_FUNCTIONS, Detector, load_weights, sparse_optimizer, weights_digest
from .synthetic import make_synthetic_voc
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


@dataclass
class StageResult:
    """What one stage produced.

    Attributes:
        stage: one of :data:`STAGES`.
        map50: VOC mAP@0.5 on the validation split.
        params: number of parameters.
        macs: conv + linear MACs for one ``image_size`` x ``image_size`` image.
        checkpoint: path of the stage's checkpoint (a :func:`~grouppruner.checkpoint.save_pruned` file), in
            ``out_dir``; ``results.json`` stores it relative to the run folder.
        extra: stage-specific numbers (training loss, sparsity statistics, pruning summary).
        files: ``{"path", "bytes", "sha256"}`` of every file the stage left in the run folder (its checkpoint
            first, then those registered with :meth:`RecipeRun.record_file`); checked before the stage is skipped
            as done.
    """

    stage: str
    map50: float
    params: int
    macs: int
    checkpoint: str
    extra: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)


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
        ranks: the processes of a data-parallel run (:meth:`Distributed.from_environment
            <grouppruner.detection.distributed.Distributed.from_environment>`); default one process. Every
            process trains on its shard of each batch, and the run equals a one-process run with the same
            ``batch_size`` (to float rounding); only the main process writes files and shows progress.

    Attributes:
        train_loader, val_loader: ``DataLoader`` s of the ``train`` (augmented, shuffled) and ``val`` splits.
        loss_fn: the :class:`~grouppruner.detection.YoloLoss` with anchors fitted to the training boxes.
        example: a ``(1, 3, image_size, image_size)`` zero input for graph tracing and MACs.
        device: where training and evaluation run (from ``config.device``).

    Raises:
        ValueError: ``config.device`` asks for CUDA on a machine without it, or ``amp="fp16"`` off CUDA
            (checked before any data is generated); in a data-parallel run, a batch of the train split has
            fewer images than there are processes.
        VOCDataError: an image of the train or val split cannot be decoded (every image is decoded once here,
            before any stage trains; images unchanged since an earlier run of the folder are not decoded again).
    """

    def __init__(
        self,
        config: RecipeConfig,
        progress: bool = False,
        checkpoints: Mapping[str, str | Path] | None = None,
        *,
        ranks: Distributed | None = None,
    ) -> None:
        self.config = config
        self.ranks = ranks or Distributed(device=_resolve_device(config.device))
        self.progress = progress and self.ranks.is_main
        self.device = self.ranks.device
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(f"RecipeConfig.amp='fp16' needs CUDA (device {self.device}); use amp='bf16' on a CPU")
        # A darknet cfg is checked against the classes before any data is generated.
        self.darknet = check_recipe_cfg(config.cfg, config.classes) if config.cfg else None
        if self.darknet is not None and config.distill_layers != "all":
            raise InvalidOptionError(
                f"RecipeConfig.distill_layers={config.distill_layers!r}: the darknet model of {config.cfg} exposes "
                "only its head inputs for distillation; use 'all'"
            )
        self.checkpoints = {stage: Path(path) for stage, path in (checkpoints or {}).items()}
        self.out = Path(config.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        data_root = Path(config.data_root) if config.data_root else self.out / "data"
        generate = config.data_root is None and not (data_root / "ImageSets" / "Main" / "train.txt").is_file()
        if generate and self.ranks.is_main:
            logger.info("generating %d synthetic images in %s", config.num_images, data_root)
            make_synthetic_voc(
                data_root,
                config.num_images,
                image_size=config.image_size,
                classes=config.classes,
                seed=config.seed,
                split_fractions=(1.0 - config.val_fraction, config.val_fraction, 0.0),
            )
        self.ranks.barrier()
        size = config.image_size
        self.generator = generator = torch.Generator().manual_seed(config.seed)
        train_set = VOCDetection(data_root, "train", size, augment=True, classes=config.classes, generator=generator)
        val_set = VOCDetection(data_root, "val", size, classes=config.classes)
        self.train_loader = DataLoader(
            RankShard(train_set, self.ranks) if self.ranks.active else train_set,
            batch_size=config.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=generator,
        )
        smallest = len(train_set) % config.batch_size or min(config.batch_size, len(train_set))
        if smallest < self.ranks.world_size:
            raise ValueError(
                f"a batch of the train split ({len(train_set)} images in batches of {config.batch_size}) has "
                f"{smallest} images, fewer than the {self.ranks.world_size} processes: change batch_size"
            )
        self.val_loader = DataLoader(val_set, batch_size=config.batch_size, collate_fn=collate)
        if self.ranks.is_main:
            _check_images(self.out / _IMAGES_CHECKED, (train_set, val_set))
        self.ranks.barrier()
        if self.darknet is not None:  # the cfg's anchors: the written cfg must describe what was trained
            self.anchors = self.darknet.anchors.clone()
            self.loss_fn = recipe_loss(self.darknet).to(self.device)
        else:
            self.anchors = self._weights_anchors(config.weights) if config.weights else self._anchors(train_set)
            self.loss_fn = YoloLoss(len(config.classes), anchors=self.anchors).to(self.device)
        self.example = torch.zeros(1, 3, size, size)
        self._state_files: list[Path] = []
        self._files: list[Path] = []

    def _anchors(self, train_set: VOCDetection) -> Tensor:
        # The cfg anchors are for 416-pixel inputs; small demo inputs need anchors fitted to their boxes.
        boxes = torch.cat([train_set.letterbox(i).apply(a.boxes) for i, a in enumerate(train_set.annotations)])
        wh = boxes[:, 2:] - boxes[:, :2]
        # Seeded by the data, not by config.seed: runs with other training seeds on the same data (and the same
        # dense checkpoint) must train with the anchors saved in that checkpoint.
        try:
            return kmeans_anchors(wh, 9, seed=0).view(3, 3, 2)
        except ValueError as error:
            raise InvalidOptionError(
                f"{train_set.root}: the train split's {len(wh)} boxes in {len(train_set)} images are too few to fit "
                f"the 9 anchors ({error}); use more images, or weights (a trained detector brings its anchors)"
            ) from error

    def _weights_anchors(self, weights: str) -> Tensor:
        # A trained detector keeps the anchors it was trained with; the loss must use the same.
        c = self.config
        model = yolov4(len(c.classes), backbone=c.backbone, width=c.width, depth=c.depth)
        load_weights(model, weights)
        return model.anchors.clone()

    def detection_loss(self, outputs: Sequence[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, Any]:
        """The YOLO loss of the whole batch (this process's shard gathered with the others' in a parallel run).

        Args:
            outputs: this process's three head maps ``(n, A * (5 + C), H_i, W_i)``.
            targets: its ``n`` target dicts.
        """
        loss: tuple[Tensor, Any] = self.loss_fn(self.ranks.gather_outputs(outputs), self.ranks.gather_targets(targets))
        return loss

    def new_model(self) -> Detector:
        """A freshly initialised YOLOv4 of the configured variant, or the model of ``config.cfg`` (seeded: the
        same weights every call)."""
        torch.manual_seed(self.config.seed)
        c = self.config
        if self.darknet is not None:
            return DarknetModel(self.darknet.cfg)
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
        The state records a fingerprint of the options that affect ``stage`` and the stages before it, and of
        ``epochs`` (:func:`~grouppruner.detection.config.stage_fingerprint`): a state made with other options,
        or one that cannot be read, is discarded with a warning and the stage starts from its first epoch.

        ``loss_fn`` (default :meth:`detection_loss`) gets this process's outputs and targets and must return the
        whole batch's loss (see :class:`~grouppruner.detection.distributed.Distributed`); ``forward_fn``, when
        given, must be an ``nn.Module`` holding ``model`` (e.g. an ``AttentionDistiller``) in a parallel run, so
        that it can be wrapped in DistributedDataParallel.
        """
        if schedule is None:
            lr = optimizer.param_groups[0]["lr"]
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=lr / 20)
        model.to(self.device)  # before the optimizer state is restored: it is cast to the parameters' device
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.config.amp == "fp16")
        stateful = {**(stateful or {}), "scaler": scaler}
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.amp)
        state_path = self.out / f"{_file_stem(stage)}.epoch.pt"
        fingerprint = stage_fingerprint(self.config, f"{stage} x{epochs}")
        start = 0
        if state_path.is_file():
            try:
                start = load_training_state(
                    state_path,
                    model=model,
                    optimizer=optimizer,
                    scheduler=schedule,
                    generator=self.generator,
                    extra=stateful,
                    fingerprint=fingerprint,
                )
                logger.info("%s: resuming after epoch %d/%d", stage, start, epochs)
            except CheckpointError as error:
                # load_training_state leaves every object untouched when it refuses a file
                logger.warning(
                    "%s: epoch state discarded, not resumed: %s; the stage starts from epoch 1", stage, error
                )
                if self.ranks.is_main:
                    state_path.unlink(missing_ok=True)
        self._state_files.append(state_path)
        target = model if forward_fn is None else forward_fn
        if not isinstance(target, nn.Module) and self.ranks.active:
            raise TypeError(f"{stage}: a parallel run needs forward_fn to be an nn.Module, got {type(forward_fn)}")
        loss: dict[str, float] = {}
        with self.ranks.synchronized_batchnorm(model):
            forward = self.ranks.wrap(target) if isinstance(target, nn.Module) else target
            for epoch in range(start, epochs):
                logger.info("%s: epoch %d/%d", stage, epoch + 1, epochs)
                loss = train_one_epoch(
                    model,
                    self.train_loader,
                    optimizer,
                    loss_fn or self.detection_loss,
                    forward_fn=forward,
                    step_hooks=step_hooks,
                    scaler=scaler if scaler.is_enabled() else None,
                    autocast_dtype=autocast,
                    device=self.device,
                    progress=self.progress,
                )
                schedule.step()
                if self.ranks.is_main:
                    save_training_state(
                        state_path,
                        epoch + 1,
                        model=model,
                        optimizer=optimizer,
                        scheduler=schedule,
                        generator=self.generator,
                        extra=stateful,
                        fingerprint=fingerprint,
                    )
                self.ranks.barrier()
        return loss

    def discard_epoch_states(self) -> None:
        """Remove the ``<stage>.epoch.pt`` files that :meth:`train` wrote since the stage began: once its model is
        saved, a finished stage is not resumed. :meth:`run_stage` calls it; code that drives :meth:`train` itself
        (e.g. a benchmark's baseline) calls it when its own stage is done."""
        if self.ranks.is_main:
            for path in self._state_files:
                path.unlink(missing_ok=True)
        self._state_files = []

    def record_file(self, path: str | Path) -> None:
        """Register a file the running stage wrote into the run folder (e.g. an exported model).

        Its path (relative to the run folder), size and SHA-256 go into the stage's ``files`` in ``results.json``
        (:func:`~grouppruner.detection.run_folder.file_record`); a later run skips the stage as done only if
        every registered file is still intact, and runs it again otherwise. Call it from the main process after
        the file is complete (e.g. after :func:`~grouppruner.checkpoint.atomic_write`).
        """
        self._files.append(Path(path))

    def result(self, stage: str, model: Detector, extra: dict[str, Any]) -> StageResult:
        """Save ``model`` as ``out_dir/<stage>.pt`` (a darknet model after pruning also as ``<stage>.cfg`` /
        ``<stage>.weights``, registered with :meth:`record_file`) and measure it (validation mAP@0.5, params,
        MACs)."""
        path = self.out / f"{stage}.pt"
        model.cpu()
        if self.ranks.is_main:
            save_pruned(model, path)
            if isinstance(model, DarknetModel) and stage in ("pruned", "recovered"):
                for exported in export_stage(model, path):
                    self.record_file(exported)
        self.ranks.barrier()
        files = [file_record(self.out, f) for f in (path, *self._files)] if self.ranks.is_main else []
        metrics = evaluate(model.to(self.device), self.val_loader, device=self.device, progress=self.progress)
        model.cpu()
        return StageResult(
            stage=stage,
            map50=float(metrics["map"]),
            params=count_params(model),
            macs=count_macs(model.eval(), self.example),
            checkpoint=str(path),
            extra=extra,
            files=files,
        )

    def load(self, stage: str) -> Detector:
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
        if stage not in STAGE_FUNCTIONS:
            raise KeyError(f"unknown stage {stage!r}; stages: {STAGES}")
        # Each stage draws its randomness from its own seed, so a stage gives the same result whether the
        # stages before it ran in this process or were read back from their checkpoints.
        stage_seed = self.config.seed * len(STAGES) + STAGES.index(stage)
        torch.manual_seed(stage_seed)
        self.generator.manual_seed(stage_seed)
        self._state_files = []
        self._files = []
        model, extra = STAGE_FUNCTIONS[stage](self)
        result = self.result(stage, model, extra)
        self.discard_epoch_states()
        logger.info("%s: mAP@0.5 %.3f, %d params", stage, result.map50, result.params)
        return result


#: The images :meth:`VOCDetection.check_images` found readable, with their sizes and times, in the run folder.
_IMAGES_CHECKED = ".images-checked.json"


def _check_images(cache: Path, datasets: Sequence[VOCDetection]) -> None:
    """Decode every image once before any stage trains (a damaged one found mid-stage would cost the stages
    before it); images unchanged since an earlier run of this folder are not decoded again."""
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    checked: dict[str, list[int]] = {}
    for dataset in datasets:
        checked.update(dataset.check_images(known if isinstance(known, dict) else {}))
    if checked != known:
        with atomic_write(cache) as file:
            file.write(json.dumps(checked).encode())


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


def run_recipe(config: RecipeConfig, *, progress: bool = False) -> list[StageResult]:
    """Run (or resume) the dense -> sparse -> pruned -> recovered recipe.

    Finished stages are read back from ``out_dir/results.json`` and their checkpoints are reused; a stage runs
    again when one of its files (:attr:`StageResult.files`: size and SHA-256 recorded when it was written) is
    missing, truncated or changed, with a warning. ``results.json`` is rewritten atomically after every stage, with
    paths relative to ``out_dir``: a moved or copied run folder resumes where it is.

    Args:
        config: the options; images are ``(N, 3, image_size, image_size)``.
        progress: show tqdm progress bars for training and evaluation.

    Returns:
        One :class:`StageResult` per stage, in :data:`STAGES` order.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the processes train data-parallel, each on its shard of every batch,
    and give the one-process result (:class:`~grouppruner.detection.distributed.Distributed`).

    A folder written with other options is not refused: the stages that the changed options affect (and the
    ones after them) run again, the others are kept (:data:`STAGE_OF_OPTION` says which option belongs to which
    stage; paths are compared resolved). A stage interrupted mid-way resumes at its last finished epoch
    (:meth:`RecipeRun.train`); the epoch states of a stage that runs again, and of every stage after it, are
    discarded. One run at a time: the run holds a :class:`~grouppruner.detection.run_folder.RunLock` on
    ``out_dir``.

    Raises:
        InvalidOptionError: ``out_dir`` is a file.
        DataError: its ``results.json`` is not a recipe result (the message names the file).
        UsageError: another run is using ``out_dir`` (the message names its pid).
    """
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidOptionError(f"out_dir {out} is a file; give a folder (new or of an earlier run)")
    ranks = Distributed.from_environment(_resolve_device(config.device))
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out) if ranks.is_main else nullcontext():
        # Read before any data is generated or loaded: a refused run should cost nothing.
        done, changed = _finished_stages(out, config)
        if ranks.is_main:
            _discard_stale_epoch_states(out, done, changed)
        run = RecipeRun(config, progress, ranks=ranks)
        for stage in STAGES:
            if stage in done:
                logger.info("%s: done earlier (mAP %.3f), skipped", stage, done[stage].map50)
                continue
            done[stage] = run.run_stage(stage)
            if ranks.is_main:
                write_results(out, asdict(config), [asdict(done[s]) for s in STAGES if s in done])
            ranks.barrier()
    return [done[s] for s in STAGES]


def _finished_stages(out: Path, config: RecipeConfig) -> tuple[dict[str, StageResult], str | None]:
    """The stages of ``out/results.json`` that this run keeps (made with the same options, files intact, and
    every stage before them kept too), and the first stage whose options changed."""
    if not (out / "results.json").is_file():
        return {}, None
    previous, records = read_results(out)
    changed = first_changed_stage(previous, config)
    keep = len(STAGES) if changed is None else STAGES.index(changed)
    done: dict[str, StageResult] = {}
    for record in (StageResult(**r) for r in records):
        if STAGES.index(record.stage) >= keep:
            break
        problem = _damage(out, record)
        if problem:
            logger.warning("%s: %s; running the stage again", record.stage, problem)
            break
        done[record.stage] = record
    return done, changed


def _damage(out: Path, record: StageResult) -> str | None:
    """What is wrong with the files of a finished stage, or ``None``."""
    if not record.files:  # results.json of version 1: only the checkpoint's existence can be checked
        return None if Path(record.checkpoint).is_file() else f"{record.checkpoint} is missing"
    return next((problem for f in record.files if (problem := check_file_record(out, f))), None)


def _discard_stale_epoch_states(out: Path, done: Mapping[str, StageResult], changed: str | None) -> None:
    """Remove the epoch states that must not be resumed: those of the stages after the first one to run (they
    were made from checkpoints that stage is about to replace), and that stage's own when its options changed
    (an interrupted stage with the same options resumes)."""
    first = next((s for s in STAGES if s not in done), None)
    if first is None:
        return
    stale = STAGES[STAGES.index(first) + (0 if changed == first else 1) :]
    for stage in stale:
        for path in sorted({*out.glob(f"{stage}.epoch.pt"), *out.glob(f"{stage}-*.epoch.pt")}):
            logger.info("%s: discarding %s (the stage runs again from its start)", stage, path.name)
            path.unlink()
