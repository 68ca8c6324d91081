"""Layer groups: a partition of the prunable channel groups, each of which gets its own pruning threshold.

The automatic partition follows the paper's grouping by feature scale and module structure: the first component
of the root layer's name (``backbone``, ``neck``, ``head``) and the group's feature stride. Glob patterns, names or
a callable give any other partition (:data:`LayerGroupSpec`). :func:`partition` is the one resolver: the pruner
(:mod:`grouppruner.pruning`) and the regularizer (:mod:`grouppruner.sparsity`) take the same specs through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

from .._utils.errors import OptionTypeError
from .._utils.names import assign_layer_groups
from .groups import ChannelGroup

__all__ = ["LayerGroupSpec", "default_layer_group", "partition"]

logger = logging.getLogger(__name__)

LayerGroupSpec: TypeAlias = (
    "Mapping[str, str | ChannelGroup | Sequence[str | ChannelGroup]] | Callable[[ChannelGroup], str] | None"
)
"""How to partition channel groups, the same forms wherever a layer-group spec is taken (``ChannelGraph``,
``GroupPruner``, ``BNSparsity``): ``None`` (automatic), ``{layer_group: [entries]}`` with entries that are glob
patterns, exact channel-group names or :class:`ChannelGroup` objects, or a callable ``ChannelGroup -> str``."""


def partition(channel_groups: Sequence[ChannelGroup], by: LayerGroupSpec = None) -> dict[str, list[ChannelGroup]]:
    """Partition the prunable channel groups into named layer groups (each gets its own pruning threshold).

    This is the one resolver of layer-group specs: the graph, the pruner and the regularizer all call it.

    Args:
        channel_groups: all channel groups of a graph; only the prunable ones are assigned a layer group.
        by: ``None``: automatic, ``"<section>/s<stride>"`` where section is the first component of the root
            layer's qualified name (``backbone``, ``neck``, ``head``; ``model`` for unnamed Sequential
            children) and stride the group's feature stride (``"<section>/flat"`` without one).
            A mapping ``{layer_group: [entries]}``: each entry is a glob pattern on the channel-group name (the
            root layer's qualified name, ``ChannelGroup.name``), an exact name, or a :class:`ChannelGroup`;
            entries are tried in order and the first match wins. Prunable groups that no entry matches are in
            no layer group: they are neither pruned nor regularized (logged). Every entry must match a group
            not taken by an earlier one, and an exact name must name a prunable group.
            A callable ``ChannelGroup -> str`` naming the layer group of each prunable group.

    Returns:
        ``{layer_group: [ChannelGroup, ...]}`` in model order; only non-empty layer groups.

    Raises:
        InvalidOptionError: an entry matches nothing (close matches are listed), only groups taken by earlier
            entries, or names a fixed group (its reason is given).
        OptionTypeError: ``by`` or an entry has the wrong type, or the callable returns a non-string.
    """
    prunable = [g for g in channel_groups if g.prunable]
    if by is None:
        names = {g.name: default_layer_group(g) for g in prunable}
    elif isinstance(by, Mapping):
        fixed = {g.name: g.reason or "fixed" for g in channel_groups if not g.prunable}
        names = assign_layer_groups([g.name for g in channel_groups], by, fixed=fixed)
    elif callable(by):
        names = {}
        for g in prunable:
            label = by(g)
            if not isinstance(label, str):
                raise OptionTypeError(f"layer group callable returned {type(label).__name__} for '{g.name}'")
            names[g.name] = label
    else:
        raise OptionTypeError(
            f"layer groups must be None, a mapping of glob patterns / names or a callable, got {type(by).__name__}"
        )
    out: dict[str, list[ChannelGroup]] = {}
    for g in prunable:
        if g.name in names:
            out.setdefault(names[g.name], []).append(g)
    return out


def default_layer_group(group: ChannelGroup) -> str:
    """The automatic layer group of ``group``: ``"<section>/s<stride>"`` or ``"<section>/flat"``."""
    head = group.name.split(".", 1)[0]
    section = "model" if head.isdigit() or not head else head
    return f"{section}/s{group.stride}" if group.stride is not None else f"{section}/flat"
