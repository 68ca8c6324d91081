"""Resolving user-given layer names: exact names, glob patterns, and close-match suggestions in errors."""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from .errors import InvalidOptionError, OptionTypeError

__all__ = ["GLOB_CHARS", "assign_layer_groups", "close_matches", "did_you_mean", "is_glob", "select_modules"]

logger = logging.getLogger(__name__)

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
                raise InvalidOptionError(f"{option}: module {type(entry).__name__} is not part of the model")
            out[by_id[id(entry)]] = None
        elif isinstance(entry, str):
            if entry and entry in modules:
                out[entry] = None
            elif is_glob(entry) and (hits := [n for n in names if fnmatch.fnmatchcase(n, entry)]):
                out.update(dict.fromkeys(hits))
            else:
                what = f"pattern {entry!r} matches no module" if is_glob(entry) else f"no module named {entry!r}"
                raise InvalidOptionError(f"{option}: {what}{did_you_mean(entry, names)}")
        else:
            raise OptionTypeError(f"{option} entries must be modules or names, got {type(entry).__name__}")
    return list(out)


def assign_layer_groups(
    names: Sequence[str],
    spec: Mapping[str, Any],
    *,
    what: str = "channel group",
    fixed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The mapping form of a layer-group spec, resolved on ``names``: ``{name: layer group}``.

    Each entry is a glob pattern, an exact name or a :class:`~grouppruner.graph.ChannelGroup` (its name);
    entries are tried in order and the first match wins. Names no entry matches are left out (logged).

    Args:
        names: what the entries are matched against, in model order (channel-group or BatchNorm names).
        spec: ``{layer_group: [entries]}``.
        what: what a name is, for messages.
        fixed: names that may not be assigned by exact name, with the reason (fixed channel groups); a glob may
            match them, and they are left out.

    Raises:
        InvalidOptionError: an entry matches nothing (close matches are listed), matches only names taken by
            earlier entries, or names a fixed one.
        OptionTypeError: a layer-group name or an entry has the wrong type.
    """
    fixed = fixed or {}
    rules: list[tuple[str, str, bool]] = []  # (layer group, pattern or name, is an exact name)
    for label, entries in spec.items():
        if not isinstance(label, str):
            raise OptionTypeError(f"layer group names must be strings, got {label!r}")
        items = [entries] if isinstance(entries, str) or hasattr(entries, "name") else list(entries)
        for entry in items:
            if isinstance(entry, str):
                rules.append((label, entry, not is_glob(entry)))
            elif isinstance(getattr(entry, "name", None), str):  # a ChannelGroup (or anything named like one)
                rules.append((label, entry.name, True))
            else:
                raise OptionTypeError(
                    f"layer group {label!r}: entries must be glob patterns, names or ChannelGroups, got {entry!r}"
                )
    known = set(names)
    assigned: dict[str, str] = {}
    productive: set[int] = set()
    matched_any: set[int] = set()
    for name in names:
        for k, (label, pattern, exact) in enumerate(rules):
            if name == pattern if exact else fnmatch.fnmatchcase(name, pattern):
                matched_any.add(k)
                if name not in assigned:
                    productive.add(k)
                    assigned[name] = label
                else:
                    logger.debug("pattern %r also matches %s (taken earlier)", pattern, name)
    problems = []
    for k, (label, pattern, exact) in enumerate(rules):
        if exact and pattern in fixed:
            problems.append(f"layer group {label!r}: {what} {pattern!r} is not prunable ({fixed[pattern]})")
        elif exact and pattern not in known:
            problems.append(f"layer group {label!r}: unknown {what} {pattern!r}{did_you_mean(pattern, names)}")
        elif k not in matched_any:
            problems.append(f"pattern {pattern!r} of {label!r} matches no {what}{did_you_mean(pattern, names)}")
        elif k not in productive and exact:
            problems.append(f"{what} {pattern!r} is in two layer groups: {assigned[pattern]!r} and {label!r}")
        elif k not in productive:
            problems.append(
                f"pattern {pattern!r} of {label!r} overlaps earlier patterns: every {what} it matches is taken"
            )
    if problems:
        raise InvalidOptionError("invalid layer groups: " + "; ".join(problems))
    unmatched = [n for n in names if n not in assigned and n not in fixed]
    if unmatched:
        logger.info(
            "layer groups: %d %s(s) in no layer group are neither pruned nor regularized: %s",
            len(unmatched),
            what,
            ", ".join(unmatched[:8]) + (" ..." if len(unmatched) > 8 else ""),
        )
    return {name: label for name, label in assigned.items() if name not in fixed}
