"""Layer groups: a partition of the prunable channel groups, each of which gets its own pruning threshold.

The automatic partition follows the paper's grouping by feature scale and module structure: the first component
of the root layer's name (``backbone``, ``neck``, ``head``) and the group's feature stride. Glob patterns or a
callable give any other partition. The pruner (:mod:`grouppruner.pruning`) and the sparsity statistics use it.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

from .._utils.names import did_you_mean
from .groups import ChannelGroup

__all__ = ["LayerGroupSpec", "default_layer_group", "partition"]

logger = logging.getLogger(__name__)

LayerGroupSpec: TypeAlias = "Mapping[str, Sequence[str] | str] | Callable[[ChannelGroup], str] | None"
"""How to partition channel groups: ``None`` (automatic), ``{layer_group: [glob patterns]}`` or a callable."""


def partition(channel_groups: Sequence[ChannelGroup], by: LayerGroupSpec = None) -> dict[str, list[ChannelGroup]]:
    """Partition the prunable channel groups into named layer groups (each gets its own pruning threshold).

    Args:
        channel_groups: all channel groups of a graph; only the prunable ones are assigned a layer group.
        by: ``None``: automatic, ``"<section>/s<stride>"`` where section is the first component of the root
            layer's qualified name (``backbone``, ``neck``, ``head``; ``model`` for unnamed Sequential
            children) and stride the group's feature stride (``"<section>/flat"`` without one).
            A mapping ``{layer_group: [glob patterns]}``: patterns are matched against the root layer name
            (``ChannelGroup.name``) in order, first match wins; every prunable group must be matched and
            every pattern must match a group not taken by an earlier pattern.
            A callable ``ChannelGroup -> str`` naming the layer group of each prunable group.

    Returns:
        ``{layer_group: [ChannelGroup, ...]}`` in model order; only non-empty layer groups.

    Raises:
        ValueError: a pattern mapping leaves groups unmatched or has patterns that match nothing new.
        TypeError: ``by`` or a pattern has the wrong type, or the callable returns a non-string.
    """
    prunable = [g for g in channel_groups if g.prunable]
    if by is None:
        names = {g.name: default_layer_group(g) for g in prunable}
    elif isinstance(by, Mapping):
        names = _match_patterns(channel_groups, by)
    elif callable(by):
        names = {}
        for g in prunable:
            label = by(g)
            if not isinstance(label, str):
                raise TypeError(f"layer group callable returned {type(label).__name__} for '{g.name}'")
            names[g.name] = label
    else:
        raise TypeError(f"by must be None, a mapping of glob patterns or a callable, got {type(by).__name__}")
    out: dict[str, list[ChannelGroup]] = {}
    for g in prunable:
        out.setdefault(names[g.name], []).append(g)
    return out


def _match_patterns(channel_groups: Sequence[ChannelGroup], spec: Mapping[str, Sequence[str] | str]) -> dict[str, str]:
    rules: list[tuple[str, str]] = []
    for label, patterns in spec.items():
        if not isinstance(label, str):
            raise TypeError(f"layer group names must be strings, got {label!r}")
        plist = [patterns] if isinstance(patterns, str) else list(patterns)
        for p in plist:
            if not isinstance(p, str):
                raise TypeError(f"layer group {label!r}: patterns must be strings, got {p!r}")
            rules.append((label, p))
    assigned: dict[str, str] = {}
    productive: set[int] = set()
    matched_any: set[int] = set()
    for g in channel_groups:
        for k, (label, pattern) in enumerate(rules):
            if fnmatch.fnmatchcase(g.name, pattern):
                matched_any.add(k)
                if g.name not in assigned:
                    productive.add(k)
                    assigned[g.name] = label
                else:
                    logger.debug("pattern %r also matches %s (taken earlier)", pattern, g.name)
    problems = []
    group_names = [g.name for g in channel_groups]
    unmatched = [g.name for g in channel_groups if g.prunable and g.name not in assigned]
    if unmatched:
        problems.append(f"prunable channel groups matched by no pattern: {', '.join(unmatched)}")
    for k, (label, pattern) in enumerate(rules):
        if k not in matched_any:
            problems.append(
                f"pattern {pattern!r} of {label!r} matches no channel group{did_you_mean(pattern, group_names)}"
            )
        elif k not in productive:
            problems.append(
                f"pattern {pattern!r} of {label!r} overlaps earlier patterns: every group it matches is taken"
            )
    if problems:
        raise ValueError("invalid layer-group patterns: " + "; ".join(problems))
    return assigned


def default_layer_group(group: ChannelGroup) -> str:
    """The automatic layer group of ``group``: ``"<section>/s<stride>"`` or ``"<section>/flat"``."""
    head = group.name.split(".", 1)[0]
    section = "model" if head.isdigit() or not head else head
    return f"{section}/s{group.stride}" if group.stride is not None else f"{section}/flat"
