"""The three-stage recipe on a darknet cfg: what :class:`~grouppruner.detection.recipe.RecipeRun` and the
``grouppruner`` command call when ``RecipeConfig.cfg`` is set.

- :func:`check_recipe_cfg` parses the cfg and compares its ``[yolo] classes`` with the data's classes, before any
  data is generated or any epoch runs;
- :func:`recipe_loss` is the :class:`~grouppruner.detection.YoloLoss` of a darknet model (its anchors, strides and
  box coding, so a cfg with classic ``[yolo]`` layers is trained in darknet's own coordinates);
- :func:`export_stage` writes ``<stage>.cfg`` / ``<stage>.weights`` next to the stage's ``.pt`` checkpoint;
- :func:`data_classes` reads the class names of a VOC-format folder;
- :func:`load_darknet` builds a cfg's model with darknet weights or a run's ``.pt`` checkpoint (``inspect``,
  ``profile``, ``report``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..._utils.errors import DataError, InvalidOptionError
from ...checkpoint import load_pruned
from ..loss import YoloLoss
from .cfg import parse_cfg
from .convert import from_darknet, to_darknet
from .model import DarknetModel
from .weights import read_weights

__all__ = ["check_recipe_cfg", "data_classes", "export_stage", "load_darknet", "recipe_loss"]

logger = logging.getLogger(__name__)


def check_recipe_cfg(cfg: str | os.PathLike[str], classes: tuple[str, ...]) -> DarknetModel:
    """The model a recipe's cfg describes (PyTorch's initialisation), after checking it fits the data.

    Args:
        cfg: the darknet cfg.
        classes: the data's class names.

    Returns:
        A freshly built :class:`~grouppruner.detection.darknet.DarknetModel`.

    Raises:
        DataError: the cfg is not a valid darknet cfg.
        InvalidOptionError: its ``[yolo]`` layers predict another number of classes than the data has.
    """
    model = DarknetModel(parse_cfg(cfg))
    if model.num_classes != len(classes):
        yolo = model.cfg[model.head_layers[0] + 1]
        raise InvalidOptionError(
            f"{yolo.where('classes')}: the cfg's [yolo] layers predict classes={model.num_classes}, but the data has "
            f"{len(classes)} classes ({', '.join(classes)}); give a cfg for {len(classes)} classes (each head conv "
            f"then has filters={len(model.anchors[0]) * (5 + len(classes))}) or pass --classes"
        )
    return model


def recipe_loss(model: DarknetModel) -> YoloLoss:
    """The recipe's detection loss for ``model``: its classes, anchors, strides and per-map box coding."""
    return YoloLoss(model.num_classes, anchors=model.anchors, strides=model.strides, coding=model.coding)


def export_stage(model: DarknetModel, checkpoint: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a stage's model as darknet files beside its checkpoint: ``pruned.pt`` -> ``pruned.cfg`` and
    ``pruned.weights`` (darknet's BatchNorm form, so darknet can go on training it).

    Returns:
        The cfg and weights paths.
    """
    checkpoint = Path(checkpoint)
    cfg, weights = checkpoint.with_suffix(".cfg"), checkpoint.with_suffix(".weights")
    to_darknet(model, cfg, weights)
    logger.info("darknet files of %s: %s, %s", checkpoint.stem, cfg, weights)
    return cfg, weights


def data_classes(root: str | os.PathLike[str], splits: tuple[str, ...] = ("train", "val")) -> tuple[str, ...]:
    """The class names in a VOC-format folder's annotations, sorted (VOC's and darknet's ``voc.names`` order).

    Args:
        root: the folder (``ImageSets/Main/<split>.txt``, ``Annotations/<id>.xml``).
        splits: the splits whose annotations are read.

    Raises:
        FileNotFoundError: no split file or an annotation is missing.
        DataError: an annotation is not readable XML, or no object is named at all.
    """
    from defusedxml import ElementTree as DefusedET

    root = Path(root)
    names: set[str] = set()
    for split in splits:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"split file not found: {split_file}")
        for line in split_file.read_text(encoding="utf-8").splitlines():
            if not line.split():
                continue
            path = root / "Annotations" / f"{line.split()[0]}.xml"
            if not path.is_file():
                raise FileNotFoundError(f"annotation file not found: {path}")
            try:
                tree = DefusedET.parse(path, forbid_dtd=True)
            except Exception as error:  # defusedxml and expat errors share no public base
                raise DataError(f"{path}: not a VOC annotation ({error})") from error
            for obj in tree.getroot().findall("object"):  # not <part><name>: VOC's person parts
                name = obj.find("name")
                if name is not None and name.text and name.text.strip():
                    names.add(name.text.strip())
    if not names:
        raise DataError(f"{root}: the annotations of {', '.join(splits)} name no object class")
    return tuple(sorted(names))


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
