"""File I/O written once for the whole package: atomic writes, tensor files read safely, state-dict comparison.

Every file grouppruner writes (checkpoints, run folders, caches, exported models) goes through
:func:`atomic_write`; every tensor file it reads goes through :func:`load_tensor_file` (``weights_only=True``,
errors that name the file and say what is wrong with it).
"""

from __future__ import annotations

import errno
import glob
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

from .errors import CheckpointError

__all__ = ["StateMismatch", "atomic_write", "load_tensor_file"]


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write a file so that ``path`` holds either its old content or the complete new one, never a partial write.

    Yields a binary file opened on a temporary file in the same directory; when the ``with`` block ends without an
    exception the file is closed, given the permissions a plain ``open`` would give (the process umask), and renamed
    over ``path`` with ``os.replace`` (atomic on one filesystem). On an exception the temporary file is removed and
    ``path`` is untouched; temporary files left by a process killed while writing ``path`` are removed by the next write
    to it (never the temporary file of a writer that is still running). A full disk raises ``OSError(ENOSPC)`` naming
    ``path``, whatever the writer raised.


    Args:
        path: destination file; its directory must exist.

    Example:
        >>> with atomic_write("results.json") as file:  # doctest: +SKIP
        ...     file.write(b"{}")
    """
    path = Path(path)
    _remove_dead_writers_files(path)
    # The writer's pid is in the name, so that a later write can tell a dead writer's leftover from a live one's.
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


def _remove_dead_writers_files(path: Path) -> None:
    """Remove the temporary files that writers of ``path`` killed mid-write left behind, and only theirs."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an exception it was raised from or while handling, is a full disk (or quota)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


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
