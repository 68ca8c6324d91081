"""``compress()``: sparse-train, prune, fine-tune and distil an Ultralytics YOLO in a resumable run folder.

Stages (:data:`STAGES`), each trained by the grouppruner subclass of the task's stock trainer
(:mod:`.trainer`) in ``out/<stage>/`` (Ultralytics' own run folder: ``weights/last.pt``, ``results.csv``) and
written as ``out/<stage>.pt`` (:func:`~grouppruner.integrations.ultralytics.save`):

1. ``dense``: the given model as it is (the teacher of the last stage), validated;
2. ``sparse``: ``sparse_epochs`` with :class:`~.callbacks.SparseTraining`;
3. ``pruned``: :func:`~.model.prune` to the budget;
4. ``finetuned``: ``finetune_epochs`` of plain fine-tuning;
5. ``recovered``: the rest with :class:`~.callbacks.Distillation` from the dense model, if a weight is given.

The run folder has the semantics of ``grouppruner compress``: ``out/results.json`` records the options and
every finished stage; a rerun skips the finished stages, reruns from the first stage whose options changed
(:data:`STAGE_OF_OPTION`), and a stage killed mid-way (``kill -9`` included) resumes at its last finished epoch
through Ultralytics' own ``resume`` (optimizer, EMA, schedule, and the sparsity schedule beside ``last.pt``).
Everything that can be refused (the model, the data, the budget, the trainer keywords) is checked before anything
is written. Every training stage uses the optimizer ``optimizer=`` names, SGD at ``lr0`` by default (recorded
with the options): with SGD the sparse stage's L1 step on gamma is exactly ``lr * s``, and the fine-tuning stages
keep the learning rate the user set instead of Ultralytics' ``optimizer="auto"`` choice.

Paths the user gives (``model``, ``data``, ``out``) mean what they mean from the working directory; the trainer
gets them absolute, because Ultralytics resolves a relative ``project`` under its own runs directory. Everything a
run writes, the validation runs included, goes under ``out/``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..._utils.errors import DataError, InvalidOptionError
from ..._utils.io import atomic_write
from ...profile import count_macs, count_params
from ...pruning import weights_digest
from ...run_folder import RunLock, check_file_record, file_record
from ._story import story
from .callbacks import Distillation, SparseTraining
from .checkpoint import load, save
from .checks import as_yolo, check_data, check_rates, check_trainer_keywords
from .deploy import resolve_split_free
from .model import check_budget, detection_model, example_input, head, prune
from .search import YoloPlanSearch
from .trainer import trainer_class

__all__ = [
    "DEFAULT_OPTIMIZER",
    "STAGES",
    "STAGE_OF_OPTION",
    "CompressResult",
    "StageRecord",
    "compress",
]

logger = logging.getLogger(__name__)

STAGES = ("dense", "sparse", "pruned", "finetuned", "recovered")

#: Which stage each option belongs to: a changed option reruns that stage and the ones after it. Trainer
#: keywords not listed (``batch``, ``lr0``, augmentation, ...) belong to ``"sparse"``, the first stage that
#: trains; ``model``, ``data`` and ``imgsz`` to ``"dense"``.
STAGE_OF_OPTION: dict[str, str] = {
    "model": "dense",
    "data": "dense",
    "imgsz": "dense",
    "sparse_epochs": "sparse",
    "sparsity": "sparse",
    "sparsity_warmup": "sparse",
    "sparsity_keep": "sparse",
    "target_params": "pruned",
    "target_macs": "pruned",
    "target_latency": "pruned",
    "min_channels": "pruned",
    "round_to": "pruned",
    "runtime": "pruned",
    "split_free": "pruned",
    "search_candidates": "pruned",
    "finetune_epochs": "finetuned",
    "recover_epochs": "recovered",
    "distill_attention": "recovered",
    "distill_output": "recovered",
    "distill_temperature": "recovered",
    "distill_off_epochs": "recovered",
    "distill_channel": "recovered",
}

#: Options added after run folders of this format were first written, with the value an older run behaved as:
#: an earlier run's record without them counts as unchanged while they keep that value.
_ADDED_OPTIONS: dict[str, Any] = {
    "distill_off_epochs": 0,
    "search_candidates": 0,
    "split_free": False,
    "distill_channel": 0.0,
}

#: Trainer keywords that change where or how verbosely a run trains, not what it computes.
_NOT_STAGE_OPTIONS = frozenset({"device", "workers", "verbose", "plots", "exist_ok"})
#: The optimizer of every training stage unless ``optimizer=`` is given (see the module docstring).
DEFAULT_OPTIMIZER = "SGD"
_FORMAT = "grouppruner.yolo_run"
# Version 1 (no "version" key): absolute checkpoint paths, no file records.
_VERSION = 2


@dataclass
class StageRecord:
    """What one stage produced.

    Attributes:
        stage: one of :data:`STAGES`.
        map50_95: box mAP50-95 on the validation split (Ultralytics' validator; rotated boxes for OBB models).
        map50: box mAP50.
        params: parameter count.
        macs: conv + linear MACs of one ``imgsz`` x ``imgsz`` image.
        checkpoint: the stage's Ultralytics checkpoint (``out/<stage>.pt``).
        extra: stage-specific numbers (mask mAP for segmentation, keypoint mAP for pose, sparsity statistics,
            the pruning ratios, the epoch a stage resumed at, the optimizer it trained with).
        files: ``{"path", "bytes", "sha256"}`` of the checkpoint, relative to the run folder, checked before the
            stage is skipped as done.
    """

    stage: str
    map50_95: float
    map50: float
    params: int
    macs: int
    checkpoint: str
    extra: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CompressResult:
    """The outcome of :func:`compress`.

    Attributes:
        model: the compressed model, an ``ultralytics.YOLO`` whose ``.train()`` keeps the pruned architecture.
        checkpoint: its file, loadable with ``YOLO(path)``.
        stages: one :class:`StageRecord` per stage, in :data:`STAGES` order.
        out: the run folder.
    """

    model: Any
    checkpoint: str
    stages: list[StageRecord]
    out: str

    def summary(self) -> str:
        """One line per stage: mAP50-95, mAP50, params and MACs (with ratios to the dense model)."""
        base = self.stages[0]
        lines = [f"{'stage':<10} {'mAP50-95':>9} {'mAP50':>7} {'params':>11} {'MACs':>15}"]
        for s in self.stages:
            lines.append(
                f"{s.stage:<10} {s.map50_95:>9.4f} {s.map50:>7.4f} {s.params:>11,} {s.macs:>15,} "
                f"(params x{s.params / base.params:.3f}, MACs x{s.macs / base.macs:.3f})"
            )
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass
class _Settings:
    """Everything a run needs besides its folder (checked values)."""

    data: str
    imgsz: int
    task: str
    budget: dict[str, Any]
    sparse_epochs: int
    sparsity: dict[str, float]
    min_channels: int
    round_to: int | None
    runtime: str | None
    split_free: bool
    search_candidates: int
    finetune_epochs: int
    recover_epochs: int
    distill: dict[str, float]
    distill_off_epochs: int
    trainer_kwargs: dict[str, Any]


class _Run:
    """One compress() run in its folder: the stages, each producing ``out/<stage>.pt`` and its record."""

    def __init__(self, model: torch.nn.Module, out: Path, options: dict[str, Any], settings: _Settings) -> None:
        self.model = model
        self.out = out
        self.options = options
        self.settings = settings
        self.trainer = trainer_class(settings.task)
        self.done = _finished_stages(out, options)
        self.resumed: dict[str, int] = {}

    def path(self, stage: str) -> Path:
        return self.out / f"{stage}.pt"

    def stage(self, name: str, produce: Any) -> None:
        """Skip stage ``name`` if an earlier run finished it intact, else run ``produce()`` and record it."""
        if name in self.done:
            logger.info("%s: done earlier (mAP50-95 %.4f), skipped", name, self.done[name].map50_95)
            return
        logger.info("%s: starting", name)
        extra: dict[str, Any] = produce()
        self.done[name] = self.record(name, extra)
        self.write_results()

    # The stages, in order.

    def dense(self) -> dict[str, Any]:
        save(self.model, self.path("dense"))
        return {}

    def sparse(self) -> dict[str, Any]:
        s = self.settings
        if s.sparse_epochs == 0:
            shutil.copyfile(self.path("dense"), self.path("sparse"))
            return {}
        regularizer = SparseTraining(s.sparsity["s"], warmup=s.sparsity["warmup"], keep=s.sparsity["keep"])
        stamp = {"sparsity": s.sparsity}
        last = self.train("dense", "sparse", s.sparse_epochs, stamp, regularizer)
        save(load(last).model, self.path("sparse"))
        return {"gamma_below_1e-2": regularizer.stats, "optimizer": s.trainer_kwargs["optimizer"]}

    def pruned(self) -> dict[str, Any]:
        s = self.settings
        model = load(self.path("sparse"))
        search = None
        if s.search_candidates:
            search = YoloPlanSearch.for_run(self.out, s.data, s.search_candidates, s.trainer_kwargs, s.sparse_epochs)
        options = {"min_channels": s.min_channels, "round_to": s.round_to, "runtime": s.runtime, **s.budget}
        options["split_free"] = s.split_free
        plan = prune(model, imgsz=s.imgsz, search=search, **options)
        save(model, self.path("pruned"))
        extra: dict[str, Any] = {"params_ratio": plan.params_ratio, "macs_ratio": plan.macs_ratio}
        return {**extra, "search": search.summary} if search else extra

    def finetuned(self) -> dict[str, Any]:
        epochs = self.settings.finetune_epochs
        if epochs == 0:
            shutil.copyfile(self.path("pruned"), self.path("finetuned"))
            return {}
        save(load(self.train("pruned", "finetuned", epochs, {}, None)).model, self.path("finetuned"))
        return {"optimizer": self.settings.trainer_kwargs["optimizer"]}

    def recovered(self) -> dict[str, Any]:
        s = self.settings
        epochs = s.recover_epochs - s.finetune_epochs
        if epochs == 0:
            shutil.copyfile(self.path("finetuned"), self.path("recovered"))
            return {}
        distill = s.distill if any(s.distill.get(k, 0) > 0 for k in ("attention", "output", "channel")) else None
        off = s.distill_off_epochs
        callback = Distillation(self.path("dense"), **distill, off_epochs=off) if distill else None  # type: ignore[arg-type]
        stamp = {"distill": distill, **({"distill_off_epochs": off} if off else {})} if distill else {}
        save(load(self.train("finetuned", "recovered", epochs, stamp, callback)).model, self.path("recovered"))
        ratio = {"gradient_ratio": callback.gradient_ratio} if callback is not None and callback.gradient_ratio else {}
        return {"optimizer": s.trainer_kwargs["optimizer"], "distilled": distill is not None, **ratio}

    # What the stages share.

    def train(self, source: str, stage: str, epochs: int, stamp: dict[str, Any], attach: Any) -> Path:
        """Train ``out/<source>.pt`` for ``epochs`` in ``out/<stage>/`` (resuming a killed run); its last weights."""
        folder = self.out / stage
        last = folder / "weights" / "last.pt"
        marker = folder / "grouppruner_stage.json"
        kwargs = self.settings.trainer_kwargs
        stamp = _jsonable({"source": source, "epochs": epochs, **stamp, **kwargs})
        same = marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == stamp
        if last.is_file() and same:
            yolo = load(last)
            state = yolo.ckpt or {}
            if state.get("optimizer") is None:  # the trainer finished (and stripped it) before the kill
                logger.info("%s: training had finished, %s is its result", stage, last)
                return last
            self.resumed[stage] = int(state["epoch"]) + 1
            logger.info("%s: resuming after epoch %d/%d", stage, self.resumed[stage], epochs)
            if attach is not None:
                attach.attach(yolo)
            runtime = {k: v for k, v in kwargs.items() if k in ("device", "batch", "workers")}
            yolo.train(trainer=self.trainer, resume=True, **runtime)
            return last
        if folder.exists():
            shutil.rmtree(folder)  # another run's, or started with other options
        folder.mkdir(parents=True)
        marker.write_text(json.dumps(stamp), encoding="utf-8")
        yolo = load(self.path(source))
        if attach is not None:
            attach.attach(yolo)
        logger.info("%s: training %d epochs in %s (optimizer %s)", stage, epochs, folder, kwargs["optimizer"])
        yolo.train(
            trainer=self.trainer,
            data=self.settings.data,
            imgsz=self.settings.imgsz,
            epochs=epochs,
            project=str(self.out),
            name=stage,
            exist_ok=True,
            **kwargs,
        )
        return last

    def record(self, stage: str, extra: dict[str, Any]) -> StageRecord:
        """Validate and measure the stage's checkpoint (the validator's folder is ``out/val/<stage>``)."""
        path = self.path(stage)
        yolo = load(path)
        model = detection_model(yolo)
        params = count_params(model)
        imgsz = self.settings.imgsz
        macs = count_macs(copy.deepcopy(model).float().cpu().eval(), example_input(model.float().cpu(), imgsz))
        val_keys = ("batch", "device", "workers", "half", "conf", "iou", "single_cls", "rect")
        val_kwargs = {k: v for k, v in self.settings.trainer_kwargs.items() if k in val_keys}
        metrics = yolo.val(
            data=self.settings.data,
            imgsz=imgsz,
            plots=False,
            verbose=False,
            project=str(self.out / "val"),
            name=stage,
            exist_ok=True,
            **val_kwargs,
        )
        extra = dict(extra)
        if hasattr(metrics, "seg"):
            extra.update(mask_map50_95=float(metrics.seg.map), mask_map50=float(metrics.seg.map50))
        if hasattr(metrics, "pose"):
            extra.update(pose_map50_95=float(metrics.pose.map), pose_map50=float(metrics.pose.map50))
        if stage in self.resumed:
            extra["resumed_at_epoch"] = self.resumed[stage]
        files = [file_record(self.out, path)]
        record = StageRecord(
            stage, float(metrics.box.map), float(metrics.box.map50), params, macs, stage + ".pt", extra, files
        )
        logger.info(
            "%s: mAP50-95 %.4f, mAP50 %.4f, %d params, %d MACs", stage, record.map50_95, record.map50, params, macs
        )
        return record

    def write_results(self) -> None:
        records = [asdict(self.done[s]) for s in STAGES if s in self.done]
        data = {"format": _FORMAT, "version": _VERSION, "options": self.options, "stages": records}
        with atomic_write(self.out / "results.json") as file:
            file.write(json.dumps(data, indent=2).encode())

    def result(self) -> CompressResult:
        stages = [StageRecord(**{**asdict(self.done[s]), "checkpoint": str(self.path(s))}) for s in STAGES]
        return CompressResult(load(self.path("recovered")), str(self.path("recovered")), stages, str(self.out))


def compress(
    model: Any,
    *,
    data: str | os.PathLike[str],
    target_params: float | None = None,
    target_macs: float | None = None,
    target_latency: float | None = None,
    sparse_epochs: int = 30,
    recover_epochs: int = 60,
    finetune_epochs: int | None = None,
    out: str | os.PathLike[str] = "runs/yolo",
    imgsz: int = 640,
    sparsity: float = 5e-3,
    sparsity_warmup: float = 0.4,
    sparsity_keep: float = 0.35,
    distill_attention: float = 0.0,
    distill_output: float = 0.0,
    distill_temperature: float = 3.0,
    distill_off_epochs: int = 0,
    distill_channel: float = 0.0,
    min_channels: int = 8,
    round_to: int | None = None,
    runtime: str | None = None,
    split_free: bool | None = None,
    search_candidates: int = 0,
    **trainer_kwargs: Any,
) -> CompressResult:
    """Sparse-train, prune, fine-tune and distil an Ultralytics YOLO with its own trainer; resumable.

    Args:
        model: the trained dense model: an ``ultralytics.YOLO`` (detect, segment, pose, obb), its module, or the
            path of its ``.pt`` weights.
        data: the data.yaml it trains on.
        target_params: the budget, the fraction of the dense model's parameters to keep (exactly one of the
            three targets).
        target_macs: the fraction of its MACs at ``imgsz`` to keep.
        target_latency: the fraction of its latency at ``imgsz`` to keep, measured in ``runtime``.
        sparse_epochs: epochs of sparse training (0: prune the dense model directly).
        recover_epochs: epochs after pruning: ``finetune_epochs`` of fine-tuning, then distillation.
        finetune_epochs: default all of ``recover_epochs`` without distillation, 0 with it (distillation from
            the start, in one trainer run: one warmup and one learning-rate decay, as fine-tuning has).
        out: the run folder (created; an earlier run's folder resumes; one run at a time).
        imgsz: the training and validation image size, also the size MACs and latency are measured at.
        sparsity: the L1 rate ``s`` of :class:`~.callbacks.SparseTraining`.
        sparsity_warmup: its Dynamic schedule's warmup fraction.
        sparsity_keep: its Dynamic schedule's kept fraction.
        distill_attention: :class:`~.callbacks.Distillation`'s attention weight. Both weights 0 (the default):
            no distillation; in ``benchmarks/ultralytics_distill.py`` no distillation beat fine-tuning on any seed.
            Weights whose gradients are a third of the stock loss's there: attention 0.1, output 0.2.
        distill_output: its output-term weight.
        distill_temperature: its temperature.
        distill_off_epochs: the last epochs of the distillation stage that train with the stock loss alone.
        distill_channel: :class:`~.callbacks.Distillation`'s channel-wise weight (each kept channel of the neck
            outputs against its teacher channel); 0 (default): off.
        min_channels: passed to :func:`~.model.prune`.
        round_to: passed to :func:`~.model.prune`.
        runtime: passed to :func:`~.model.prune`: the runtime the model ships on (default ``"onnxruntime"``).
        split_free: passed to :func:`~.model.prune`: the pruned stage (and every stage after it) is the model
            rewritten without C2f ``Split`` s, as it ships; ``None``: on with onnxruntime (recorded resolved).
        search_candidates: the pruned stage chooses its plan among this many plans of the budget by measured
            accuracy (:class:`~.search.YoloPlanSearch`: BatchNorm statistics recomputed and Ultralytics' validator
            run on a fixed sample of the data.yaml's **train** split, never the val split the stages report on;
            resumable in ``out/search``); its record (``extra["search"]``: the chosen candidate, its score, the
            solver plan's score, the cost of a candidate against a sparse-training epoch) goes into
            ``results.json``. 0 (default, until measured): the solver's plan.
        **trainer_kwargs: passed to the Ultralytics trainer as they are (``batch``, ``device``, ``workers``,
            ``amp``, ``lr0``, ``optimizer`` (default :data:`DEFAULT_OPTIMIZER` for every stage), augmentation,
            ``verbose`` (``False``: neither Ultralytics nor compress() prints its progress), ...), except those
            compress() sets itself (``epochs``, ``project``, ``name``, ``resume``).

    Returns:
        A :class:`CompressResult` (its paths absolute).

    Raises:
        OptionTypeError, UsageError: not an Ultralytics YOLO model or its .pt file, or a classification model.
        DataError: a data.yaml that does not exist or names missing folders.
        GraphError: a module the channel graph cannot map (named with its op).
        InvalidOptionError: bad budgets or epoch counts, a reserved or misspelt trainer keyword, or a budget the
            model cannot reach (the message gives the closest value).
        UsageError: another run is using ``out``.
        MissingExtraError: Ultralytics is not installed.
    """
    yolo = as_yolo(model)
    inner = detection_model(yolo)
    budgets = {"target_params": target_params, "target_macs": target_macs, "target_latency": target_latency}
    given: dict[str, Any] = {k: v for k, v in budgets.items() if v is not None}
    if len(given) != 1:
        raise InvalidOptionError(f"compress needs exactly one of {list(budgets)}, got {sorted(given) or 'none'}")
    epoch_counts = (
        ("sparse_epochs", sparse_epochs),
        ("recover_epochs", recover_epochs),
        ("distill_off_epochs", distill_off_epochs),
        ("search_candidates", search_candidates),
    )
    for name, value in epoch_counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidOptionError(f"{name} must be an int >= 0, got {value!r}")
    rates = {"sparsity": sparsity, "distill_attention": distill_attention, "distill_output": distill_output}
    # here, not when the recovered stage builds its loss after the sparse training
    check_rates(rates | {"distill_channel": distill_channel}, positive={"distill_temperature": distill_temperature})
    distill = distill_attention > 0 or distill_output > 0 or distill_channel > 0
    if finetune_epochs is None:
        finetune_epochs = 0 if distill else recover_epochs
    if not 0 <= finetune_epochs <= recover_epochs:
        raise InvalidOptionError(
            f"finetune_epochs must be in [0, recover_epochs={recover_epochs}], got {finetune_epochs}"
        )
    if distill and distill_off_epochs and distill_off_epochs >= recover_epochs - finetune_epochs:
        raise InvalidOptionError(
            f"distill_off_epochs={distill_off_epochs} leaves no distillation epoch of the "
            f"{recover_epochs - finetune_epochs} after fine-tuning; give fewer"
        )
    trainer_kwargs = {"optimizer": DEFAULT_OPTIMIZER, **trainer_kwargs}
    check_trainer_keywords(trainer_kwargs)
    data_path = check_data(data, int(head(inner).nc)).resolve()
    out_dir = Path(out).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidOptionError(f"out={out} is a file; give a folder (new or of an earlier run)")
    split = resolve_split_free(split_free, runtime)
    check_budget(
        inner, imgsz=imgsz, min_channels=min_channels, round_to=round_to, runtime=runtime, split_free=split, **given
    )

    sparse = {"s": sparsity, "warmup": sparsity_warmup, "keep": sparsity_keep}
    weights = {"attention": distill_attention, "output": distill_output, "temperature": distill_temperature}
    if distill_channel:  # absent at 0: an older run folder's stamp stays the same
        weights["channel"] = distill_channel
    task = yolo.task if hasattr(yolo, "task") else _task_of(inner)
    settings = _Settings(
        str(data_path),
        imgsz,
        task,
        given,
        sparse_epochs,
        sparse,
        min_channels,
        round_to,
        runtime,
        split,
        search_candidates,
        finetune_epochs,
        recover_epochs,
        weights,
        distill_off_epochs,
        trainer_kwargs,
    )
    options = _jsonable(
        {
            "model": weights_digest(inner),
            "data": str(data_path),
            "imgsz": imgsz,
            "sparse_epochs": sparse_epochs,
            "sparsity": sparsity,
            "sparsity_warmup": sparsity_warmup,
            "sparsity_keep": sparsity_keep,
            **budgets,
            "min_channels": min_channels,
            "round_to": round_to,
            "runtime": runtime,
            "split_free": split,
            "search_candidates": search_candidates,
            "finetune_epochs": finetune_epochs,
            "recover_epochs": recover_epochs,
            "distill_attention": distill_attention,
            "distill_output": distill_output,
            "distill_temperature": distill_temperature,
            "distill_off_epochs": distill_off_epochs,
            "distill_channel": distill_channel,
            **trainer_kwargs,
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir), story(bool(trainer_kwargs.get("verbose", True))):
        run = _Run(inner, out_dir, options, settings)
        run.stage("dense", run.dense)
        run.stage("sparse", run.sparse)
        run.stage("pruned", run.pruned)
        run.stage("finetuned", run.finetuned)
        run.stage("recovered", run.recovered)
        return run.result()


def _task_of(model: torch.nn.Module) -> str:
    from ultralytics.nn.tasks import guess_model_task

    task: str = guess_model_task(model)
    return task


def _first_changed(previous: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    keys = (set(previous) | set(options)) - _NOT_STAGE_OPTIONS
    changed = sorted(k for k in keys if previous.get(k, _ADDED_OPTIONS.get(k)) != options.get(k))
    if not changed:
        return None
    first = min((STAGE_OF_OPTION.get(k, "sparse") for k in changed), key=STAGES.index)
    logger.info("options changed since the last run (%s): rerunning from %s", ", ".join(changed), first)
    return first


def _finished_stages(out: Path, options: Mapping[str, Any]) -> dict[str, StageRecord]:
    """The stages of an earlier run that still count: before the first changed option, checkpoints intact."""
    results_path = out / "results.json"
    if not results_path.is_file():
        return {}
    try:
        saved = json.loads(results_path.read_text(encoding="utf-8"))
        version = saved.get("version", 1)
        if version not in (1, _VERSION):
            raise ValueError(f"version {version!r} is not supported (1 or {_VERSION})")
        records = [StageRecord(**record) for record in saved["stages"]]
        previous = saved["options"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise DataError(f"{results_path}: not a grouppruner yolo result ({type(error).__name__}: {error})") from error
    changed = _first_changed(previous, options)
    keep = len(STAGES) if changed is None else STAGES.index(changed)
    done: dict[str, StageRecord] = {}
    for record in records:
        if record.stage not in STAGES or STAGES.index(record.stage) >= keep:
            break
        # Version 1 kept no file records (nor relative paths): its checkpoints count if they are there.
        files = record.files if version >= 2 else []
        problems = [p for p in (check_file_record(out, f) for f in files) if p]
        if version >= 2 and not files:
            problems.append(f"{record.stage}: no file record")
        if not (out / f"{record.stage}.pt").is_file():
            problems.append(f"{out / (record.stage + '.pt')} is missing")
        if problems:
            logger.warning("%s: rerunning from this stage: %s", record.stage, "; ".join(problems))
            break
        record.checkpoint = f"{record.stage}.pt"
        done[record.stage] = record
    return done
