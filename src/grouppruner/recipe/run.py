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
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .._utils.errors import CheckpointError, InvalidOptionError, OptionTypeError
from .._utils.io import atomic_write, load_tensor_file
from ..checkpoint import load_pruned, save_pruned
from ..detection.darknet import DarknetModel, read_header
from ..detection.data import VOCDetection, collate
from ..detection.loss import YoloLoss, kmeans_anchors
from ..detection.models import Detector, yolov4
from ..detection.synthetic import make_synthetic_voc
from ..detection.train import LossFn, StepHook, evaluate, train_one_epoch
from ..profile import count_macs, count_params
from ..resume import Stateful, TrainingState
from ..run_folder import RunLock, check_file_record, file_record, read_results, write_results
from .config import (
    STAGES,
    RecipeConfig,
    first_changed_stage,
    recorded_options,
    stage_fingerprint,
)
from .darknet import check_recipe_cfg, export_stage, recipe_loss
from .distributed import Distributed, RankShard
from .stages import STAGE_FUNCTIONS, load_weights

__all__ = ["RecipeRun", "StageResult", "run_recipe"]

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
        distributed: the processes of a data-parallel run (:meth:`Distributed.from_environment
            <grouppruner.recipe.distributed.Distributed.from_environment>`); default one process. Every
            process trains on its shard of each batch, and the run equals a one-process run with the same
            ``batch_size`` (to float rounding); only the main process writes files and shows progress.

    Building one states the run and checks the options; it reads and writes nothing. The data (generated first
    when there is none), the anchors and the loss are prepared on first use, or by :meth:`prepare`.

    Attributes:
        example: a ``(1, 3, image_size, image_size)`` zero input for graph tracing and MACs.
        device: where training and evaluation run (from ``config.device``).
        train_loader, val_loader: ``DataLoader`` s of the ``train`` (augmented, shuffled) and ``val`` splits.
        anchors: ``(3, 3, 2)`` anchors of the cfg, of the trained detector, or fitted to the training boxes.
        loss_fn: the :class:`~grouppruner.detection.YoloLoss` with those anchors.

    Raises:
        ValueError: ``config.device`` asks for CUDA on a machine without it, or ``amp="fp16"`` off CUDA.
        InvalidOptionError: the darknet cfg does not fit the classes, or ``distill_layers`` does not fit it.
    """

    def __init__(
        self,
        config: RecipeConfig,
        progress: bool = False,
        checkpoints: Mapping[str, str | Path] | None = None,
        *,
        distributed: Distributed | None = None,
    ) -> None:
        self.config = config
        self.distributed = distributed or Distributed(device=_resolve_device(config.device))
        self.progress = progress and self.distributed.is_main
        self.device = self.distributed.device
        if config.amp == "fp16" and self.device.type != "cuda":
            raise InvalidOptionError(
                f"RecipeConfig.amp='fp16' needs CUDA (device {self.device}); use amp='bf16' on a CPU"
            )
        # A darknet cfg is checked against the classes before any data is generated (on the meta device: cheap).
        self.darknet_cfg = check_recipe_cfg(config.cfg, config.classes) if config.cfg else None
        if self.darknet_cfg is not None and config.distill_layers != "all":
            raise InvalidOptionError(
                f"RecipeConfig.distill_layers={config.distill_layers!r}: the darknet model of {config.cfg} exposes "
                "only its head inputs for distillation; use 'all'"
            )
        self.checkpoints = {stage: Path(path) for stage, path in (checkpoints or {}).items()}
        self.out = Path(config.out_dir)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.example = torch.zeros(1, 3, config.image_size, config.image_size)
        self._state_files: list[Path] = []
        self._files: list[Path] = []

    def prepare(self) -> None:
        """Generate the data if there is none, decode every image once, fit the anchors and build the loss.

        Raises:
            ValueError: in a data-parallel run, a batch of the train split has fewer images than there are
                processes.
            VOCDataError: an image of the train or val split cannot be decoded (images unchanged since an earlier
                run of the folder are not decoded again).
        """
        _ = self.train_loader, self.val_loader, self.loss_fn

    @cached_property
    def _datasets(self) -> tuple[VOCDetection, VOCDetection]:
        """The train and val splits, generated first when there is no data folder; every image decoded once."""
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        data_root = Path(config.data_root) if config.data_root else self.out / "data"
        generate = config.data_root is None and not (data_root / "ImageSets" / "Main" / "train.txt").is_file()
        if generate and self.distributed.is_main:
            logger.info("generating %d synthetic images in %s", config.num_images, data_root)
            make_synthetic_voc(
                data_root,
                config.num_images,
                image_size=config.image_size,
                classes=config.classes,
                seed=config.seed,
                split_fractions=(1.0 - config.val_fraction, config.val_fraction, 0.0),
            )
        self.distributed.barrier()
        size = config.image_size
        train_set = VOCDetection(
            data_root, "train", size, augment=True, classes=config.classes, generator=self.generator
        )
        val_set = VOCDetection(data_root, "val", size, classes=config.classes)
        smallest = len(train_set) % config.batch_size or min(config.batch_size, len(train_set))
        if smallest < self.distributed.world_size:
            raise InvalidOptionError(
                f"a batch of the train split ({len(train_set)} images in batches of {config.batch_size}) has "
                f"{smallest} images, fewer than the {self.distributed.world_size} processes: change batch_size"
            )
        if self.distributed.is_main:
            _check_images(self.out / _IMAGES_CHECKED, (train_set, val_set))
        self.distributed.barrier()
        return train_set, val_set

    @cached_property
    def train_loader(self) -> DataLoader[Any]:
        """The ``train`` split, augmented and shuffled (this process's shard of each batch in a parallel run)."""
        train_set = self._datasets[0]
        return DataLoader(
            RankShard(train_set, self.distributed) if self.distributed.active else train_set,
            batch_size=self.config.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=self.generator,
        )

    @cached_property
    def plain_train_loader(self) -> DataLoader[Any]:
        """The ``train`` split without augmentation, in order (the plan search calibrates and scores on it)."""
        train = self._datasets[0]
        plain = VOCDetection(train.root, "train", self.config.image_size, classes=self.config.classes)
        return DataLoader(plain, batch_size=self.config.batch_size, collate_fn=collate)

    @cached_property
    def val_loader(self) -> DataLoader[Any]:
        """The ``val`` split, in order."""
        return DataLoader(self._datasets[1], batch_size=self.config.batch_size, collate_fn=collate)

    @cached_property
    def anchors(self) -> Tensor:
        """``(3, 3, 2)`` anchors: the cfg's, the trained detector's (``config.weights``), or fitted to the data."""
        if self.darknet_cfg is not None:  # the cfg's anchors: the written cfg must describe what was trained
            return self._darknet_reference.anchors.clone()
        if self.config.weights:
            return self._weights_anchors(self.config.weights)
        return self._anchors(self._datasets[0])

    @cached_property
    def _darknet_reference(self) -> DarknetModel:
        """The cfg's model, built once for its anchors, strides and box coding."""
        assert self.darknet_cfg is not None
        return DarknetModel(self.darknet_cfg)

    @cached_property
    def loss_fn(self) -> nn.Module:
        """The detection loss: :class:`~grouppruner.detection.YoloLoss` with the run's anchors (the cfg's loss for a
        darknet model)."""
        if self.darknet_cfg is not None:
            return recipe_loss(self._darknet_reference).to(self.device)
        return YoloLoss(len(self.config.classes), anchors=self.anchors).to(self.device)

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
        # A trained detector keeps the anchors it was trained with (a buffer in its state); the loss must use the
        # same. A file without them is read whole by load_weights, whose errors say what does not fit.
        blob = load_tensor_file(weights, what="a state_dict or a grouppruner checkpoint")
        anchors = blob.get("anchors", blob.get("state/anchors")) if isinstance(blob, dict) else None
        if isinstance(anchors, Tensor) and anchors.numel() == 18:
            return anchors.detach().float().reshape(3, 3, 2).clone()
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
        loss: tuple[Tensor, Any] = self.loss_fn(
            self.distributed.gather_outputs(outputs), self.distributed.gather_targets(targets)
        )
        return loss

    def new_model(self) -> Detector:
        """A freshly initialised YOLOv4 of the configured variant, or the model of ``config.cfg`` (seeded: the
        same weights every call)."""
        torch.manual_seed(self.config.seed)
        c = self.config
        if self.darknet_cfg is not None:
            return DarknetModel(self.darknet_cfg)
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
        ``epochs`` (:func:`~grouppruner.recipe.config.stage_fingerprint`): a state made with other options,
        or one that cannot be read, is discarded with a warning and the stage starts from its first epoch.

        ``loss_fn`` (default :meth:`detection_loss`) gets this process's outputs and targets and must return the
        whole batch's loss (see :class:`~grouppruner.recipe.distributed.Distributed`); ``forward_fn``, when
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
        state = TrainingState(
            model, optimizer, schedule, self.generator, stateful, stage_fingerprint(self.config, f"{stage} x{epochs}")
        )
        start = 0
        if state_path.is_file():
            try:
                start = state.load(state_path)
                logger.info("%s: resuming after epoch %d/%d", stage, start, epochs)
            except CheckpointError as error:
                # a refused state leaves every object untouched when it refuses a file
                logger.warning(
                    "%s: epoch state discarded, not resumed: %s; the stage starts from epoch 1", stage, error
                )
                if self.distributed.is_main:
                    state_path.unlink(missing_ok=True)
        self._state_files.append(state_path)
        target = model if forward_fn is None else forward_fn
        if not isinstance(target, nn.Module) and self.distributed.active:
            raise OptionTypeError(
                f"{stage}: a parallel run needs forward_fn to be an nn.Module, got {type(forward_fn)}"
            )
        loss: dict[str, float] = {}
        with self.distributed.synchronized_batchnorm(model):
            forward = self.distributed.wrap(target) if isinstance(target, nn.Module) else target
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
                if self.distributed.is_main:
                    state.save(state_path, epoch + 1)
                self.distributed.barrier()
        return loss

    def discard_epoch_states(self) -> None:
        """Remove the ``<stage>.epoch.pt`` files that :meth:`train` wrote since the stage began: once its model is
        saved, a finished stage is not resumed. :meth:`run_stage` calls it; code that drives :meth:`train` itself
        (e.g. a benchmark's baseline) calls it when its own stage is done."""
        if self.distributed.is_main:
            for path in self._state_files:
                path.unlink(missing_ok=True)
        self._state_files = []

    def record_file(self, path: str | Path) -> None:
        """Register a file the running stage wrote into the run folder (e.g. an exported model).

        Its path (relative to the run folder), size and SHA-256 go into the stage's ``files`` in ``results.json``
        (:func:`~grouppruner.run_folder.file_record`); a later run skips the stage as done only if
        every registered file is still intact, and runs it again otherwise. Call it from the main process after
        the file is complete (e.g. after :func:`~grouppruner.checkpoint.atomic_write`).
        """
        self._files.append(Path(path))

    def save(self, stage: str, model: Detector) -> Path:
        """Write ``model`` as ``out_dir/<stage>.pt`` (main process); a darknet model after pruning also as
        ``<stage>.cfg`` / ``<stage>.weights`` (:meth:`export_darknet`). Returns the checkpoint's path."""
        path = self.out / f"{stage}.pt"
        model.cpu()
        if self.distributed.is_main:
            save_pruned(model, path)
            if isinstance(model, DarknetModel) and stage in ("pruned", "recovered"):
                self.export_darknet(model, path)
        self.distributed.barrier()
        return path

    def export_darknet(self, model: DarknetModel, checkpoint: Path) -> None:
        """Write ``model`` as darknet files beside ``checkpoint`` and register them with :meth:`record_file`; the
        weights file keeps the header of the run's ``config.weights`` when that is a darknet ``.weights`` file."""
        weights = self.config.weights
        header = read_header(weights) if weights and Path(weights).suffix == ".weights" else None
        for exported in export_stage(model, checkpoint, header=header):
            self.record_file(exported)

    def measure(self, stage: str, model: Detector, checkpoint: Path, extra: dict[str, Any]) -> StageResult:
        """The stage's record: validation mAP@0.5, parameters, MACs, and the size and digest of its files."""
        files = [file_record(self.out, f) for f in (checkpoint, *self._files)] if self.distributed.is_main else []
        metrics = evaluate(model.to(self.device), self.val_loader, device=self.device, progress=self.progress)
        model.cpu()
        return StageResult(
            stage=stage,
            map50=float(metrics["map"]),
            params=count_params(model),
            macs=count_macs(model.eval(), self.example),
            checkpoint=str(checkpoint),
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
            raise InvalidOptionError(f"unknown stage {stage!r}; stages: {STAGES}")
        self.prepare()  # before the seeding: whichever stage runs first, the stages draw the same numbers
        # Each stage draws its randomness from its own seed, so a stage gives the same result whether the
        # stages before it ran in this process or were read back from their checkpoints.
        stage_seed = self.config.seed * len(STAGES) + STAGES.index(stage)
        torch.manual_seed(stage_seed)
        self.generator.manual_seed(stage_seed)
        self._state_files = []
        self._files = []
        model, extra = STAGE_FUNCTIONS[stage](self)
        result = self.measure(stage, model, self.save(stage, model), extra)
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
        raise InvalidOptionError(f"RecipeConfig.device={name!r}, but torch sees no CUDA device on this machine")
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
    and give the one-process result (:class:`~grouppruner.recipe.distributed.Distributed`).

    A folder written with other options is not refused: the stages that the changed options affect (and the
    ones after them) run again, the others are kept (:data:`STAGE_OF_OPTION` says which option belongs to which
    stage; paths are compared resolved). A stage interrupted mid-way resumes at its last finished epoch
    (:meth:`RecipeRun.train`); the epoch states of a stage that runs again, and of every stage after it, are
    discarded. One run at a time: the run holds a :class:`~grouppruner.run_folder.RunLock` on
    ``out_dir``.

    Raises:
        InvalidOptionError: ``out_dir`` is a file.
        DataError: its ``results.json`` is not a recipe result (the message names the file).
        UsageError: another run is using ``out_dir`` (the message names its pid).
    """
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidOptionError(f"out_dir {out} is a file; give a folder (new or of an earlier run)")
    distributed = Distributed.from_environment(_resolve_device(config.device))
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out) if distributed.is_main else nullcontext():
        # Read before any data is generated or loaded: a refused run should cost nothing.
        done, changed = _finished_stages(out, config)
        if distributed.is_main:
            _discard_stale_epoch_states(out, done, changed)
        run = RecipeRun(config, progress, distributed=distributed)
        for stage in STAGES:
            if stage in done:
                logger.info("%s: done earlier (mAP %.3f), skipped", stage, done[stage].map50)
                continue
            done[stage] = run.run_stage(stage)
            if distributed.is_main:
                write_results(out, recorded_options(config), [asdict(done[s]) for s in STAGES if s in done])
            distributed.barrier()
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
