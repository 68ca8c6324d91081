"""Channel removal: physically shrink the member layers of a channel group and keep every stored index current.

Removal calls Torch-Pruning's per-layer pruning functions directly on the member layers and shifts the stored
indices of every group that shares a layer, so the graph is never rebuilt.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from .groups import ChannelGroup

Dim = Literal["out", "in"]

#: ``LayerRef.kind`` of a bare channel-indexed ``nn.Parameter`` (layer scale, YOLOR implicit add / multiply)
PARAMETER = "Parameter"


class ParameterChannels:
    """Removal of channels from a bare ``nn.Parameter`` along its one non-singleton dim, in place.

    The parameter is looked up by name on the root module given at removal time and replaced by a new, smaller
    ``nn.Parameter`` on the module that holds it, as Torch-Pruning does for layer weights: the old tensor is never
    written to, so a snapshot of the modules undoes the removal (the graph's build-time split check relies on it).
    The same function serves both dims, like Torch-Pruning's per-layer functions for norms.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def prune_out_channels(self, root: nn.Module, idxs: Sequence[int]) -> None:
        owner_name, _, attribute = self.name.rpartition(".")
        owner = root.get_submodule(owner_name)
        p = getattr(owner, attribute)
        dim = max(range(p.dim()), key=lambda d: p.shape[d])
        gone = set(idxs)
        index = torch.tensor([i for i in range(p.shape[dim]) if i not in gone], dtype=torch.long, device=p.device)
        kept = torch.index_select(p.detach(), dim, index)
        setattr(owner, attribute, nn.Parameter(kept, requires_grad=p.requires_grad))

    prune_in_channels = prune_out_channels


def remove_units(
    modules: dict[str, nn.Module],
    pruners: dict[str, Any],
    groups: list[ChannelGroup],
    index: dict[tuple[str, str], set[int]],
    gi: int,
    units: Sequence[int],
) -> None:
    """Remove group-local channels ``units`` of ``groups[gi]`` from the layers and shift every stored index."""
    unit_set = set(units)
    removed: dict[tuple[str, Literal["out", "in"]], set[int]] = {}
    for ref in groups[gi].layers:
        removed.setdefault((ref.name, ref.dim), set()).update(ref.indices[u] for u in units)
    ordered = {key: sorted(v) for key, v in removed.items()}
    prune_layers(modules, pruners, ordered)
    affected = set().union(*(index.get(key, set()) for key in ordered))
    for gj in sorted(affected | {gi}):
        layers = []
        for ref in groups[gj].layers:
            idx: Sequence[int] = ref.indices
            if gj == gi:
                idx = [c for u, c in enumerate(idx) if u not in unit_set]
            key = (ref.name, ref.dim)
            if key in ordered:
                idx = shift(idx, ordered[key])
            layers.append(replace(ref, indices=tuple(idx)))
        size = groups[gj].size - (len(unit_set) if gj == gi else 0)
        groups[gj] = replace(groups[gj], layers=tuple(layers), size=size)


def prune_layers(
    modules: dict[str, nn.Module],
    pruners: dict[str, Any],
    removed: dict[tuple[str, Dim], list[int]],
) -> None:
    """Physically remove channels with Torch-Pruning's per-layer functions, keeping ``requires_grad`` flags.

    ``pruners`` holds the pruning function set chosen for each layer when the graph was built: a grouped conv
    whose output shrinks to one channel per group must not turn into a depthwise conv for Torch-Pruning.
    """
    done: set[str] = set()
    for (name, dim), idxs in removed.items():
        pruner = pruners[name]
        same_fn = pruner.prune_out_channels == pruner.prune_in_channels
        if same_fn and name in done:
            continue
        fn = pruner.prune_out_channels if dim == "out" or same_fn else pruner.prune_in_channels
        if isinstance(pruner, ParameterChannels):
            fn(modules[""], sorted(idxs))  # modules[""] is the root model
            done.add(name)
            continue
        module = modules[name]
        flags = {pname: p.requires_grad for pname, p in module.named_parameters(recurse=False)}
        fn(module, sorted(idxs))
        for pname, p in module.named_parameters(recurse=False):
            p.requires_grad_(flags.get(pname, True))
        done.add(name)


def shift(indices: Sequence[int], removed_sorted: Sequence[int]) -> list[int]:
    """Indices after removing ``removed_sorted`` channels from a layer (none of ``indices`` is removed)."""
    return [i - bisect.bisect_left(removed_sorted, i) for i in indices]
