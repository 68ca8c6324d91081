"""``compress()``: sparse-train, prune, fine-tune and distil an Ultralytics YOLO in a resumable run folder.

Stages (:data:`STAGES`), each trained by the grouppruner subclass of the task's stock trainer
(:mod:`.trainer`) in ``out/<stage>/`` (Ultralytics' own run folder: ``weights/last.pt``, ``results.csv``) and
written as ``out/<stage>.pt`` (:func:`~grouppruner.integrations.ultralytics.save`):

1. ``dense``: the given model as it is (the teacher of the last stage), validated;
2. ``sparse``: ``sparse_epochs`` with :class:`~.callbacks.SparseTraining` (SGD unless ``optimizer=`` is given:
   the rate is then exactly ``lr * s`` per step);
3. ``pruned``: :func:`~.model.prune` to the budget;
4. ``finetuned``: ``finetune_epochs`` of plain fine-tuning (the paper fine-tunes before distilling);
5. ``recovered``: the other ``recover_epochs - finetune_epochs`` with :class:`~.callbacks.Distillation`
   from the dense model.

The run folder has the semantics of ``grouppruner compress``: ``out/results.json`` records the options and
every finished stage; a rerun skips the finished stages, reruns from the first stage whose options changed
(:data:`STAGE_OF_OPTION`), and a stage killed mid-way (``kill -9`` included) resumes at its last finished epoch
through Ultralytics' own ``resume`` (optimizer, EMA, schedule, and the sparsity schedule beside ``last.pt``).
Everything that can be refused (the model, the data, the budget) is checked before anything is written.
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
from .callbacks import Distillation, SparseTraining
from .checkpoint import load, save
from .model import detection_model, example_input, head, prune
from .trainer import trainer_class

__all__ = ["STAGES", "STAGE_OF_OPTION", "CompressResult", "StageRecord", "check_data", "compress"]

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
    "finetune_epochs": "finetuned",
    "recover_epochs": "recovered",
    "distill_attention": "recovered",
    "distill_output": "recovered",
    "distill_temperature": "recovered",
}

#: Trainer keywords that change where or how verbosely a run trains, not what it computes.
_NOT_STAGE_OPTIONS = frozenset({"device", "workers", "verbose", "plots", "exist_ok"})
#: Trainer keywords compress() sets itself.
_RESERVED = frozenset({"project", "name", "epochs", "resume", "model", "trainer", "task", "mode"})


@dataclass
class StageRecord:
    """What one stage produced.

    Attributes:
        stage: one of :data:`STAGES`.
        map50_95: box mAP50-95 on the validation split (Ultralytics' validator).
        map50: box mAP50.
        params: parameter count.
        macs: conv + linear MACs of one ``imgsz`` x ``imgsz`` image.
        checkpoint: the stage's Ultralytics checkpoint (``out/<stage>.pt``).
        extra: stage-specific numbers (mask mAP for segmentation, sparsity statistics, the pruning ratios,
            the epoch a stage resumed at).
    """

    stage: str
    map50_95: float
    map50: float
    params: int
    macs: int
    checkpoint: str
    extra: dict[str, Any] = field(default_factory=dict)


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


def check_data(data: str | os.PathLike[str], num_classes: int | None = None) -> Path:
    """Refuse a data.yaml that does not exist or names folders that do not, before anything is written.

    Args:
        data: the data.yaml.
        num_classes: if given, the class count the model's head predicts; ``names`` must list as many.

    Raises:
        DataError: the file is missing or unreadable, its ``train`` / ``val`` entries (resolved against its
            ``path``, as Ultralytics does) do not exist, or it names another number of classes than the model
            predicts; the message names the file and the entry.
    """
    from ultralytics.utils import YAML

    path = Path(data)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise DataError(f"{path}: no such data.yaml (an Ultralytics data set description file)")
    try:
        spec = YAML.load(path)
    except Exception as error:
        raise DataError(f"{path}: not a readable YAML file ({error})") from error
    if not isinstance(spec, dict) or "train" not in spec or "val" not in spec or "names" not in spec:
        raise DataError(f"{path}: a data.yaml needs 'train', 'val' and 'names' entries")
    root = Path(spec.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root).resolve() if (path.parent / root).exists() else root.resolve()
    for split in ("train", "val"):
        entries = spec[split] if isinstance(spec[split], list) else [spec[split]]
        for entry in entries:
            where = root / str(entry)
            if not where.exists():
                raise DataError(f"{path}: the {split!r} entry {entry!r} names {where}, which does not exist")
    names = spec["names"]
    count = len(names) if isinstance(names, (list, dict)) else None
    if num_classes is not None and count != num_classes:
        raise DataError(
            f"{path}: names {count} classes, the model predicts {num_classes}; compress a model trained on this "
            "data (the dense model is the distillation teacher)"
        )
    return path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _first_changed(previous: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    keys = (set(previous) | set(options)) - _NOT_STAGE_OPTIONS
    changed = sorted(k for k in keys if previous.get(k) != options.get(k))
    if not changed:
        return None
    first = min((STAGE_OF_OPTION.get(k, "sparse") for k in changed), key=STAGES.index)
    logger.info("options changed since the last run (%s): rerunning from %s", ", ".join(changed), first)
    return first


class _Run:
    """One compress() run: the folder, the trainer keywords, and how each stage trains and is measured."""

    def __init__(self, out: Path, data: str, imgsz: int, task: str, trainer_kwargs: dict[str, Any]) -> None:
        self.out = out
        self.data = data
        self.imgsz = imgsz
        self.trainer = trainer_class(task)
        self.trainer_kwargs = trainer_kwargs
        self.resumed: dict[str, int] = {}

    def path(self, stage: str) -> Path:
        return self.out / f"{stage}.pt"

    def train(self, source: Path, stage: str, epochs: int, stage_options: dict[str, Any], attach: Any = None) -> Path:
        """Train ``source`` for ``epochs`` in ``out/<stage>/`` (resuming a killed run); its last weights file."""
        folder = self.out / stage
        last = folder / "weights" / "last.pt"
        marker = folder / "grouppruner_stage.json"
        stamp = _jsonable({"source": str(source), "epochs": epochs, **stage_options, **self.trainer_kwargs})
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
            yolo.train(trainer=self.trainer, resume=True, **self._runtime())
            return last
        if folder.exists():
            shutil.rmtree(folder)  # another run's, or started with other options
        folder.mkdir(parents=True)
        marker.write_text(json.dumps(stamp), encoding="utf-8")
        yolo = load(source)
        if attach is not None:
            attach.attach(yolo)
        kwargs = {**self.trainer_kwargs, **stage_options.get("trainer", {})}
        yolo.train(
            trainer=self.trainer,
            data=self.data,
            imgsz=self.imgsz,
            epochs=epochs,
            project=str(self.out),
            name=stage,
            exist_ok=True,
            **kwargs,
        )
        return last

    def _runtime(self) -> dict[str, Any]:
        return {k: v for k, v in self.trainer_kwargs.items() if k in ("device", "batch", "workers")}

    def record(self, stage: str, path: Path, extra: dict[str, Any]) -> StageRecord:
        """Validate and measure the stage's checkpoint."""
        yolo = load(path)
        model = detection_model(yolo)
        params = count_params(model)
        macs = count_macs(copy.deepcopy(model).float().cpu().eval(), example_input(model.float().cpu(), self.imgsz))
        val_keys = ("batch", "device", "workers", "half", "conf", "iou", "single_cls", "rect")
        val_kwargs = {k: v for k, v in self.trainer_kwargs.items() if k in val_keys}
        metrics = yolo.val(data=self.data, imgsz=self.imgsz, plots=False, verbose=False, **val_kwargs)
        extra = dict(extra)
        if hasattr(metrics, "seg"):
            extra.update(mask_map50_95=float(metrics.seg.map), mask_map50=float(metrics.seg.map50))
        if stage in self.resumed:
            extra["resumed_at_epoch"] = self.resumed[stage]
        record = StageRecord(
            stage, float(metrics.box.map), float(metrics.box.map50), params, macs, str(path), extra
        )
        logger.info("%s: mAP50-95 %.4f, mAP50 %.4f, %d params", stage, record.map50_95, record.map50, params)
        return record


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
    distill_attention: float = 1.0,
    distill_output: float = 1.0,
    distill_temperature: float = 3.0,
    min_channels: int = 8,
    round_to: int | None = None,
    runtime: str | None = None,
    **trainer_kwargs: Any,
) -> CompressResult:
    """Sparse-train, prune, fine-tune and distil an Ultralytics YOLO with its own trainer; resumable.

    Args:
        model: an ``ultralytics.YOLO`` (detect, segment or pose) or its module: the trained dense model.
        data: the data.yaml it trains on.
        target_params: the budget, the fraction of the dense model's parameters to keep (exactly one of the
            three targets).
        target_macs: the fraction of its MACs at ``imgsz`` to keep.
        target_latency: the fraction of its latency at ``imgsz`` to keep, measured in ``runtime``.
        sparse_epochs: epochs of sparse training (0: prune the dense model directly).
        recover_epochs: epochs after pruning: ``finetune_epochs`` of fine-tuning, then distillation.
        finetune_epochs: default half of ``recover_epochs`` (all of them when both distillation weights are 0).
        out: the run folder (created; an earlier run's folder resumes).
        imgsz: the training and validation image size, also the size MACs and latency are measured at.
        sparsity: the L1 rate ``s`` of :class:`~.callbacks.SparseTraining`.
        sparsity_warmup: its Dynamic schedule's warmup fraction.
        sparsity_keep: its Dynamic schedule's kept fraction.
        distill_attention: :class:`~.callbacks.Distillation`'s attention weight (both weights 0: no distillation).
        distill_output: its output-term weight.
        distill_temperature: its temperature.
        min_channels: passed to :func:`~.model.prune`.
        round_to: passed to :func:`~.model.prune`.
        runtime: passed to :func:`~.model.prune`: the runtime the model ships on (default ``"onnxruntime"``).
        **trainer_kwargs: passed to the Ultralytics trainer as they are (``batch``, ``device``, ``workers``,
            ``amp``, ``lr0``, ``optimizer``, augmentation, ...), except those compress() sets itself
            (``epochs``, ``project``, ``name``, ``resume``).

    Returns:
        A :class:`CompressResult`.

    Raises:
        OptionTypeError, UsageError: not an Ultralytics YOLO model, or a classification model.
        DataError: a data.yaml that does not exist or names missing folders.
        GraphError: a module the channel graph cannot map (named with its op).
        InvalidOptionError: bad budgets or epoch counts, a reserved trainer keyword, or a budget the model
            cannot reach (the message gives the closest value).
        MissingExtraError: Ultralytics is not installed.
    """
    from ultralytics import YOLO

    inner = detection_model(model)
    yolo = model if isinstance(model, YOLO) else None
    budgets = {"target_params": target_params, "target_macs": target_macs, "target_latency": target_latency}
    given: dict[str, Any] = {k: v for k, v in budgets.items() if v is not None}
    if len(given) != 1:
        raise InvalidOptionError(f"compress needs exactly one of {list(budgets)}, got {sorted(given) or 'none'}")
    for name, value in (("sparse_epochs", sparse_epochs), ("recover_epochs", recover_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidOptionError(f"{name} must be an int >= 0, got {value!r}")
    distill = distill_attention > 0 or distill_output > 0
    if finetune_epochs is None:
        finetune_epochs = recover_epochs // 2 if distill else recover_epochs
    if not 0 <= finetune_epochs <= recover_epochs:
        raise InvalidOptionError(
            f"finetune_epochs must be in [0, recover_epochs={recover_epochs}], got {finetune_epochs}"
        )
    reserved = sorted(set(trainer_kwargs) & _RESERVED)
    if reserved:
        raise InvalidOptionError(f"compress sets the trainer keywords {reserved} itself; do not pass them")
    data_path = check_data(data, int(head(inner).nc))
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidOptionError(f"out={out_dir} is a file; give a folder (new or of an earlier run)")
    # A dry run on a copy: the graph maps the model and the budget is reachable, or nothing is written.
    try:
        prune(copy.deepcopy(inner), imgsz=imgsz, min_channels=min_channels, round_to=round_to, runtime=runtime, **given)
    except ValueError as error:
        if type(error) is ValueError:
            raise InvalidOptionError(f"{type(inner).__name__}: {error}") from error
        raise

    options = _jsonable(
        {
            "model": weights_digest(inner),
            "data": str(data_path.resolve()),
            "imgsz": imgsz,
            "sparse_epochs": sparse_epochs,
            "sparsity": sparsity,
            "sparsity_warmup": sparsity_warmup,
            "sparsity_keep": sparsity_keep,
            **budgets,
            "min_channels": min_channels,
            "round_to": round_to,
            "runtime": runtime,
            "finetune_epochs": finetune_epochs,
            "recover_epochs": recover_epochs,
            "distill_attention": distill_attention,
            "distill_output": distill_output,
            "distill_temperature": distill_temperature,
            **trainer_kwargs,
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    done = _finished_stages(results_path, options, out_dir)
    run = _Run(out_dir, str(data_path), imgsz, yolo.task if yolo is not None else _task_of(inner), trainer_kwargs)
    sparse_options: dict[str, Any] = {"sparsity": sparsity, "warmup": sparsity_warmup, "keep": sparsity_keep}
    if "optimizer" not in trainer_kwargs:
        sparse_options["trainer"] = {"optimizer": "SGD"}  # the L1 step is lr * s only under plain SGD

    for stage in STAGES:
        if stage in done:
            logger.info("%s: done earlier (mAP50-95 %.4f), skipped", stage, done[stage].map50_95)
            continue
        extra: dict[str, Any] = {}
        target = run.path(stage)
        if stage == "dense":
            save(inner, target)
        elif stage == "sparse":
            if sparse_epochs == 0:
                shutil.copyfile(run.path("dense"), target)
            else:
                sparse = SparseTraining(sparsity, warmup=sparsity_warmup, keep=sparsity_keep)
                last = run.train(run.path("dense"), stage, sparse_epochs, sparse_options, sparse)
                save(load(last).model, target)
                extra["gamma_below_1e-2"] = sparse.stats
        elif stage == "pruned":
            pruned = load(run.path("sparse"))
            plan = prune(pruned, imgsz=imgsz, min_channels=min_channels, round_to=round_to, runtime=runtime, **given)
            save(pruned, target)
            extra.update(params_ratio=plan.params_ratio, macs_ratio=plan.macs_ratio)
        else:
            source = run.path("pruned" if stage == "finetuned" else "finetuned")
            epochs = finetune_epochs if stage == "finetuned" else recover_epochs - finetune_epochs
            callback: Distillation | None = None
            if stage == "recovered" and distill:
                callback = Distillation(
                    run.path("dense"),
                    attention=distill_attention,
                    output=distill_output,
                    temperature=distill_temperature,
                )
            if epochs == 0:
                shutil.copyfile(source, target)
            else:
                stage_options = {"distill": [distill_attention, distill_output, distill_temperature]}
                last = run.train(source, stage, epochs, stage_options if callback else {}, callback)
                save(load(last).model, target)
        done[stage] = run.record(stage, target, extra)
        with atomic_write(results_path) as file:
            records = [asdict(done[s]) for s in STAGES if s in done]
            file.write(json.dumps({"options": options, "stages": records}, indent=2).encode())
    final = run.path("recovered")
    return CompressResult(load(final), str(final), [done[s] for s in STAGES], str(out_dir))


def _task_of(model: torch.nn.Module) -> str:
    from ultralytics.nn.tasks import guess_model_task

    task: str = guess_model_task(model)
    return task


def _finished_stages(results_path: Path, options: Mapping[str, Any], out: Path) -> dict[str, StageRecord]:
    """The stages of an earlier run that still count: before the first changed option, checkpoints present."""
    if not results_path.is_file():
        return {}
    try:
        saved = json.loads(results_path.read_text(encoding="utf-8"))
        records = [StageRecord(**record) for record in saved["stages"]]
        previous = saved["options"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{results_path}: not a grouppruner yolo result ({type(error).__name__}: {error})") from error
    changed = _first_changed(previous, options)
    keep = len(STAGES) if changed is None else STAGES.index(changed)
    done: dict[str, StageRecord] = {}
    for record in records:
        kept = record.stage in STAGES and STAGES.index(record.stage) < keep
        if not kept or not (out / f"{record.stage}.pt").is_file():
            break
        done[record.stage] = record
    return done
