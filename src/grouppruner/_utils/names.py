"""Resolving user-given layer names: exact names, glob patterns, and close-match suggestions in errors."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

__all__ = ["GLOB_CHARS", "close_matches", "did_you_mean", "is_glob", "select_modules"]

GLOB_CHARS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` holds a glob character (``*``, ``?`` or ``[``)."""
    return bool(GLOB_CHARS & set(pattern))


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` of ``candidates`` that look like ``name`` (a misspelt layer name), best first."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; close matches: 'a', 'b'"`` for an error message, or ``""`` when nothing is close."""
    matches = close_matches(name, candidates)
    return f"; close matches: {', '.join(repr(m) for m in matches)}" if matches else ""


def select_modules(
    modules: Mapping[str, nn.Module],
    entries: Sequence[nn.Module | str],
    *,
    option: str,
) -> list[str]:
    """Qualified names of the modules that ``entries`` name.

    Args:
        modules: ``dict(model.named_modules())`` of the model the names refer to.
        entries: modules, exact qualified names, or glob patterns (``"head.*"``) matched against every name.
        option: the user-facing option the entries came from (``"ignore"``, ``"exclude"``), for messages.

    Returns:
        The matched names in entry order, each once (``""`` for the model itself, given as a module).

    Raises:
        ValueError: a module is not part of the model, or a name / pattern matches no module (close matches
            are listed).
        TypeError: an entry is neither a module nor a string.
    """
    by_id = {id(m): n for n, m in modules.items()}
    names = [n for n in modules if n]
    out: dict[str, None] = {}
    for entry in entries:
        if isinstance(entry, nn.Module):
            if id(entry) not in by_id:
                raise ValueError(f"{option}: module {type(entry).__name__} is not part of the model")
            out[by_id[id(entry)]] = None
        elif isinstance(entry, str):
            if entry and entry in modules:
                out[entry] = None
            elif is_glob(entry) and (hits := [n for n in names if fnmatch.fnmatchcase(n, entry)]):
                out.update(dict.fromkeys(hits))
            else:
                what = f"pattern {entry!r} matches no module" if is_glob(entry) else f"no module named {entry!r}"
                raise ValueError(f"{option}: {what}{did_you_mean(entry, names)}")
        else:
            raise TypeError(f"{option} entries must be modules or names, got {type(entry).__name__}")
    return list(out)
