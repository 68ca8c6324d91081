"""Channel shuffle (ShuffleNet): ``view(N, g, C/g, H, W)`` -> ``transpose(1, 2)`` -> ``view(N, C, H, W)``.

The shuffle sends input channel ``i * P + k`` (shuffle group ``i`` of ``g``, position ``k`` of ``P = C / g``) to
output channel ``k * g + i``. It follows a removal when every shuffle group loses the same positions: the model
reads ``C`` from its input, each group keeps ``P' = P - r`` channels, and the kept channels leave the shuffle in
their original order. So the channels at position ``k`` of every shuffle group are one unit: the index mappings
set here fold input channel ``i * P + k`` onto position ``k`` (and back onto every group's ``k``) between the
first view and its input, and unfold position ``k`` onto output channels ``k * g .. k * g + g - 1`` at the last
view. The transpose and any ``contiguous()`` between them carry positions unchanged.

A shuffle whose code fixes its sizes (a constant ``channels_per_group``) cannot follow; the build-time probe
(:mod:`.probe`) finds it and fixes exactly the groups that reach it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch_pruning as tp
from torch_pruning import ops
from torch_pruning._helpers import _HybridIndex
from torch_pruning.dependency.node import Node

from .tracing import node_of_gradfn

__all__ = ["Shuffle", "find_shuffles", "map_shuffles"]


@dataclass(frozen=True)
class Shuffle:
    """One traced channel shuffle: its first view, the ops carrying positions, its last view, ``g`` and ``P``."""

    first: Node
    middle: tuple[Node, ...]
    last: Node
    groups: int
    part: int

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (self.first, *self.middle, self.last)


def _sizes(fn: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input shape, output shape) of a view / reshape autograd node."""
    before = tuple(int(s) for s in getattr(fn, "_saved_self_sym_sizes", ()))
    meta = getattr(fn, "_input_metadata", ())
    after = tuple(int(s) for s in meta[0].shape) if meta else ()
    return before, after


def _is_transpose_12(fn: Any) -> bool:
    if not type(fn).__name__.startswith("TransposeBackward"):
        return False
    dims = {getattr(fn, "_saved_dim0", None), getattr(fn, "_saved_dim1", None)}
    return dims in ({1, 2}, {1, -3}, {-4, 2}, {-4, -3})


def find_shuffles(dg: tp.DependencyGraph) -> list[Shuffle]:
    """Every view -> transpose(1, 2) -> [contiguous] -> view chain that shuffles the channels of a 4-D map."""
    by_fn = node_of_gradfn(dg)
    found: list[Shuffle] = []
    for node in dg.module2node.values():
        fn = node.grad_fn
        if fn is None or not _is_transpose_12(fn) or not fn.next_functions:
            continue
        first = by_fn.get(fn.next_functions[0][0])
        if first is None or first.type != ops.OPTYPE.RESHAPE:
            continue
        before, after = _sizes(first.grad_fn)
        if len(before) != 4 or len(after) != 5 or after[0] != before[0] or after[1] * after[2] != before[1]:
            continue
        if after[3:] != before[2:]:
            continue
        middle = [node]
        cur = node
        last = None
        while last is None:
            consumers = list(dict.fromkeys(cur.outputs))
            if len(consumers) != 1:
                break
            nxt = consumers[0]
            name = type(nxt.grad_fn).__name__ if nxt.grad_fn is not None else ""
            if nxt.type == ops.OPTYPE.RESHAPE:
                if _sizes(nxt.grad_fn)[1] == before:
                    last = nxt
                break
            if not name.startswith("CloneBackward"):
                break
            middle.append(nxt)
            cur = nxt
        if last is not None:
            found.append(Shuffle(first, tuple(middle), last, after[1], after[2]))
    return found


def _unique(pairs: Iterable[tuple[int, Any]]) -> list[_HybridIndex]:
    # The folds are many-to-one: without this, index lists would grow at every shuffle a propagation crosses.
    return [_HybridIndex(idx=i, root_idx=r) for i, r in dict.fromkeys(pairs)]


class _Fold:
    """Input channel ``i * P + k`` -> position ``k``; reversed: position ``k`` -> channel ``i * P + k`` for all i."""

    def __init__(self, groups: int, part: int, reverse: bool) -> None:
        self.groups, self.part, self.reverse = groups, part, reverse

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        if self.reverse:
            return [
                _HybridIndex(idx=g * self.part + int(h.idx), root_idx=h.root_idx)
                for h in idxs
                for g in range(self.groups)
            ]
        return _unique((int(h.idx) % self.part, h.root_idx) for h in idxs)


class _Unfold:
    """Position ``k`` -> output channels ``k * g + i`` for all i; reversed: output channel ``j`` -> ``j // g``."""

    def __init__(self, groups: int, reverse: bool) -> None:
        self.groups, self.reverse = groups, reverse

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        if self.reverse:
            return _unique((int(h.idx) // self.groups, h.root_idx) for h in idxs)
        return [
            _HybridIndex(idx=int(h.idx) * self.groups + g, root_idx=h.root_idx)
            for h in idxs
            for g in range(self.groups)
        ]


def map_shuffles(shuffles: Sequence[Shuffle]) -> None:
    """Set the index mappings of each shuffle's edges (see the module docstring); the inner edges are identity."""
    for s in shuffles:
        chain = s.nodes
        before_last = chain[-2]
        for node in chain:
            for dep in node.dependencies:
                dep.index_mapping = [None, None]
                if node is s.first and dep.target not in chain:  # back to the shuffle's input
                    dep.index_mapping = [_Fold(s.groups, s.part, reverse=True), None]
                elif node is s.last and dep.target is before_last:
                    dep.index_mapping = [_Unfold(s.groups, reverse=True), None]
                elif node is before_last and dep.target is s.last:
                    dep.index_mapping = [_Unfold(s.groups, reverse=False), None]
        for source in s.first.inputs:
            for dep in source.dependencies:
                if dep.target is s.first:
                    dep.index_mapping = [_Fold(s.groups, s.part, reverse=False), None]
