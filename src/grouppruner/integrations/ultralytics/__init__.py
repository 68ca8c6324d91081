"""Compress an Ultralytics YOLO (v8, 11, 12, v5u, ...; detect, segment, pose, OBB) inside the stock trainer.

Extra ``grouppruner[ultralytics]``. Ultralytics is AGPL-3.0; nothing of it is copied here: it is imported on
first use, and every stage trains with its own trainer, data pipeline, loss, EMA and validation::

    from ultralytics import YOLO
    from grouppruner.integrations import ultralytics as gpu

    result = gpu.compress(YOLO("best.pt"), data="data.yaml", target_macs=0.5,
                          sparse_epochs=30, recover_epochs=60, out="runs/yolo", imgsz=640, batch=16)
    result.model.val(data="data.yaml")   # a YOLO object, pruned
    YOLO(result.checkpoint)              # reloads the pruned architecture

Modules, one idea each: :mod:`.model` (which module of a YOLO is pruned, its channel graph, :func:`prune`),
:mod:`.checkpoint` (:func:`save` / :func:`load`: Ultralytics checkpoints that keep the pruned architecture),
:mod:`.trainer` (trainer subclasses: gradient hooks after ``unscale_``, fine-tuning a pruned model instead of a
rebuilt one), :mod:`.search` (:class:`YoloPlanSearch`: the plan chosen by Ultralytics' validator on training
images), :mod:`.callbacks` (:class:`SparseTraining`, :class:`Distillation`: the stages as trainer
callbacks that survive Ultralytics' DDP launcher), :mod:`.distill` (the output-level term for the anchor-free
head), :mod:`.deploy` (:func:`split_free`: C2f blocks without a ``Split``, for onnxruntime), :mod:`.flow`
(:func:`compress`: the run folder, resume, option changes) and :mod:`.cli` (``grouppruner yolo``).

Importing this package works without Ultralytics; the first use of one of its names raises
:class:`~grouppruner.MissingExtraError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._require import require_ultralytics

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .callbacks import Distillation, SparseTraining
    from .checkpoint import is_pruned, load, save
    from .deploy import SplitFreeC2f, split_free
    from .distill import HeadDistillLoss
    from .flow import STAGES, CompressResult, StageRecord, compress
    from .model import channel_graph, detection_model, prune
    from .search import YoloPlanSearch
    from .synthetic import make_cluttered_yolo, make_synthetic_yolo
    from .trainer import DetectionTrainer, OBBTrainer, PoseTrainer, SegmentationTrainer, trainer_class

_EXPORTS = {
    "Distillation": "callbacks",
    "SparseTraining": "callbacks",
    "is_pruned": "checkpoint",
    "load": "checkpoint",
    "save": "checkpoint",
    "SplitFreeC2f": "deploy",
    "split_free": "deploy",
    "HeadDistillLoss": "distill",
    "STAGES": "flow",
    "CompressResult": "flow",
    "StageRecord": "flow",
    "compress": "flow",
    "channel_graph": "model",
    "detection_model": "model",
    "prune": "model",
    "YoloPlanSearch": "search",
    "make_cluttered_yolo": "synthetic",
    "make_synthetic_yolo": "synthetic",
    "DetectionTrainer": "trainer",
    "OBBTrainer": "trainer",
    "PoseTrainer": "trainer",
    "SegmentationTrainer": "trainer",
    "trainer_class": "trainer",
}

__all__ = [
    "STAGES",
    "CompressResult",
    "DetectionTrainer",
    "Distillation",
    "HeadDistillLoss",
    "OBBTrainer",
    "PoseTrainer",
    "SegmentationTrainer",
    "SparseTraining",
    "SplitFreeC2f",
    "StageRecord",
    "YoloPlanSearch",
    "channel_graph",
    "compress",
    "detection_model",
    "is_pruned",
    "load",
    "make_cluttered_yolo",
    "make_synthetic_yolo",
    "prune",
    "require_ultralytics",
    "save",
    "split_free",
    "trainer_class",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_ultralytics()
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return list(__all__)


assert sorted([*_EXPORTS, "require_ultralytics"]) == sorted(__all__)  # one list of names, kept in step
