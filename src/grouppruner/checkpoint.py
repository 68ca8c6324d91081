"""Save and load pruned models without pickle.

A checkpoint is a ``torch.save`` file holding a flat ``dict[str, Tensor]``: the model's ``state_dict`` entries
under ``"state/<key>"`` and one ``uint8`` tensor ``"grouppruner/meta"`` with UTF-8 JSON: the format name and
version, the fingerprints of the original and the pruned architecture, and the applied
:class:`~grouppruner.plan.PruningPlan` list (the structure). Only tensors and a JSON string are stored, so the file
loads with ``torch.load(..., weights_only=True)`` and never executes code. Writes go to a temporary file in the
same directory followed by ``os.replace``, so a crash never leaves a half-written checkpoint under the final name.

``load_pruned`` takes a freshly built *original* model, rebuilds its :class:`~grouppruner.graph.ChannelGraph`,
replays the structural part of every plan (channel removal and biases added by folding) and loads the weights.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from ._utils.errors import CheckpointError
from .pruning.plan import PruningPlan, applied_plans, model_fingerprint

__all__ = ["CheckpointError", "atomic_write", "load_pruned", "read_meta", "save_pruned"]

logger = logging.getLogger(__name__)

_FORMAT = "grouppruner.pruned"
_VERSION = 1
_META = "grouppruner/meta"
_STATE = "state/"


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write a file so that ``path`` holds either its old content or the complete new one, never a partial write.

    Yields a binary file opened on a temporary file in the same directory; when the ``with`` block ends without
    an exception the file is closed, given the permissions a plain ``open`` would give (the process umask), and
    renamed over ``path`` with ``os.replace`` (atomic on one filesystem). On an exception the temporary file is
    removed and ``path`` is untouched; temporary files left by a process killed while writing ``path`` are removed
    by the next write to it.

    Args:
        path: destination file; its directory must exist.

    Example:
        >>> with atomic_write("results.json") as file:  # doctest: +SKIP
        ...     file.write(b"{}")
    """
    path = Path(path)
    # A process killed mid-write leaves its temporary file behind: the next write to the same path removes it.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pruned(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s applied pruning plans and weights to ``path`` atomically (no pickle).

    Args:
        model: a model pruned by :meth:`grouppruner.pruning.GroupPruner.apply` (an unpruned model is saved
            with an empty plan list).
        path: destination file; its directory must exist.
    """
    path = Path(path)
    plans = applied_plans(model)
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "original_fingerprint": plans[0].fingerprint if plans else model_fingerprint(model),
        "pruned_fingerprint": model_fingerprint(model),
        "plans": [plan.to_dict() for plan in plans],
    }
    blob: dict[str, torch.Tensor] = {
        _META: torch.frombuffer(bytearray(json.dumps(meta, allow_nan=False).encode()), dtype=torch.uint8),
    }
    for key, value in model.state_dict().items():
        blob[_STATE + key] = value.detach().cpu()
    with atomic_write(path) as file:
        torch.save(blob, file)
    logger.info("saved pruned model (%d plans, %d tensors) to %s", len(plans), len(blob) - 1, path)


def read_meta(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a checkpoint: its metadata (format, fingerprints, plans as dicts) and its state dict.

    Args:
        path: a file written by :func:`save_pruned`.

    Returns:
        ``(meta, state_dict)``.

    Raises:
        CheckpointError: the file is not a grouppruner checkpoint or is damaged.
        FileNotFoundError: the file does not exist.
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: cannot be read as a grouppruner checkpoint ({error})") from error
    if not isinstance(blob, dict) or not isinstance(blob.get(_META), torch.Tensor):
        raise CheckpointError(f"{path}: not a grouppruner checkpoint (no {_META!r} entry)")
    try:
        meta = json.loads(bytes(blob[_META].tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: damaged metadata ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path}: not a grouppruner checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != _VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')} is not supported ({_VERSION})")
    state = {key[len(_STATE) :]: value for key, value in blob.items() if key.startswith(_STATE)}
    return meta, state


def load_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    example_inputs: Any = None,
    strict: bool = True,
    **graph_options: Any,
) -> nn.Module:
    """Restore a pruned model saved by :func:`save_pruned` into a freshly built original ``model`` (in place).

    Args:
        model: the unpruned model, built the same way as the one that was pruned.
        path: the checkpoint.
        example_inputs: inputs to trace the channel graph with; by default zeros of the shapes recorded in the
            plan (needed when the model takes non-tensor inputs).
        strict: passed to ``load_state_dict``.
        **graph_options: keyword options for :class:`grouppruner.graph.ChannelGraph` (e.g. ``ignore=``), as
            used when the model was pruned.

    Returns:
        ``model``, now pruned, with the saved weights and the plans recorded on it.

    Raises:
        CheckpointError: not a grouppruner checkpoint, or saved for another architecture.
    """
    from .graph import ChannelGraph  # the graph (torch-pruning tracing) is only needed here
    from .pruning import apply_structure

    meta, state = read_meta(path)
    fingerprint = model_fingerprint(model)
    if fingerprint != meta["original_fingerprint"]:
        raise CheckpointError(
            f"{path}: saved for an architecture with fingerprint {meta['original_fingerprint']}, but the given "
            f"model ({type(model).__name__}) has fingerprint {fingerprint}; build the original, unpruned model "
            "with the same options"
        )
    plans = [PruningPlan.from_dict(p) for p in meta["plans"]]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for index, plan in enumerate(plans):
        inputs = example_inputs
        if inputs is None:
            if not plan.input_shapes:
                raise CheckpointError(f"{path}: plan {index} stores no input shapes; pass example_inputs=")
            shapes = plan.input_shapes
            inputs = (
                torch.zeros(shapes[0], device=device)
                if len(shapes) == 1
                else tuple(torch.zeros(s, device=device) for s in shapes)
            )
        apply_structure(ChannelGraph(model, inputs, **graph_options), plan)
    if model_fingerprint(model) != meta["pruned_fingerprint"]:
        raise CheckpointError(f"{path}: replaying the plans did not give the saved architecture")
    model.load_state_dict(state, strict=strict)
    logger.info("loaded pruned model (%d plans) from %s", len(plans), path)
    return model
