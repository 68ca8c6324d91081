"""Repairs of Torch-Pruning's index mappings, computed from autograd metadata of the traced pass.

Torch-Pruning 1.6.1 infers split and concat sizes from neighbouring layers and treats every unknown op as
element-wise. Here split sizes come from the saved arguments of the split, concat sizes from the recorded
shapes of the tensors fed in, each split output's part from its autograd edge, and couplings through ops that
change the channel count (channel reductions, one-channel broadcasts) are dropped.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch_pruning as tp
from torch_pruning import ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.index_mapping import _ConcatIndexMapping, _SplitIndexMapping
from torch_pruning.dependency.node import Node

from .tracing import module_near, node_of_gradfn

logger = logging.getLogger(__name__)


def split_sizes(grad_fn: Any) -> tuple[int, list[int]] | None:
    """(channel count, part sizes) of a split along dim 1, or None when the split is along another dim."""
    sizes = tuple(getattr(grad_fn, "_saved_self_sym_sizes", ()))
    dim = getattr(grad_fn, "_saved_dim", None)
    if not sizes or dim is None or dim % len(sizes) != 1:
        return None
    total = int(sizes[1])
    if hasattr(grad_fn, "_saved_split_sizes"):
        return total, [int(s) for s in grad_fn._saved_split_sizes]
    step = int(grad_fn._saved_split_size)
    return total, [min(step, total - start) for start in range(0, total, step)]


def _channels(fn: Any, nr: int) -> int | None:
    """Channel count (dim 1) of output ``nr`` of an autograd node, from its recorded metadata."""
    if fn is None:
        return None
    if type(fn).__name__ == "AccumulateGrad":
        shape = tuple(fn.variable.shape)
    else:
        meta = getattr(fn, "_input_metadata", ())
        if nr >= len(meta):
            return None
        shape = tuple(meta[nr].shape)
    return int(shape[1]) if len(shape) > 1 else None


def _is_traced_input(dg: tp.DependencyGraph, fn: Any) -> bool:
    """Whether Torch-Pruning made a graph input of this autograd edge (it skips constants and wrapped leaves)."""
    if fn is None:
        return False
    if type(fn).__name__ == "AccumulateGrad":
        return any(fn.variable is p for p, _ in dg.unwrapped_parameters)
    return True


def _concat_ranges(dg: tp.DependencyGraph, node: Node) -> list[tuple[int, int]] | None:
    """Channel range of each traced input of a channel concat, or None when it cannot be determined.

    Sizes come from autograd metadata; one argument that does not depend on the parameters (a constant such as
    coordinate channels) is allowed, its size being the rest of the output.
    """
    g = node.grad_fn
    total = _channels(g, 0)
    meta = getattr(g, "_input_metadata", ())
    ndim = len(meta[0].shape) if meta else 4
    if ndim > 1 and getattr(g, "_saved_dim", 1) % ndim != 1:
        return []  # not a channel concat: channels pass through unchanged
    sizes = [_channels(fn, nr) for fn, nr in g.next_functions]
    unknown = [i for i, size in enumerate(sizes) if size is None]
    if total is None or len(unknown) > 1:
        return None
    if unknown:
        sizes[unknown[0]] = total - sum(size for size in sizes if size is not None)
    offsets = [0, *itertools.accumulate(int(size or 0) for size in sizes)]
    if offsets[-1] != total:
        return None
    return [(offsets[i], offsets[i + 1]) for i, (fn, _) in enumerate(g.next_functions) if _is_traced_input(dg, fn)]


def fix_index_mappings(
    dg: tp.DependencyGraph,
    unmapped_ops: dict[Node, str],
    shuffle_nodes: set[Node] = frozenset(),  # type: ignore[assignment]
) -> set[Node]:
    """Recompute split and concat index mappings from autograd metadata; return concats that cannot be mapped.

    Torch-Pruning 1.6.1 misreads ``chunk`` / ``split(int)`` sizes on current PyTorch (it finds no
    ``_saved_self_sizes`` and falls back to guessing from consumers), numbers split outputs by the order their
    consumers appear (so ``x.split(c, 1)[1]`` is mapped as part 0) and infers concat sizes from neighbouring
    layers, which fails behind splits. Split sizes come from the saved arguments, each output's part from its
    autograd edge (``output_nr``), concat sizes from the recorded shapes of the tensors fed in. An op whose
    mapping Torch-Pruning cannot infer (its shape inference divides by zero on a channel shuffle) is added to
    ``unmapped_ops`` with the error, so the groups reaching it are fixed instead of the model being refused.
    The views of a recognised channel shuffle (``shuffle_nodes``) are left to :func:`.shuffle.map_shuffles`.
    """
    for node in dg.module2node.values():
        if node.type == ops.OPTYPE.SPLIT:
            info = split_sizes(node.grad_fn)
            if info is not None:
                node.module.split_sizes = info[1]
                node.module.offsets = [0, *itertools.accumulate(info[1])]
    unmapped: set[Node] = set()
    concats: dict[Node, list[tuple[int, int]]] = {}
    for node in dg.module2node.values():
        if node.type == ops.OPTYPE.CONCAT:
            ranges = _concat_ranges(dg, node)
            if ranges is None or (ranges and len(ranges) != len(node.inputs)):
                unmapped.add(node)
            elif ranges:
                concats[node] = ranges
                node.module.concat_sizes = [b - a for a, b in ranges]
    updaters = {
        ops.OPTYPE.RESHAPE: index_mapping.update_reshape_index_mapping,
        ops.OPTYPE.SLICE: index_mapping.update_slice_index_mapping,
        ops.OPTYPE.UNBIND: index_mapping.update_unbind_index_mapping,
        ops.OPTYPE.EXPAND: index_mapping.update_expand_index_mapping,
    }
    layout = channels_last(dg)
    for node in dg.module2node.values():
        if node in shuffle_nodes:
            continue
        if node.type == ops.OPTYPE.RESHAPE and _regroups_channels(node.grad_fn, _first_parent(node.grad_fn, layout)):
            # (N, C, H, W) -> (N, heads, C / heads, H * W) or (N, g, C / g, H, W): Torch-Pruning would model it as a
            # flatten and its index mapping grows without bound; the channels cannot follow a removal here.
            unmapped_ops.setdefault(
                node,
                f"reshape / view (op {type(node.grad_fn).__name__} {module_near(dg, node)}) regroups the channels "
                f"into shape {_shape(node.grad_fn, 0)}",
            )
            continue
        if node.type in updaters:
            try:
                updaters[node.type](dg, node)
            except Exception as err:  # Torch-Pruning's shape inference on an unusual graph
                logger.debug("index mapping of %s failed: %r", type(node.grad_fn).__name__, err)
                unmapped_ops.setdefault(
                    node,
                    f"op {type(node.grad_fn).__name__} {module_near(dg, node)} has channels torch-pruning cannot "
                    f"map ({type(err).__name__}: {err})",
                )
    for node in dg.module2node.values():
        if node.type == ops.OPTYPE.SPLIT and node.module.offsets is not None and split_sizes(node.grad_fn):
            _map_split_parts(node)
    for node, ranges in concats.items():
        _map_concat_parts(node, ranges)
    for node in concats:
        # From a concat back to an input that is itself a split part or a flatten, the concat's offset must be
        # undone first; Torch-Pruning always applies index_mapping[0] before [1].
        for dep in node.dependencies:
            first, second = dep.index_mapping
            if first is not None and isinstance(second, _ConcatIndexMapping) and second.reverse:
                dep.index_mapping = [second, first]
    return unmapped


def channels_last(dg: tp.DependencyGraph) -> dict[Any, bool]:
    """Whether each op's output holds channels in its last dim (between ``permute(0, 2, 3, 1)`` and back).

    Channels-first is the rule; a permute moving dim 1 last (ConvNeXt's ``LayerNorm`` + ``nn.Linear`` MLP) starts
    a channels-last stretch, one moving the last dim to 1 ends it, a conv always ends it. Other ops inherit the
    layout of their first traced input. Returned per autograd node, for the ops of the dependency graph.
    """
    layout: dict[Any, bool] = {}
    for fn in _topological(dg):
        name = type(fn).__name__
        dims = getattr(fn, "_saved_dims", None)
        if name.startswith("PermuteBackward") and dims:
            ndim = len(dims)
            parent = _first_parent(fn, layout)
            if dims[-1] == 1:
                layout[fn] = True
            elif dims[1] == ndim - 1:
                layout[fn] = False
            else:
                layout[fn] = parent
        elif name.startswith("ConvolutionBackward"):
            layout[fn] = False
        else:
            layout[fn] = _first_parent(fn, layout)
    return layout


def _first_parent(fn: Any, layout: dict[Any, bool]) -> bool:
    return next((layout[f] for f, _ in fn.next_functions if f in layout), False)


def _topological(dg: tp.DependencyGraph) -> list[Any]:
    """Autograd nodes of the graph's ops, inputs before outputs (iterative: deep nets exceed the recursion limit)."""
    nodes = {node.grad_fn for node in dg.module2node.values() if node.grad_fn is not None}
    order: list[Any] = []
    seen: set[Any] = set()
    for root in nodes:
        if root in seen:
            continue
        seen.add(root)
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            fn, expanded = stack.pop()
            if expanded:
                order.append(fn)
                continue
            stack.append((fn, True))
            for f, _ in fn.next_functions:
                if f in nodes and f not in seen:
                    seen.add(f)
                    stack.append((f, False))
    return order


def _count(fn: Any, nr: int, last: bool) -> int | None:
    """Channel count of output ``nr`` of an autograd node: dim 1, or the last dim in a channels-last stretch."""
    if not last:
        return _channels(fn, nr)
    shape = _shape(fn, nr)
    return int(shape[-1]) if shape else None


def _shape(fn: Any, nr: int) -> tuple[int, ...]:
    if type(fn).__name__ == "AccumulateGrad":
        return tuple(fn.variable.shape)
    meta = getattr(fn, "_input_metadata", ())
    return tuple(meta[nr].shape) if nr < len(meta) else ()


def _regroups_channels(grad_fn: Any, last: bool) -> bool:
    """A view / reshape that splits or merges dim 1 into something other than a flatten into ``(N, features)``.

    ``last``: the input is channels-last, where a view keeping the last dim (``nn.Linear`` on ``(N, H, W, C)``)
    keeps the channels.
    """
    before = tuple(getattr(grad_fn, "_saved_self_sym_sizes", ()))
    after = _shape(grad_fn, 0)
    if len(before) < 2 or len(after) < 2 or (len(after) == 2 and not last) or before[1] == after[1]:
        return False
    return not (last and before[-1] == after[-1])


def cut_channel_mismatches(dg: tp.DependencyGraph, own_ops: set[Node] = frozenset()) -> dict[Node, str]:  # type: ignore[assignment]
    """Handle ops that Torch-Pruning treats as element-wise although they do not keep channel ``i`` as ``i``.

    A reduction over channels (``x.mean(1, keepdim=True)``, ``x.amax(1)``: CBAM-style spatial attention) and a
    one-channel map broadcast onto a feature map (``x * attention``) couple nothing: the edge is removed from the
    dependency graph (the output width does not depend on that input's width). A permute between channels-first
    and channels-last keeps channel ``i`` as ``i`` (only its dim moves); parameters broadcast onto a feature map
    (layer scale ``(C, 1, 1)``, YOLOR implicit ``(1, C, 1, 1)``, channels-last ``(C,)``) are compared on the
    channel dim after right-aligning their shape. A channel shuffle (view into ``(N, g, C/g, H, W)`` and transpose)
    is named as such. Any other change of the channel count (``x.repeat(1, 2, 1, 1)``, ...) is returned as
    ``{op node: description}``; groups reaching it are not prunable, since removing input channels would change
    the op's output width. ``own_ops`` are a layer's own ops on its weights (see
    :func:`~.tracing.check_unsupported`), skipped.
    """
    by_fn = node_of_gradfn(dg)
    layout = channels_last(dg)
    unmapped: dict[Node, str] = {}
    for node in list(dg.module2node.values()):
        g = node.grad_fn
        if node.type != ops.OPTYPE.ELEMENTWISE or g is None or node in own_ops:
            continue
        if type(g).__name__.startswith("PermuteBackward"):
            continue
        last = layout.get(g, False)
        out_shape = _shape(g, 0)
        out_ch = _count(g, 0, last)
        reduces = _reduces_channels(g, last)
        for fn, nr in g.next_functions:
            src = by_fn.get(fn)
            if src is None:
                continue
            if src.type == ops.OPTYPE.PARAMETER:
                in_ch = _broadcast_channels(tuple(fn.variable.shape), len(out_shape), last)
            else:
                in_ch = _count(fn, nr, layout.get(fn, False))
            if not reduces and (in_ch is None or out_ch is None or in_ch == out_ch):
                continue
            if reduces or in_ch == 1:
                logger.debug("no channel coupling through %s (%s -> %s channels)", type(g).__name__, in_ch, out_ch)
                src.dependencies = [d for d in src.dependencies if d.target is not node]
                node.dependencies = [d for d in node.dependencies if d.target is not src]
            elif _is_shuffle(g):
                unmapped[node] = (
                    f"channel shuffle (view into {_shape(fn, nr)} and op {type(g).__name__} "
                    f"{module_near(dg, node)}) interleaves the channels of several groups"
                )
            else:
                unmapped[node] = f"op {type(g).__name__} {module_near(dg, node)} maps {in_ch} to {out_ch} channels"
    return unmapped


def _broadcast_channels(shape: tuple[int, ...], out_ndim: int, last: bool) -> int | None:
    """Size of a broadcast parameter along the output's channel dim (shapes align from the right)."""
    if not out_ndim:
        return None
    from_end = 1 if last else out_ndim - 1  # channel dim counted from the right, 1-based
    return int(shape[-from_end]) if len(shape) >= from_end else 1


def _is_shuffle(grad_fn: Any) -> bool:
    """A transpose of dims 1 and 2 of a 5-D view: ShuffleNet's channel shuffle."""
    if not type(grad_fn).__name__.startswith("TransposeBackward"):
        return False
    dims = {getattr(grad_fn, "_saved_dim0", None), getattr(grad_fn, "_saved_dim1", None)}
    return len(_shape(grad_fn, 0)) == 5 and dims in ({1, 2}, {1, -3}, {-4, 2}, {-4, -3})


def _reduces_channels(grad_fn: Any, last: bool = False) -> bool:
    if not hasattr(grad_fn, "_saved_keepdim") or not hasattr(grad_fn, "_saved_dim"):
        return False
    dims = grad_fn._saved_dim if isinstance(grad_fn._saved_dim, tuple) else (grad_fn._saved_dim,)
    ndim = len(getattr(grad_fn, "_saved_self_sym_sizes", ())) or 4
    channel = ndim - 1 if last else 1
    return any((d - 2**64 if d >= 2**63 else d) % ndim == channel for d in dims)


def _map_concat_parts(node: Node, ranges: list[tuple[int, int]]) -> None:
    """Offset mappings between each traced concat input (in argument order) and the concat output."""
    deps_in = [d for d in node.dependencies if d.target in node.inputs]
    for src, (start, end) in zip(node.inputs, ranges, strict=True):
        back = next((d for d in deps_in if d.target is src), None)
        if back is not None:
            deps_in.remove(back)
            back.index_mapping[1] = _ConcatIndexMapping(offset=[start, end], reverse=True)
    seen: dict[Node, int] = {}
    for src, (start, end) in zip(node.inputs, ranges, strict=True):
        n = seen.get(src, 0)
        seen[src] = n + 1
        forward = [d for d in src.dependencies if d.target is node]
        if n < len(forward):
            forward[n].index_mapping[1] = _ConcatIndexMapping(offset=[start, end], reverse=False)


def _map_split_parts(node: Node) -> None:
    offsets = node.module.offsets
    parts: dict[Node, list[int]] = {}
    for out in node.outputs:
        if out not in parts:
            parts[out] = [nr for fn, nr in out.grad_fn.next_functions if fn is node.grad_fn]
    taken: dict[Node, int] = {}
    for dep in node.dependencies:
        if dep.target in parts:
            k = taken.get(dep.target, 0)
            taken[dep.target] = k + 1
            nrs = parts[dep.target]
            part = nrs[min(k, len(nrs) - 1)] if nrs else 0
            dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[part : part + 2], reverse=False)
    for out, nrs in parts.items():
        k = 0
        for dep in out.dependencies:
            if dep.target is node:
                part = nrs[min(k, len(nrs) - 1)] if nrs else 0
                dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[part : part + 2], reverse=True)
                k += 1
