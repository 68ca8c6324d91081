"""The recipe on a darknet cfg: what :class:`~grouppruner.recipe.RecipeRun` and the
``grouppruner`` command call when ``RecipeConfig.cfg`` is set.

- :func:`check_recipe_cfg` parses the cfg and compares its ``[yolo] classes`` with the data's classes, before any
  data is generated or any epoch runs;
- :func:`recipe_loss` is the :class:`~grouppruner.detection.YoloLoss` of a darknet model (its anchors, strides and
  box coding, so a cfg with classic ``[yolo]`` layers is trained in darknet's own coordinates);
- :func:`export_stage` writes ``<stage>.cfg`` / ``<stage>.weights`` next to the stage's ``.pt`` checkpoint;
- :func:`load_darknet` builds a cfg's model with darknet weights or a run's ``.pt`` checkpoint (``inspect``,
  ``profile``, ``report``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .._utils.errors import InvalidOptionError
from ..checkpoint import load_pruned
from ..detection.darknet.cfg import Section, parse_cfg
from ..detection.darknet.convert import from_darknet, to_darknet
from ..detection.darknet.model import DarknetModel
from ..detection.darknet.weights import WeightsHeader, read_weights
from ..detection.loss import YoloLoss

__all__ = ["check_recipe_cfg", "export_stage", "load_darknet", "recipe_loss"]

logger = logging.getLogger(__name__)


def check_recipe_cfg(cfg: str | os.PathLike[str], classes: tuple[str, ...]) -> list[Section]:
    """The sections of a recipe's cfg, after checking that the model they describe fits the data.

    The model is built on the meta device: every check of :class:`~grouppruner.detection.darknet.DarknetModel`
    runs, no weight is allocated (a full ``yolov4.cfg`` costs nothing to check).

    Args:
        cfg: the darknet cfg.
        classes: the data's class names.

    Returns:
        The parsed cfg, to build the model from (``DarknetModel(sections)``).

    Raises:
        DataError: the cfg is not a valid darknet cfg.
        InvalidOptionError: its ``[yolo]`` layers predict another number of classes than the data has.
    """
    sections = parse_cfg(cfg)
    with torch.device("meta"):
        model = DarknetModel(sections)
    if model.num_classes != len(classes):
        yolo = model.cfg[model.head_layers[0] + 1]
        raise InvalidOptionError(
            f"{yolo.where('classes')}: the cfg's [yolo] layers predict classes={model.num_classes}, but the data has "
            f"{len(classes)} classes ({', '.join(classes)}); give a cfg for {len(classes)} classes (each head conv "
            f"then has filters={len(model.anchors[0]) * (5 + len(classes))}) or pass --classes"
        )
    return sections


def recipe_loss(model: DarknetModel) -> YoloLoss:
    """The recipe's detection loss for ``model``: its classes, anchors, strides and per-map box coding."""
    return YoloLoss(model.num_classes, anchors=model.anchors, strides=model.strides, coding=model.coding)


def export_stage(
    model: DarknetModel, checkpoint: str | os.PathLike[str], *, header: WeightsHeader | None = None
) -> tuple[Path, Path]:
    """Write a stage's model as darknet files beside its checkpoint: ``pruned.pt`` -> ``pruned.cfg`` and
    ``pruned.weights`` (darknet's BatchNorm form, so darknet can go on training it).

    Returns:
        The cfg and weights paths.
    """
    checkpoint = Path(checkpoint)
    cfg, weights = checkpoint.with_suffix(".cfg"), checkpoint.with_suffix(".weights")
    to_darknet(model, cfg, weights, header=header)
    logger.info("darknet files of %s: %s, %s", checkpoint.stem, cfg, weights)
    return cfg, weights


def load_darknet(
    cfg: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None
) -> tuple[DarknetModel, str]:
    """A cfg's model with its weights, and a one-line description of it.

    Args:
        cfg: the darknet cfg the model (or the run that pruned it) was built from.
        weights: a darknet ``.weights`` file, or a ``.pt`` stage checkpoint of a recipe run on ``cfg``
            (:func:`~grouppruner.checkpoint.save_pruned`); ``None``: PyTorch's initialisation.

    Raises:
        DataError, CheckpointError: the files do not fit each other.
    """
    model = from_darknet(cfg)
    if weights is not None:
        if Path(weights).suffix == ".pt":
            load_pruned(model, weights)
        else:
            read_weights(model, weights)
    title = f"darknet {Path(cfg).name} ({model.num_classes} classes, {len(model.layers)} layers)"
    return model, title + (f", weights {weights}" if weights is not None else "")
