"""The recipe's run folder: one run at a time, a portable ``results.json``, and a record of every file a stage left.

- :class:`RunLock`: a lock file (``.grouppruner.lock``, holding the pid, host and start time of its run) that keeps
  a second run off a folder while one is writing to it; the lock of a run that died (``kill -9`` included) is
  recognized as stale and taken over.
- :func:`write_results` / :func:`read_results`: ``results.json`` stores every path relative to the run folder (or
  absolute when it lies outside), so a moved or copied folder keeps working; older files with absolute paths are
  read too. Every error about the file's content names it.
- :func:`file_record` / :func:`check_file_record`: the path, size and SHA-256 of a file a stage wrote (its
  checkpoint, or any other artifact it registers), kept in the stage's record and checked before the stage is
  skipped as done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ._utils.errors import DataError, UsageError
from ._utils.io import atomic_write

__all__ = [
    "LOCK_NAME",
    "PATH_OPTIONS",
    "RESULTS_NAME",
    "RunLock",
    "check_file_record",
    "file_record",
    "read_results",
    "results_json",
    "run_kind",
    "write_results",
]

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
LOCK_NAME = ".grouppruner.lock"
#: Options that hold a path: stored relative to the run folder when inside it, compared resolved.
PATH_OPTIONS = ("data_root", "weights")

_FORMAT = "grouppruner.recipe_run"
# Version 1 (no "version" key): absolute checkpoint paths, paths of options as given on the command line.
_VERSION = 2
_STAGE_NAMES = ("dense", "sparse", "pruned", "recovered")
# The options every reader of a run folder needs, with the JSON types they must have.
_MODEL_OPTIONS: dict[str, tuple[type, ...]] = {
    "classes": (list,),
    "backbone": (str,),
    "width": (int, float),
    "depth": (int, float),
    "image_size": (int,),
}


class RunLock:
    """An exclusive lock on a run folder, held for the duration of a ``with`` block.

    The lock is a file created atomically (a hard link of a complete temporary file, so it never holds a partial
    record) with the holder's pid, host name and process start time. A lock whose holder is gone (same host, and
    the pid is not running or now belongs to a process started at another time) is stale: it is removed with a
    warning and taken. The lock is removed when the block ends, whatever the reason; a process killed with
    ``kill -9`` leaves it behind, and the next run finds it stale.

    Args:
        folder: the run folder (must exist).

    Raises:
        UsageError: on entering, when another live process holds the lock; the message names the folder, the
            other run's pid, host and start time.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._record = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
        self._held = False

    def acquire(self) -> None:
        """Take the lock (see the class docstring for what happens when another run holds it)."""
        record = {**self._record, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self.folder / f"{LOCK_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        try:
            for _ in range(3):  # a stale lock removed by a concurrent run in between: try again
                try:
                    os.link(tmp, self.path)
                    self._held = True
                    return
                except FileExistsError:
                    pass
                holder = _read_lock(self.path)
                if holder is not None and not _is_stale(holder):
                    raise UsageError(
                        f"{self.folder}: in use by another grouppruner run (pid {holder.get('pid')} on "
                        f"{holder.get('host')}, since {holder.get('since')}); wait for it to finish or use another "
                        f"folder (if no such run exists, delete {self.path})"
                    )
                if holder is not None:
                    logger.warning(
                        "%s: removing the stale lock of pid %s on %s (that process is gone)",
                        self.folder,
                        holder.get("pid"),
                        holder.get("host"),
                    )
                # Remove it only if it is still the record just judged (another run may have replaced it).
                if _read_lock(self.path) == holder:
                    self.path.unlink(missing_ok=True)
            raise UsageError(f"{self.folder}: could not take the lock {self.path}; try again")
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self._held:
            holder = _read_lock(self.path)
            if holder is not None and all(holder.get(k) == v for k, v in self._record.items()):
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) is in parentheses and may contain spaces.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _is_stale(holder: Mapping[str, Any]) -> bool:
    """Whether the run that wrote a lock record is gone (only decidable for a process on this host)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or sys.platform == "win32":
        return False  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    start = holder.get("start")
    return start is not None and _process_start(pid) not in (None, start)


def file_record(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record of a file in a run folder: ``{"path", "bytes", "sha256"}``.

    Args:
        run_dir: the run folder.
        path: the file (inside the run folder: stored relative to it; elsewhere: stored absolute).
    """
    file = Path(path)
    return {"path": _portable(file, Path(run_dir)), "bytes": file.stat().st_size, "sha256": file_sha256(file)}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's content (64 hex characters), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file_record(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> str | None:
    """``None`` when the file of a :func:`file_record` is intact; otherwise what is wrong with it, in words."""
    file = _located(str(record["path"]), Path(run_dir))
    if not file.is_file():
        return f"{file} is missing"
    size = file.stat().st_size
    if size != record["bytes"]:
        return f"{file} has {size:,} bytes, {record['bytes']:,} when it was written (truncated or replaced)"
    if file_record(run_dir, file)["sha256"] != record["sha256"]:
        return f"{file} differs from the file written then (its SHA-256 changed: damaged or replaced)"
    return None


