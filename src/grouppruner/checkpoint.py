"""Save and load pruned models without pickle.

A checkpoint is a ``torch.save`` file holding a flat ``dict[str, Tensor]``: the model's ``state_dict`` entries
under ``"state/<key>"`` and one ``uint8`` tensor ``"grouppruner/meta"`` with UTF-8 JSON: the format name and
version, the fingerprints of the original and the pruned architecture, and the applied
:class:`~grouppruner.pruning.PruningPlan` list (the structure). Only tensors and a JSON string are stored, so the file
loads with ``torch.load(..., weights_only=True)`` and never executes code. Writes go to a temporary file in the
same directory followed by ``os.replace``, so a crash never leaves a half-written checkpoint under the final name.

``load_pruned`` takes a freshly built *original* model, rebuilds its :class:`~grouppruner.graph.ChannelGraph`,
replays the structural part of every plan (channel removal and biases added by folding) and loads the weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._utils import io as _io
from ._utils.digest import model_fingerprint
from ._utils.errors import CheckpointError
from ._utils.modules import ModuleSnapshot
from ._utils.moved import moved_names
from ._utils.wrappers import unwrap
from .pruning.plan import PruningPlan, applied_plans

__all__ = ["CheckpointError", "load_pruned", "read_meta", "save_pruned"]

# The file helpers moved to the package's I/O module; the old names work for one more release.
__getattr__ = moved_names(
    __name__, dict.fromkeys(("atomic_write", "load_tensor_file", "StateMismatch"), "grouppruner._utils.io")
)

logger = logging.getLogger(__name__)

_FORMAT = "grouppruner.pruned"
_VERSION = 1
_META = "grouppruner/meta"
_STATE = "state/"
# Re-tracing a saved plan allocates zero inputs of the recorded shapes: refuse sizes no real input has
# (2**27 float32 elements = 512 MiB, e.g. a batch of 8 images at 2048x2048) before allocating them.
_MAX_INPUT_ELEMENTS = 2**27
_MAX_INPUT_DIMS = 8


def save_pruned(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s applied pruning plans and weights to ``path`` atomically (no pickle).

    Args:
        model: a model pruned by :meth:`grouppruner.pruning.GroupPruner.apply` (an unpruned model is saved
            with an empty plan list). A ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile``
            wrapper is looked through: the model inside it is saved, with its own key names.
        path: destination file; its directory must exist.
    """
    path = Path(path)
    model = unwrap(model)
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
    with _io.atomic_write(path) as file:
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
    blob = _io.load_tensor_file(path, what="a grouppruner checkpoint")
    if not isinstance(blob, dict) or not isinstance(blob.get(_META), torch.Tensor):
        raise CheckpointError(
            f"{path}: not a grouppruner checkpoint (no {_META!r} entry: a file written by torch.save, "
            "but not by grouppruner.save_pruned; a plain state_dict loads with model.load_state_dict)"
        )
    try:
        meta = json.loads(bytes(blob[_META].to(torch.uint8).flatten().tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: damaged metadata ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: not a grouppruner checkpoint (format {found!r:.80})")
    if meta.get("version") != _VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')!r:.40} is not supported ({_VERSION})")
    for key in ("original_fingerprint", "pruned_fingerprint"):
        if not isinstance(meta.get(key), str):
            raise CheckpointError(f"{path}: damaged metadata: {key!r} must be a string, got {meta.get(key)!r:.80}")
    if not isinstance(meta.get("plans"), list):
        raise CheckpointError(f"{path}: damaged metadata: 'plans' must be a list, got {meta.get('plans')!r:.80}")
    state = {key[len(_STATE) :]: value for key, value in blob.items() if key.startswith(_STATE)}
    return meta, state


def _probe_inputs(path: str | os.PathLike[str], index: int, shapes: list[list[int]], device: torch.device) -> Any:
    """Zero inputs of the recorded ``shapes`` for re-tracing plan ``index``, refusing absurd sizes first."""
    if not shapes:
        raise CheckpointError(f"{path}: plan {index} stores no input shapes; pass example_inputs=")
    for shape in shapes:
        if not 1 <= len(shape) <= _MAX_INPUT_DIMS:
            raise CheckpointError(f"{path}: plan {index} input shape {shape} must have 1 to {_MAX_INPUT_DIMS} dims")
    elements = sum(math.prod(shape) for shape in shapes)
    if elements > _MAX_INPUT_ELEMENTS:
        raise CheckpointError(
            f"{path}: plan {index} input shapes {shapes} ({elements:,} elements) exceed the {_MAX_INPUT_ELEMENTS:,} "
            "a tracing probe may allocate; the file was edited or damaged (pass example_inputs= to override)"
        )
    return (
        torch.zeros(shapes[0], device=device)
        if len(shapes) == 1
        else tuple(torch.zeros(s, device=device) for s in shapes)
    )


def _check_state(path: str | os.PathLike[str], model: nn.Module, state: dict[str, torch.Tensor], strict: bool) -> None:
    """Raise CheckpointError before ``load_state_dict`` would fail halfway (it copies the matching tensors first)."""
    mismatch = _io.StateMismatch.between(model, state)
    if mismatch.wrong:
        raise CheckpointError(
            f"{path}: saved tensors do not fit the replayed architecture: "
            f"{_io.StateMismatch([], [], mismatch.wrong).describe()}"
        )
    if not mismatch.fits(strict=strict):
        raise CheckpointError(
            f"{path}: the saved weights do not match the model: {mismatch.describe()} (strict=False loads the rest)"
        )


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
        model: the unpruned model, built the same way as the one that was pruned (or a DDP / DataParallel /
            ``torch.compile`` wrapper of it: the model inside is restored).
        path: the checkpoint.
        example_inputs: inputs to trace the channel graph with; by default zeros of the shapes recorded in the
            plan (needed when the model takes non-tensor inputs).
        strict: passed to ``load_state_dict``.
        **graph_options: keyword options for :class:`grouppruner.graph.ChannelGraph` (e.g. ``ignore=``), as
            used when the model was pruned.

    Returns:
        ``model`` as given, now pruned, with the saved weights and the plans recorded on the model inside any
        wrapper.

    Raises:
        CheckpointError: not a grouppruner checkpoint, damaged or hand-edited metadata (wrong types, input shapes
            beyond the probe's size limit), saved for another architecture, or weights that do not fit. The message
            names the file; ``model`` is left exactly as it was given.
    """
    from .graph import ChannelGraph  # the graph (torch-pruning tracing) is only needed here
    from .pruning import apply_structure

    given, model = model, unwrap(model)
    meta, state = read_meta(path)
    fingerprint = model_fingerprint(model)
    if fingerprint != meta["original_fingerprint"]:
        raise CheckpointError(
            f"{path}: saved for an architecture with fingerprint {meta['original_fingerprint']}, but the given "
            f"model ({type(model).__name__}) has fingerprint {fingerprint}; build the original, unpruned model "
            "with the same options"
        )
    plans = []
    for index, data in enumerate(meta["plans"]):
        try:
            plans.append(PruningPlan.from_dict(data))
        except ValueError as error:
            raise CheckpointError(f"{path}: damaged metadata in plan {index}: {error}") from error
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # Nothing above touched the model; from here on, any failure puts it back as it was given.
    snapshot = ModuleSnapshot(model)
    try:
        for index, plan in enumerate(plans):
            inputs = (
                example_inputs if example_inputs is not None else _probe_inputs(path, index, plan.input_shapes, device)
            )
            try:
                apply_structure(ChannelGraph(model, inputs, **graph_options), plan)
            except CheckpointError:
                raise
            except (ValueError, KeyError, IndexError, RuntimeError) as error:
                raise CheckpointError(f"{path}: plan {index} cannot be replayed on this model: {error}") from error
        if model_fingerprint(model) != meta["pruned_fingerprint"]:
            raise CheckpointError(f"{path}: replaying the plans did not give the saved architecture")
        _check_state(path, model, state, strict)
        model.load_state_dict(state, strict=strict)
    except BaseException:
        snapshot.restore()
        raise
    logger.info("loaded pruned model (%d plans) from %s", len(plans), path)
    return given
