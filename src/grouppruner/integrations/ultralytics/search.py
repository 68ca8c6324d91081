"""Plans chosen by measured accuracy for an Ultralytics YOLO: :class:`~grouppruner.pruning.PlanSearch` scored by
Ultralytics' own validator on images of the **train** split.

:class:`YoloPlanSearch` is what ``prune(search=...)`` and ``compress(search_candidates=N)`` use. From the
data.yaml's train split (the images Ultralytics' dataset keeps, in its order) it draws a fixed sample with the
seed: up to :data:`SCORED_IMAGES` to score on and up to :data:`CALIBRATION_IMAGES` others (the same ones again when
the split is smaller) to recompute each candidate's BatchNorm statistics on, letterboxed to ``imgsz`` by
Ultralytics' dataloader without augmentation. Every candidate is scored by the task's validator on the scored
images with the validator's ``fitness``: box mAP50-95 for detection and OBB, box plus mask (keypoint) mAP50-95 for
segmentation (pose), the number Ultralytics keeps ``best.pt`` by. The **val** split is never read: it stays the
split the results are reported on, out of the choice.

The folder holds:

- ``data/``: the sample, copied (``images/score``, ``images/calibrate``, their labels and a ``data.yaml``), so that
  Ultralytics' label cache of the sample is written there and never over the train split's;
- ``scoring.json``: what the scores depend on (the sampled files, seed, image size, batch); when it changes the
  folder starts over;
- ``search.json``: the :class:`~grouppruner.pruning.PlanSearch` state, written after every candidate: a run killed
  mid-search continues where it stopped and chooses the same plan; a state from other weights or other search
  settings is started over (logged);
- ``val/``: the validator's folder.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..._utils.errors import DataError, InvalidOptionError
from ..._utils.io import atomic_write
from ...pruning import GroupPruner, PlanSearch, PruningPlan, SearchResult

__all__ = ["CALIBRATION_IMAGES", "SCORED_IMAGES", "YoloPlanSearch", "epoch_seconds"]

logger = logging.getLogger(__name__)

#: Training images each candidate is scored on (all of them when the split is smaller).
SCORED_IMAGES = 256
#: Training images each candidate's BatchNorm statistics are recomputed on, in batches of 16.
CALIBRATION_IMAGES = 128
_CALIBRATION_BATCH = 16
_STATE = "search.json"
_SCORING = "scoring.json"
# Entries of the user's data.yaml that name its splits (or fetch them): the sample's yaml names its own.
_SPLIT_KEYS = ("path", "train", "val", "test", "minival", "download")


class YoloPlanSearch:
    """Chooses the plan of :func:`~grouppruner.integrations.ultralytics.prune` among ``candidates`` plans of the
    same budget by Ultralytics' validator on training images (see the module doc).

    Example::

        search = gpu.YoloPlanSearch("data.yaml", candidates=8, folder="runs/search", batch=16, device=0)
        plan = gpu.prune(yolo, target_macs=0.5, imgsz=640, search=search)
        search.summary["chosen"], search.summary["score"], search.summary["solver_score"]

    Args:
        data: the data.yaml the model trains on; only its train split is read.
        candidates: plans scored in all (the solver's and the uniform one included), >= 1.
        folder: where the sample, the resumable state and the validator's output go (created).
        batch: the validator's batch size.
        device: the Ultralytics device candidates are calibrated and validated on (``None``: Ultralytics' choice).
        workers: the validator's data loader workers (``None``: Ultralytics' default).
        seed: the seed of the sample and of the candidates.
        scored_images: training images scored on, >= 1.
        calibration_images: training images the BatchNorm statistics are recomputed on, >= 1.
        epoch_seconds: seconds one training epoch of the same run takes, if known: the summary states the cost of
            a candidate relative to it.

    Attributes:
        result: the :class:`~grouppruner.pruning.SearchResult` of the last :meth:`choose` (``None`` before).
        summary: what it measured, as plain JSON data (``None`` before): ``chosen`` (index), ``kind``, ``score``,
            ``solver_score``, ``scores`` (``"index:kind"`` -> score, ``None`` for a candidate no plan met),
            ``widths`` (the chosen plan's channels per layer group), the sample sizes, and the cost: ``seconds``
            (all candidates, a resumed run's earlier ones included), ``setup_seconds`` (sampling, loading the
            calibration batches), ``seconds_per_candidate`` (the mean of the scored ones), ``epoch_seconds`` and
            ``candidate_per_epoch`` (their ratio; ``None`` without ``epoch_seconds``).

    Raises:
        InvalidOptionError: a bad value, naming the option.
    """

    def __init__(
        self,
        data: str | os.PathLike[str],
        *,
        candidates: int,
        folder: str | os.PathLike[str],
        batch: int = 16,
        device: Any = None,
        workers: int | None = None,
        seed: int = 0,
        scored_images: int = SCORED_IMAGES,
        calibration_images: int = CALIBRATION_IMAGES,
        epoch_seconds: float | None = None,
    ) -> None:
        for name, value in (
            ("candidates", candidates),
            ("batch", batch),
            ("scored_images", scored_images),
            ("calibration_images", calibration_images),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"YoloPlanSearch: {name} must be an int >= 1, got {value!r}")
        if epoch_seconds is not None and not epoch_seconds > 0:
            raise InvalidOptionError(f"YoloPlanSearch: epoch_seconds must be None or > 0, got {epoch_seconds!r}")
        self.data = Path(data).resolve()
        self.candidates = candidates
        self.folder = Path(folder).resolve()
        self.batch = batch
        self.device = device
        self.workers = workers
        self.seed = int(seed)
        self.scored_images = scored_images
        self.calibration_images = calibration_images
        self.epoch_seconds = epoch_seconds
        self.result: SearchResult | None = None
        self.summary: dict[str, Any] | None = None

    @classmethod
    def for_run(
        cls, out: Path, data: str, candidates: int, trainer_kwargs: Mapping[str, Any], sparse_epochs: int
    ) -> YoloPlanSearch:
        """The plan search of a :func:`~grouppruner.integrations.ultralytics.compress` run folder ``out``: in
        ``out/search``, with the trainer keywords' batch, device, workers and seed, its cost stated against an
        epoch of ``out/sparse`` (when ``sparse_epochs`` trained there)."""
        batch = trainer_kwargs.get("batch")
        return cls(
            data,
            candidates=candidates,
            folder=out / "search",
            batch=batch if isinstance(batch, int) and batch > 0 else 16,  # not AutoBatch's -1 or a memory fraction
            device=trainer_kwargs.get("device"),
            workers=trainer_kwargs.get("workers"),
            seed=int(trainer_kwargs.get("seed", 0)),
            epoch_seconds=epoch_seconds(out / "sparse" / "results.csv") if sparse_epochs else None,
        )

    def choose(
        self, pruner: GroupPruner, budget: Mapping[str, float], *, imgsz: int, prepare: Callable[[nn.Module], None]
    ) -> PruningPlan:
        """Score the candidates (resuming from ``folder/search.json``) and return the best plan.

        Args:
            pruner: the pruner of the YOLO's ``DetectionModel`` (its model is not changed).
            budget: one ``target_*`` -> fraction, as for :class:`~grouppruner.pruning.PlanSearch`.
            imgsz: the image side the model is validated and calibrated at.
            prepare: called on each pruned copy before it runs (``prune`` passes the C2f width update).

        Raises:
            InvalidOptionError: no candidate met the budget.
            DataError: the train split holds no image Ultralytics can read.
        """
        from ultralytics.nn.tasks import guess_model_task
        from ultralytics.utils.torch_utils import select_device

        start = time.perf_counter()
        task = guess_model_task(pruner.model)
        stride = int(max(getattr(pruner.model, "stride", torch.tensor([32.0])).tolist()))
        self.folder.mkdir(parents=True, exist_ok=True)
        sample, scored = self._sample(task, imgsz, stride)
        calibration = _calibration_batches(sample, task, imgsz, stride)
        device = select_device(self.device, verbose=False)
        validator_class = _validator_class(task)
        args = {
            "task": task,
            "mode": "val",
            "data": str(sample),
            "imgsz": imgsz,
            "batch": self.batch,
            "device": self.device,
            "rect": True,
            "plots": False,
            "verbose": False,
            "save_json": False,
            **({} if self.workers is None else {"workers": self.workers}),
        }
        loader: list[Any] = [None]  # the validator's loader, built by the first candidate, reused by the others

        def forward(model: nn.Module, batch: torch.Tensor) -> Any:
            model.to(device)  # the copy is made on the CPU, where the graph was traced
            prepare(model)
            return model(batch.to(device).float() / 255)

        def evaluate(model: nn.Module) -> float:
            prepare(model)
            validator = validator_class(dataloader=loader[0], save_dir=self.folder / "val", args=args)
            # On a copy: the validator fuses BatchNorms into the convs, and the search still measures the candidate.
            validator(model=copy.deepcopy(model))
            loader[0] = validator.dataloader
            return float(validator.metrics.fitness)

        search = PlanSearch(
            pruner,
            **budget,  # type: ignore[arg-type]
            evaluate=evaluate,
            calibration=calibration,
            calibration_batches=len(calibration),
            candidates=self.candidates,
            seed=self.seed,
            forward_fn=forward,
            state_path=self.folder / _STATE,
        )
        self._drop_stale_state(search)
        setup = time.perf_counter() - start
        result = search.run()
        self.result = result
        self.summary = self._summarise(result, setup, scored, len(calibration))
        s = self.summary
        logger.info(
            "plan search: candidate %d (%s) chosen, fitness %.4f on %d training images; the solver's plan %s; "
            "%.1f s a candidate (%s), %.1f s in all",
            s["chosen"],
            s["kind"],
            s["score"],
            s["scored_images"],
            "not scored" if s["solver_score"] is None else f"{s['solver_score']:.4f}",
            s["seconds_per_candidate"],
            "no training epoch measured"
            if s["candidate_per_epoch"] is None
            else f"{s['candidate_per_epoch']:.3f} of a training epoch of {s['epoch_seconds']:.1f} s",
            s["seconds"] + setup,
        )
        return result.plan

    # ------------------------------------------------------------------ the sample

    def _sample(self, task: str, imgsz: int, stride: int) -> tuple[Path, int]:
        """Copy the sample of the train split into ``folder/data`` (unless it is there): the sample's data.yaml and
        the number of images scored on."""
        import yaml
        from ultralytics.data.utils import check_det_dataset
        from ultralytics.utils import YAML

        spec = check_det_dataset(str(self.data))
        train = _dataset(spec, "train", task, imgsz, stride)
        files = list(train.im_files)
        order = [int(i) for i in np.random.default_rng(self.seed).permutation(len(files))]
        scored = order[: self.scored_images]
        calibrated = (order[len(scored) :] or order)[: self.calibration_images]
        picks = {"score": [files[i] for i in scored], "calibrate": [files[i] for i in calibrated]}
        scoring = {
            "data": str(self.data),
            "task": task,
            "imgsz": imgsz,
            "batch": self.batch,
            "seed": self.seed,
            **picks,
        }
        root = self.folder / "data"
        yaml_path = root / "data.yaml"
        record = self.folder / _SCORING
        if record.is_file() and yaml_path.is_file() and json.loads(record.read_text(encoding="utf-8")) == scoring:
            return yaml_path, len(scored)
        if record.is_file():
            logger.info("plan search: %s scored another sample or image size; starting over", self.folder)
        for stale in (root, self.folder / "val"):
            shutil.rmtree(stale, ignore_errors=True)
        (self.folder / _STATE).unlink(missing_ok=True)
        labels = dict(zip(train.im_files, train.label_files, strict=True))
        for split, picked in picks.items():
            (root / "images" / split).mkdir(parents=True)
            (root / "labels" / split).mkdir(parents=True)
            for k, image in enumerate(picked):
                name = f"{k:05d}_{Path(image).stem}"  # unique although images of several folders share names
                shutil.copyfile(image, root / "images" / split / (name + Path(image).suffix))
                if Path(labels[image]).is_file():
                    shutil.copyfile(labels[image], root / "labels" / split / (name + ".txt"))
        raw = {k: v for k, v in YAML.load(self.data).items() if k not in _SPLIT_KEYS}
        with atomic_write(yaml_path) as handle:
            entries = {"path": str(root), "train": "images/calibrate", "val": "images/score", **raw}
            handle.write(yaml.safe_dump(entries, sort_keys=False, allow_unicode=True).encode())
        with atomic_write(record) as handle:
            handle.write(json.dumps(scoring, indent=1).encode())
        logger.info(
            "plan search: %d training images to score on, %d to recompute BatchNorm statistics on, copied to %s",
            len(scored),
            len(calibrated),
            root,
        )
        return yaml_path, len(scored)

    def _drop_stale_state(self, search: PlanSearch) -> None:
        state = self.folder / _STATE
        if not state.is_file():
            return
        try:
            search.load_state_dict(json.loads(state.read_text(encoding="utf-8")))
        except (InvalidOptionError, ValueError, KeyError, TypeError) as error:
            logger.info("plan search: %s cannot be resumed (%s); starting the search over", state, error)
            state.unlink()
        search.records = []  # run() reads the file again

    def _summarise(self, result: SearchResult, setup: float, scored: int, calibration_batches: int) -> dict[str, Any]:
        # A candidate no plan meets costs only its planning: the cost of one is that of a scored one.
        scored_records = [r for r in result.records if r.score is not None]
        per = sum(r.total_seconds for r in scored_records) / len(scored_records)
        solver = next((r.score for r in result.records if r.kind == "solver"), None)
        return {
            "candidates": len(result.records),
            "chosen": result.best.index,
            "kind": result.best.kind,
            "score": result.best.score,
            "solver_score": solver,
            "scores": {f"{r.index}:{r.kind}": r.score for r in result.records},
            "widths": result.best.widths,
            "metric": "validator fitness on training images",
            "scored_images": scored,
            "calibration_batches": calibration_batches,
            "seconds": result.seconds,
            "setup_seconds": setup,
            "seconds_per_candidate": per,
            "epoch_seconds": self.epoch_seconds,
            "candidate_per_epoch": per / self.epoch_seconds if self.epoch_seconds else None,
        }


def _validator_class(task: str) -> Any:
    from ultralytics.models.yolo import detect, obb, pose, segment

    validators = {
        "detect": detect.DetectionValidator,
        "segment": segment.SegmentationValidator,
        "pose": pose.PoseValidator,
        "obb": obb.OBBValidator,
    }
    return validators[task]


def _dataset(spec: dict[str, Any], split: str, task: str, imgsz: int, stride: int) -> Any:
    """Ultralytics' dataset of a split, as its validator builds one (letterboxed, no augmentation)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset

    cfg = get_cfg(overrides={"task": task, "imgsz": imgsz})
    dataset = build_yolo_dataset(cfg, spec[split], _CALIBRATION_BATCH, spec, mode="val", stride=stride)
    if len(dataset) == 0:
        raise DataError(f"{spec.get('yaml_file')}: the {split!r} split holds no image Ultralytics can read")
    return dataset


def _calibration_batches(sample: Path, task: str, imgsz: int, stride: int) -> list[torch.Tensor]:
    """The sample's calibration images as uint8 ``(N, 3, imgsz, imgsz)`` batches (square: one shape for all)."""
    from ultralytics.data.utils import check_det_dataset

    dataset = _dataset(check_det_dataset(str(sample)), "train", task, imgsz, stride)
    loader = DataLoader(dataset, batch_size=_CALIBRATION_BATCH, shuffle=False, collate_fn=dataset.collate_fn)
    return [batch["img"] for batch in loader]


def epoch_seconds(results_csv: str | os.PathLike[str]) -> float | None:
    """The median seconds one epoch took in an Ultralytics run folder's ``results.csv`` (its ``time`` column:
    seconds since training started, restarting when a run resumed); ``None`` without the file or the column."""
    path = Path(results_csv)
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [{k.strip(): v for k, v in row.items() if k} for row in csv.DictReader(handle)]
    times = [float(row["time"]) for row in rows if row.get("time", "").strip()]
    if not times:
        return None
    epochs = [t - before if t >= before else t for before, t in zip([0.0, *times], times, strict=False)]
    return float(statistics.median(epochs))