def write_results(
    run_dir: str | os.PathLike[str], config: Mapping[str, Any], stages: Sequence[Mapping[str, Any]]
) -> None:
    """Write ``run_dir/results.json`` atomically, with every path relative to ``run_dir`` where it lies inside.

    Args:
        run_dir: the run folder.
        config: the options as JSON values (``dataclasses.asdict(RecipeConfig)``).
        stages: one record per finished stage (``dataclasses.asdict(StageResult)``); its ``checkpoint`` and the
            paths of its ``files`` are made portable.
    """
    run = Path(run_dir)
    options = dict(config)
    for key in PATH_OPTIONS:
        if options.get(key) is not None:
            options[key] = _portable(Path(options[key]), run)
    records = [{**record, "checkpoint": _portable(Path(record["checkpoint"]), run)} for record in stages]
    data = {"format": _FORMAT, "version": _VERSION, "config": options, "stages": records}
    with atomic_write(run / RESULTS_NAME) as file:
        file.write(json.dumps(data, indent=2).encode())


def results_json(run_dir: str | os.PathLike[str], what: str) -> tuple[Path, Any]:
    """The path and the parsed content of ``run_dir/results.json``.

    Args:
        run_dir: the run folder.
        what: what the file should be, for the message (``"a recipe result"``).

    Raises:
        FileNotFoundError: the folder has no ``results.json``.
        DataError: the file is not JSON (names the file).
    """
    run = Path(run_dir)
    path = run / RESULTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json; is {run} a grouppruner run folder?")
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not {what} (not JSON: {error})") from error


def run_kind(run_dir: str | os.PathLike[str]) -> str:
    """Which flow wrote ``run_dir``: ``"recipe"`` (``grouppruner compress``, a ``config`` object in
    ``results.json``) or ``"yolo"`` (the Ultralytics flow, ``grouppruner yolo``: an ``options`` object).

    Raises:
        FileNotFoundError: the folder has no ``results.json``.
        DataError: ``results.json`` is neither (names the file).
    """
    path, saved = results_json(run_dir, "a grouppruner result")
    if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
        return "recipe"
    if isinstance(saved, dict) and isinstance(saved.get("options"), dict):
        return "yolo"
    raise DataError(
        f"{path}: neither a recipe result (no 'config' object) nor an Ultralytics run (no 'options' object)"
    )


