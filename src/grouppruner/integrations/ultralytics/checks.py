"""What :func:`~.flow.compress` refuses before it writes anything: the model, the data, the trainer keywords.

Each check raises one error of the project's family naming the file, the entry or the keyword; Ultralytics' own
configuration check is run on the trainer keywords, so a misspelt one is refused with its suggestions before a
stage has trained.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..._utils.errors import DataError, InvalidOptionError, OptionTypeError
from .checkpoint import load

__all__ = ["RESERVED", "as_yolo", "check_data", "check_rates", "check_trainer_keywords"]

#: Trainer keywords compress() sets itself.
RESERVED = frozenset({"project", "name", "epochs", "resume", "model", "trainer", "task", "mode"})


def check_rates(*non_negative: Mapping[str, Any], positive: Mapping[str, Any]) -> None:
    """Refuse a rate or weight that is not a number, or is negative (``non_negative``) or not above 0 (``positive``).

    Args:
        *non_negative: option name -> value, each to be a number >= 0 (an L1 rate, a distillation weight).
        positive: option name -> value, each to be a number > 0 (a temperature).

    Raises:
        InvalidOptionError: naming the option and the value.
    """
    for names, above in [*((names, False) for names in non_negative), (positive, True)]:
        for name, value in names.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not (value > 0 if above else value >= 0):
                raise InvalidOptionError(f"{name} must be a number {'>' if above else '>='} 0, got {value!r}")


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


def check_trainer_keywords(trainer_kwargs: Mapping[str, Any]) -> None:
    """Refuse trainer keywords Ultralytics would refuse (misspelt names, wrong types), before anything is written.

    Runs Ultralytics' own configuration check (``ultralytics.cfg.get_cfg``) on the keywords.

    Raises:
        InvalidOptionError: a keyword compress() sets itself, or one Ultralytics refuses; the message is
            Ultralytics' (with its suggestions for a misspelt name).
    """
    from ultralytics.cfg import get_cfg

    reserved = sorted(set(trainer_kwargs) & RESERVED)
    if reserved:
        raise InvalidOptionError(f"compress sets the trainer keywords {reserved} itself; do not pass them")
    try:
        get_cfg(overrides=dict(trainer_kwargs))
    except (SyntaxError, TypeError, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        said = " ".join(line for line in lines if "valid" in line or "must be" in line or "Similar" in line)
        raise InvalidOptionError(f"Ultralytics refuses the trainer keywords: {said or lines[0]}") from None


def as_yolo(model: Any) -> Any:
    """``model`` itself, or for the path of an Ultralytics ``.pt`` file the ``YOLO`` in it (:func:`~.checkpoint.load`).

    Raises:
        OptionTypeError: a model ``.yaml`` (an untrained model) or an exported model file (``.onnx``, ``.engine``,
            ...), naming the file and what to pass instead.
        CheckpointError: a ``.pt`` file that is not a loadable Ultralytics checkpoint.
    """
    if not isinstance(model, (str, os.PathLike)):
        return model
    path = Path(model)
    if path.suffix in (".yaml", ".yml"):
        raise OptionTypeError(
            f"{path}: a model .yaml builds an untrained model, which cannot be compressed (it is the "
            "distillation teacher); train it first and pass its weights, e.g. runs/detect/train/weights/best.pt"
        )
    if path.suffix != ".pt":
        raise OptionTypeError(
            f"{path}: an exported model file, not a PyTorch YOLO model; pass the .pt weights it was exported from"
        )
    return load(path)
