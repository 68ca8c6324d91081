"""Coupled channels: index propagation through the dependency graph, and the units that form channel groups.

Torch-Pruning's ``DependencyGraph`` is built once (:mod:`.tracing`). Its dependencies and index mappings
(concat, split, slice, flatten) are then walked here, from every Conv/Linear output, to collect which channel of
which layer follows which channel of the root layer. Channels that must go together beyond what Torch-Pruning
models (the equal parts of a ``chunk`` / ``split`` / slice written in ``forward()``, the groups of a grouped
convolution or of a ``GroupNorm``) are merged into *units* with a union-find; one unit is one channel of the
public ``ChannelGroup``.

"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from torch_pruning._helpers import _HybridIndex
from torch_pruning.dependency.node import Node

from .._utils.errors import GraphError
from .removal import PARAMETER
from .repair import split_sizes
from .tracing import Trace, module_near

Dim = Literal["out", "in"]

_UNMAPPED_TYPES = {ops.OPTYPE.UNBIND: "torch.unbind", ops.OPTYPE.EXPAND: "expand", ops.OPTYPE.CUSTOMIZED: "custom op"}


@dataclass
class RawGroup:
    """One group as extracted, before it becomes a public ``ChannelGroup``.

    ``refs`` are ``(name, kind, dim, indices)`` with ``indices[u]`` the layer channel of unit ``u``.
    """

    name: str
    size: int
    refs: list[tuple[str, str, Dim, list[int]]]
    stride: int | None
    reason: str | None
    constrained_by: list[str] = field(default_factory=list)  # split / slice ops whose parts must stay equal


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def root_modules(model: nn.Module, dg: tp.DependencyGraph) -> Iterator[tuple[str, nn.Module]]:
    """Conv and Linear layers that took part in the traced forward, in model order."""
    for name, module in model.named_modules():
        if isinstance(module, (ops.TORCH_CONV, nn.Linear)) and module in dg.module2node:
            yield name, module


#: The most index entries one root's propagation may map before graph building gives up on that layer (a
#: layer with C output channels feeding a flatten into nn.Linear over an H x W map needs about C * H * W).
MAX_PROPAGATION = 20_000_000
#: How many ops past a (non-shuffle) reshape propagation follows: enough for flatten -> dropout -> nn.Linear and
#: for both sides of an attention product (matmul reshapes its operands itself).
MAX_HOPS_AFTER_RESHAPE = 10


def propagate(
    dg: tp.DependencyGraph,
    node: Node,
    handler: Callable[..., Any],
    channels: Sequence[int],
    *,
    free_reshapes: Collection[Node] = (),
    name: str = "?",
) -> tuple[dict[tuple[Node, Callable[..., Any]], dict[int, int]], list[Node]]:
    """Follow dependencies from removing output channels ``channels`` of ``node``.

    A reshape expands every channel into the positions it spreads over. What a removal can still follow past it
    is a flatten into ``nn.Linear`` a few ops later (or an attention product, named as such); a chain of ops past
    it (attention reshaping channels into heads and areas and back, around a cycle without end; a detection
    head's box decoding) cannot be followed. Propagation therefore stops :data:`MAX_HOPS_AFTER_RESHAPE` ops after
    the first reshape that is not part of a recognised channel shuffle (``free_reshapes``): the node is recorded
    in the returned list, and the group it belongs to cannot be pruned.

    Returns:
        For each (node, pruning function) reached, a map from that node's channel index to the position in
        ``channels`` of the root channel it follows; and the reshape nodes where propagation stopped.

    Raises:
        GraphError: the propagation from this layer (``name``) still maps more than :data:`MAX_PROPAGATION`
            index entries: graph building stays bounded, the message names the layer.
    """
    start = [_HybridIndex(idx=c, root_idx=k) for k, c in enumerate(channels)]
    items: dict[tuple[Node, Callable[..., Any]], dict[int, int]] = {
        (node, handler): {c: k for k, c in enumerate(channels)}
    }
    # The index mappings act on each index on its own, so an index that already reached a node adds nothing when
    # it arrives again, unless it arrives fresher (fewer ops past a reshape, or none): only those travel on. The
    # state of an index: -1 before any reshape, else the ops passed since the first reshape on its path.
    seen: dict[tuple[Node, Callable[..., Any]], dict[_HybridIndex, int]] = {}
    stops: list[tuple[Node, Callable[..., Any], list[_HybridIndex], int]] = []
    stack: list[tuple[Node, Callable[..., Any], list[_HybridIndex], int]] = [(node, handler, start, -1)]
    work = 0
    while stack:
        cur, fn, idxs, hops = stack.pop()
        for dep in cur.dependencies:
            if dep.trigger != fn:
                continue
            new = idxs
            for mapping in dep.index_mapping:
                if mapping is not None:
                    new = mapping(new)
            is_reshape = dep.target.type == ops.OPTYPE.RESHAPE and dep.target not in free_reshapes
            after = hops + 1 if hops >= 0 else (0 if is_reshape else -1)
            known = seen.setdefault((dep.target, dep.handler), {})
            new = [h for h in dict.fromkeys(new) if known.get(h, MAX_HOPS_AFTER_RESHAPE + 2) > after]
            if not new:
                continue
            known.update(dict.fromkeys(new, after))
            work += len(new)
            if work > MAX_PROPAGATION:
                raise GraphError(
                    f"{name}: its channels spread over more than {MAX_PROPAGATION:,} positions of other tensors "
                    f"(last at {module_near(dg, dep.target)}); the graph cannot map this layer"
                )
            slot = items.setdefault((dep.target, dep.handler), {})
            for h in new:
                if h.root_idx is not None:
                    slot.setdefault(int(h.idx), int(h.root_idx))
            if after > MAX_HOPS_AFTER_RESHAPE:
                stops.append((dep.target, dep.handler, new, after))
                continue
            stack.append((dep.target, dep.handler, new, after))
    # A stop counts unless every index it held reached that node fresher by another path later.
    cut = [n for n, fn, held, after in stops if any(seen[(n, fn)][h] == after for h in held)]
    return items, cut


def _even_parts(total: int, sizes: Sequence[int]) -> int | None:
    """Part size when ``sizes`` split ``total`` channels into equal parts, else None."""
    if len(sizes) > 1 and len(set(sizes)) == 1 and sizes[0] * len(sizes) == total:
        return sizes[0]
    return None


def _couple(uf: _UnionFind, mapping: dict[int, int], total: int, part: int) -> bool:
    """Union the root channels that sit at the same position of each ``part``-sized slice of ``total`` channels.

    Returns False when ``mapping`` (layer channel -> root channel) does not cover all ``total`` channels.
    """
    if len(mapping) != total or any(i not in mapping for i in range(total)):
        return False
    for i in range(part, total):
        uf.union(mapping[i % part], mapping[i])
    return True


def _out_item(
    items: dict[tuple[Node, Callable[..., Any]], dict[int, int]], dg: tp.DependencyGraph, node: Node
) -> dict[int, int] | None:
    """The channel map of ``node``'s output side inside a group (its in-side when in and out share a function)."""
    pruner = dg.get_pruner_of_module(node.module)
    for (n, fn), mapping in items.items():
        if n is node and (pruner is None or fn == pruner.prune_out_channels):
            return mapping
    return None


def build_group(
    tr: Trace,
    name: str,
    module: nn.Module,
    items: dict[tuple[Node, Callable[..., Any]], dict[int, int]],
    ignored: set[nn.Module],
    stride: int | None,
    channels: int,
) -> RawGroup:
    """Turn the propagated items of ``channels`` root channels into a RawGroup: units, layer refs, reason."""
    dg = tr.dg
    uf = _UnionFind(channels)
    reasons: list[str] = []
    constrained: list[str] = []
    layers: list[tuple[str, str, Dim, dict[int, int]]] = []
    has_reshape = has_linear_in = False
    for (node, fn), mapping in items.items():
        target, kind = node.module, node.type
        op = type(node.grad_fn).__name__ if node.grad_fn is not None else "?"
        if kind == ops.OPTYPE.OUTPUT:
            reasons.append(f"channels form a model output (tensor of shape {tuple(target.shape)})")
        elif node in tr.output_nodes and target not in dg._module2name:
            reasons.append(f"channels form a model output (op {op} {module_near(dg, node)})")
        elif node in tr.unmapped_ops:
            reasons.append(f"{tr.unmapped_ops[node]}, which cannot follow a removal")
        elif kind == ops.OPTYPE.CONCAT and node in tr.unmapped_concats:
            reasons.append(
                f"torch.cat (op {op} {module_near(dg, node)}) joins a tensor whose channels cannot be traced"
            )
        elif kind == ops.OPTYPE.PARAMETER:
            # A layer scale / implicit parameter indexed by channel loses the channels it multiplies or shifts.
            pname = dg._param_to_name.get(target, "?")
            if sum(s > 1 for s in target.shape) == 1 and pname != "?":
                layers.append((pname, PARAMETER, "out", mapping))
            else:
                reasons.append(f"channels index the bare nn.Parameter '{pname}' {tuple(target.shape)}")
        elif kind in _UNMAPPED_TYPES:
            reasons.append(f"channels pass through {_UNMAPPED_TYPES[kind]} (op {op}), which is not mapped")
        elif kind == ops.OPTYPE.RESHAPE and node in tr.shuffle_parts:
            # A channel shuffle: position k of every shuffle group is one unit (see .shuffle).
            width, positions = tr.shuffle_parts[node]
            src = _out_item(items, dg, node.inputs[0]) if node.inputs else None
            if src is None or not _couple(uf, src, width, positions):
                reasons.append(f"channel shuffle at op {op} {module_near(dg, node)} takes channels from several groups")
        elif kind == ops.OPTYPE.RESHAPE:
            has_reshape = has_reshape or node not in tr.shuffle_nodes
        elif kind == ops.OPTYPE.SPLIT:
            info = split_sizes(node.grad_fn)
            if info is None:
                continue
            total, sizes = info
            part = _even_parts(total, sizes)
            if part is None:
                reasons.append(f"split at op {op} has unequal parts {tuple(sizes)} that cannot follow a removal")
            elif not _couple(uf, mapping, total, part):
                reasons.append(f"split at op {op} takes channels from several channel groups")
            else:
                constrained.append(f"{op} {module_near(dg, node)}")
        elif kind == ops.OPTYPE.SLICE:
            bounds = channel_slice(node)
            if bounds is None:
                continue
            total, start, end, step = bounds
            length = end - start
            src = _out_item(items, dg, node.inputs[0]) if node.inputs else None
            if step != 1 or length <= 0 or total % length or start % length:
                reasons.append(
                    f"channel slice [{start}:{end}:{step}] of a {total}-channel tensor (op {op} "
                    f"{module_near(dg, node)}) is not an equal part and cannot follow a removal"
                )
            elif src is None or not _couple(uf, src, total, length):
                reasons.append(f"channel slice at op {op} takes channels from several channel groups")
            else:
                constrained.append(f"{op} {module_near(dg, node)}")
        elif (
            isinstance(target, nn.Module)
            and target in dg._module2name
            and kind not in (ops.OPTYPE.CONCAT, ops.OPTYPE.ELEMENTWISE)
        ):
            lname = dg._module2name[target]
            lpruner = dg.get_pruner_of_module(target)
            same_fn = lpruner.prune_out_channels == lpruner.prune_in_channels
            dim: Dim = "out" if fn == lpruner.prune_out_channels else "in"
            if target in ignored:
                reasons.append(f"touches ignored layer '{lname}' ({dim})")
            if node in tr.output_nodes and dim == "out":
                shapes = tr.out_shapes.get(target, [])
                reasons.append(f"channels form a model output ('{lname}' output {', '.join(map(str, shapes))})")
            if isinstance(target, nn.Linear) and dim == "in":
                has_linear_in = True
            if isinstance(target, ops.TORCH_CONV) and target.groups > 1:
                c = target.out_channels if dim == "out" else target.in_channels
                if same_fn and not node.inputs:
                    reasons.append(f"depthwise conv '{lname}' reads a model input, whose channels are fixed")
                elif same_fn and target.in_channels != target.out_channels:
                    reasons.append(f"depthwise conv '{lname}' with a channel multiplier is not supported")
                elif not same_fn and not _couple(uf, mapping, c, c // target.groups):
                    reasons.append(f"grouped conv '{lname}' takes channels from several channel groups")
            if isinstance(target, nn.GroupNorm) and target.num_groups > 1:
                part = target.num_channels // target.num_groups
                if not _couple(uf, mapping, target.num_channels, part):
                    reasons.append(f"GroupNorm '{lname}' takes channels from several channel groups")
            layers.append((lname, type(target).__name__, dim, mapping))
            if same_fn and isinstance(target, ops.TORCH_CONV):
                layers.append((lname, type(target).__name__, "in", mapping))
    if has_reshape and not has_linear_in:
        reasons.append("channels pass through a reshape / view that is not a flatten into nn.Linear")

    units: dict[int, list[int]] = {}
    for r in range(channels):
        units.setdefault(uf.find(r), []).append(r)
    size = len(units)
    unit_of = list(range(channels))
    if size != channels:
        for u, (_, members) in enumerate(sorted(units.items())):
            for r in members:
                unit_of[r] = u
    refs: list[tuple[str, str, Dim, list[int]]] = []
    for lname, kind_name, dim, mapping in layers:
        if size == channels and len(mapping) == channels:
            inverse = {root: idx for idx, root in mapping.items()}
            if len(inverse) == channels:  # one layer channel per group channel: the common case
                refs.append((lname, kind_name, dim, [inverse[r] for r in range(channels)]))
                continue
        per_unit: list[list[int]] = [[] for _ in range(size)]
        for idx, root in mapping.items():
            per_unit[unit_of[root]].append(idx)
        counts = {len(p) for p in per_unit}
        if len(counts) != 1 or 0 in counts:
            reasons.append(f"channels map irregularly onto layer '{lname}' ({dim})")
            continue
        ordered = [sorted(p) for p in per_unit]
        for slot in range(counts.pop()):
            refs.append((lname, kind_name, dim, [p[slot] for p in ordered]))
    if size < 2:
        reasons.append("the group has a single channel unit; removing it would remove all channels")
    reason = "; ".join(dict.fromkeys(reasons)) if reasons else None
    return RawGroup(name, size, refs, stride, reason, constrained)


def channel_slice(node: Node) -> tuple[int, int, int, int] | None:
    """(channels, start, end, step) of a slice that selects part of dim 1, else None."""
    g = node.grad_fn
    in_shape = tuple(getattr(g, "_saved_self_sym_sizes", ()))
    if not in_shape or g._saved_dim % len(in_shape) != 1:
        return None
    total = int(in_shape[1])
    start, end, step = int(g._saved_start), min(int(g._saved_end), total), int(g._saved_step)
    return None if (start, end, step) == (0, total, 1) else (total, start, end, step)


def extract_groups(
    model: nn.Module,
    tr: Trace,
    ignored: set[nn.Module],
) -> list[RawGroup]:
    """Every channel group of the model, one per Conv/Linear whose output channels are not already covered."""
    dg = tr.dg
    covered: dict[nn.Module, set[int]] = {}  # output channels of a layer already in some group
    touched: dict[Node, list[int]] = {}  # node -> groups with channels in its output
    groups: list[RawGroup] = []
    for name, module in root_modules(model, dg):
        pruner = dg.get_pruner_of_module(module)
        done = covered.get(module, set())
        todo = [c for c in range(int(pruner.get_out_channels(module) or 0)) if c not in done]
        if not todo:
            continue
        items, cut = propagate(
            dg, dg.module2node[module], pruner.prune_out_channels, todo, free_reshapes=tr.shuffle_nodes, name=name
        )
        for (node, fn), mapping in items.items():
            is_layer = isinstance(node.module, (ops.TORCH_CONV, nn.Linear))
            if is_layer and fn == dg.get_pruner_of_module(node.module).prune_out_channels:
                covered.setdefault(node.module, set()).update(mapping)
        for node, _ in items:
            touched.setdefault(node, []).append(len(groups))
        group = build_group(tr, name, module, items, ignored, _stride(tr, module), len(todo))
        notes = [f"channels spread past a reshape to op {_op(n)} {module_near(dg, n)}" for n in cut]
        if notes:
            notes.append("which cannot follow a removal")
            group.reason = "; ".join(r for r in (group.reason, ", ".join(dict.fromkeys(notes))) if r)
        groups.append(group)
    # A slice sees only its own range, so groups feeding the rest of its input never reach it; yet removing
    # their channels moves where the slice starts. Such groups cannot be pruned.
    for node in dg.module2node.values():
        if node.type == ops.OPTYPE.SLICE and node.inputs and channel_slice(node) is not None:
            feeding = sorted(set(touched.get(node.inputs[0], [])))
            if len(feeding) > 1:
                op = type(node.grad_fn).__name__
                for gi in feeding:
                    note = f"channel slice (op {op} {module_near(dg, node)}) of a tensor spanning several groups"
                    groups[gi].reason = "; ".join(r for r in (groups[gi].reason, note) if r)
    return groups


def _op(node: Node) -> str:
    return type(node.grad_fn).__name__ if node.grad_fn is not None else "?"


def _stride(tr: Trace, module: nn.Module) -> int | None:
    """Input size over output size of a module's 4-D output; None if not 4-D or if calls disagree (shared layers)."""
    if tr.input_hw is None:
        return None
    strides = set()
    for shape in tr.out_shapes.get(module, []):
        if len(shape) != 4 or shape[2] <= 0 or shape[3] <= 0:
            return None
        strides.add(max(1, round(max(tr.input_hw[0] / shape[2], tr.input_hw[1] / shape[3]))))
    return strides.pop() if len(strides) == 1 else None