def read_results(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``config`` and the stage records of ``run_dir/results.json``, with paths usable from here.

    Relative paths of the options in :data:`PATH_OPTIONS` and of the checkpoints are joined to ``run_dir``;
    a version-1 file's absolute checkpoint paths point at the checkpoint of that name in ``run_dir`` (the
    folder may have moved since).

    Raises:
        FileNotFoundError: the folder has no ``results.json``.
        DataError: ``results.json`` is not a recipe result; the message names the file and the field.
    """
    run = Path(run_dir)
    path, saved = results_json(run, "a recipe result")
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise DataError(f"{path}: not a recipe result (no 'config' object)")
    if not isinstance(saved.get("stages"), list):
        raise DataError(f"{path}: not a recipe result ('stages' must be a list, got {saved.get('stages')!r:.60})")
    version = saved.get("version", 1)
    if version not in (1, _VERSION):
        raise DataError(f"{path}: results.json version {version!r:.20} is not supported (1 or {_VERSION})")
    config = dict(saved["config"])
    for key, kinds in _MODEL_OPTIONS.items():
        if key not in config:
            raise DataError(f"{path}: not a recipe result (config has no {key!r})")
        if not isinstance(config[key], kinds) or isinstance(config[key], bool):
            raise DataError(f"{path}: config {key!r} has the wrong type: {config[key]!r:.60}")
    if not config["classes"] or not all(isinstance(c, str) for c in config["classes"]):
        raise DataError(f"{path}: config 'classes' must be a list of class names, got {config['classes']!r:.60}")
    for key in PATH_OPTIONS:
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{path}: config {key!r} must be a path or null, got {value!r:.60}")
        if isinstance(value, str) and version >= 2:
            config[key] = str(_located(value, run))
    records = [_checked_record(path, i, record, run, version) for i, record in enumerate(saved["stages"])]
    order = [r["stage"] for r in records]
    if order != list(_STAGE_NAMES[: len(order)]):
        raise DataError(f"{path}: stages {order} are not in recipe order {list(_STAGE_NAMES)}")
    return config, records


def _checked_record(path: Path, index: int, saved: Any, run: Path, version: int) -> dict[str, Any]:
    where = f"{path}: stage record {index}"
    if not isinstance(saved, dict):
        raise DataError(f"{where} must be an object, got {saved!r:.60}")
    record: dict[str, Any] = dict(saved)
    if record.get("stage") not in _STAGE_NAMES:
        raise DataError(f"{where}: 'stage' must be one of {_STAGE_NAMES}, got {record.get('stage')!r:.40}")
    where = f"{path}: stage {record['stage']!r}"
    numbers = {"map50": (int, float), "params": (int,), "macs": (int,)}
    for key, kinds in numbers.items():
        value = record.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise DataError(f"{where}: {key!r} must be a non-negative number, got {value!r:.40}")
    checkpoint = record.get("checkpoint", f"{record['stage']}.pt")
    if not isinstance(checkpoint, str):
        raise DataError(f"{where}: 'checkpoint' must be a path, got {checkpoint!r:.60}")
    # A version-1 file holds the checkpoint's absolute path at the time: the folder may have moved since.
    name = Path(checkpoint).name if version < 2 and Path(checkpoint).is_absolute() else checkpoint
    record["checkpoint"] = str(_located(name, run))
    if not isinstance(record.setdefault("extra", {}), dict):
        raise DataError(f"{where}: 'extra' must be an object, got {record['extra']!r:.60}")
    files = record.setdefault("files", [])
    if not isinstance(files, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("path"), str)
        and isinstance(f.get("bytes"), int)
        and isinstance(f.get("sha256"), str)
        for f in files
    ):
        raise DataError(f"{where}: 'files' must be a list of {{path, bytes, sha256}} records, got {files!r:.80}")
    unknown = sorted(set(record) - {"stage", "map50", "params", "macs", "checkpoint", "extra", "files"})
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}")
    return record


def _portable(path: Path, run: Path) -> str:
    """``path`` relative to the run folder (POSIX separators) when it lies inside it, else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(run.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def _located(stored: str, run: Path) -> Path:
    """A path as :func:`_portable` stored it, usable from the current directory."""
    path = Path(stored)
    return path if path.is_absolute() else run / path
