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

import errno
import glob
import json
import logging
import math
import os
import pickle
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from ._utils.errors import CheckpointError
from ._utils.modules import ModuleSnapshot
from ._utils.wrappers import unwrap
from .pruning.plan import PruningPlan, applied_plans, model_fingerprint

__all__ = [
    "CheckpointError",
    "StateMismatch",
    "atomic_write",
    "load_pruned",
    "load_tensor_file",
    "read_meta",
    "save_pruned",
]

logger = logging.getLogger(__name__)

_FORMAT = "grouppruner.pruned"
_VERSION = 1
_META = "grouppruner/meta"
_STATE = "state/"
# Re-tracing a saved plan allocates zero inputs of the recorded shapes: refuse sizes no real input has
# (2**27 float32 elements = 512 MiB, e.g. a batch of 8 images at 2048x2048) before allocating them.
_MAX_INPUT_ELEMENTS = 2**27
_MAX_INPUT_DIMS = 8


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write a file so that ``path`` holds either its old content or the complete new one, never a partial write.

    Yields a binary file opened on a temporary file in the same directory; when the ``with`` block ends without
    an exception the file is closed, given the permissions a plain ``open`` would give (the process umask), and
    renamed over ``path`` with ``os.replace`` (atomic on one filesystem). On an exception the temporary file is
    removed and ``path`` is untouched; temporary files left by a process killed while writing ``path`` are removed
    by the next write to it. A full disk raises ``OSError(ENOSPC)`` naming ``path``, whatever the writer raised.

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
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(error):
            # torch.save reports a full disk as a RuntimeError of its zip writer, with the OSError only in its
            # context: say what happened, and to which file.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
        raise


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an exception it was raised from or while handling, is a full disk (or quota)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


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
    blob = load_tensor_file(path, what="a grouppruner checkpoint")
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


def load_tensor_file(path: str | os.PathLike[str], *, what: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with errors that say what is wrong.

    Args:
        path: the file.
        what: what the file should be, for the message (``"a grouppruner checkpoint"``).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: a directory, or a file torch cannot read (empty, truncated, not written by
            ``torch.save``, pickled objects); the message names the file and the reason.
    """
    if Path(path).is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: cannot be read as {what}: {_why_unreadable(path, error)}") from error


def _why_unreadable(path: str | os.PathLike[str], error: Exception) -> str:
    """One line saying what is wrong with a file ``torch.load`` refused (its own messages are cryptic or long)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError as os_error:
        return f"the file cannot be opened ({os_error})"
    if size == 0:
        return "the file is empty (0 bytes; an interrupted copy?)"
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, pickle.UnpicklingError):
        # The weights-only unpickler names a class it refused ("Unsupported global: GLOBAL a.B"); any other
        # refusal ("Unsupported operand 95") means the bytes are no pickle torch.save wrote: not objects.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            return (
                f"it holds pickled Python objects ({found.group(1)}), not only tensors (a whole pickled model?); "
                "grouppruner checkpoints are written by save_pruned and load with weights_only=True"
            )
        found = re.search(r"WeightsUnpickler error: \s*(.+)", str(error))
        detail = found.group(1).strip() if found else detail
    if head.startswith(b"PK"):
        return f"a torch.save archive that is truncated or damaged ({size:,} bytes; torch says: {detail:.200})"
    return f"not a file written by torch.save ({size:,} bytes, starting with {head!r}; torch says: {detail:.120})"


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


@dataclass(frozen=True)
class StateMismatch:
    """How a saved ``state_dict`` differs from a model's: the one "does this state fit" check of the library.

    Attributes:
        missing: keys the model has and the state lacks, sorted.
        unexpected: keys the state has and the model lacks, sorted.
        wrong: ``(key, saved shape, model shape)`` for keys in both whose shapes differ, in model order.
    """

    missing: list[str]
    unexpected: list[str]
    wrong: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @classmethod
    def between(cls, model: nn.Module, state: Mapping[str, torch.Tensor]) -> StateMismatch:
        """Compare ``state`` with ``model.state_dict()`` (keys and shapes, not values)."""
        own = model.state_dict()
        return cls(
            missing=sorted(set(own) - set(state)),
            unexpected=sorted(set(state) - set(own)),
            wrong=[
                (key, tuple(state[key].shape), tuple(value.shape))
                for key, value in own.items()
                if key in state and state[key].shape != value.shape
            ],
        )

    def fits(self, *, strict: bool = True) -> bool:
        """No shape differs and, when ``strict``, no key is missing or unexpected."""
        return not self.wrong and (not strict or not (self.missing or self.unexpected))

    def describe(self, limit: int = 3) -> str:
        """One line listing the first ``limit`` problems of each kind."""

        def some(items: list[str]) -> str:
            return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")

        parts = [f"{len(self.missing)} missing ({some(self.missing)})"] if self.missing else []
        parts += [f"{len(self.unexpected)} unexpected ({some(self.unexpected)})"] if self.unexpected else []
        if self.wrong:
            parts.append(
                f"{len(self.wrong)} of another shape ("
                + some([f"{key} {got}, model {want}" for key, got, want in self.wrong])
                + ")"
            )
        return "; ".join(parts)


def _check_state(path: str | os.PathLike[str], model: nn.Module, state: dict[str, torch.Tensor], strict: bool) -> None:
    """Raise CheckpointError before ``load_state_dict`` would fail halfway (it copies the matching tensors first)."""
    mismatch = StateMismatch.between(model, state)
    if mismatch.wrong:
        raise CheckpointError(
            f"{path}: saved tensors do not fit the replayed architecture: "
            f"{StateMismatch([], [], mismatch.wrong).describe()}"
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
