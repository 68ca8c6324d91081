"""Tracing for :mod:`grouppruner.graph`: one forward pass builds Torch-Pruning's DependencyGraph, then its index
mappings are repaired from autograd metadata.

Torch-Pruning 1.6.1 infers split and concat sizes from neighbouring layers and treats every unknown op as
element-wise. Here split sizes come from the saved arguments of the split, concat sizes from the recorded
shapes of the tensors fed in, each split output's part from its autograd edge, and couplings through ops that
change the channel count (channel reductions, one-channel broadcasts) are dropped.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.index_mapping import _ConcatIndexMapping, _SplitIndexMapping
from torch_pruning.dependency.node import Node

logger = logging.getLogger(__name__)

# Ops that compute with weights although no registered module produced them (F.conv2d with a bare Parameter,
# x @ w, ...). Torch-Pruning would treat them as element-wise and mis-couple channels.
_WEIGHTED_OP = re.compile(r"Convolution|Addmm|^MmBackward|Bmm|Matmul|Linear|Embedding|BatchNorm|GroupNorm|LayerNorm")


class GraphError(ValueError):
    """The model uses something ChannelGraph cannot map; the message names the module and the op."""


def describe_inputs(inputs: Any) -> str:
    """Short description of example inputs for error messages, e.g. ``Tensor(1, 3, 32, 32)``."""
    if isinstance(inputs, torch.Tensor):
        return f"Tensor{tuple(inputs.shape)}"
    if isinstance(inputs, (list, tuple)):
        return f"{type(inputs).__name__}[" + ", ".join(describe_inputs(x) for x in inputs) + "]"
    if isinstance(inputs, dict):
        return "dict{" + ", ".join(f"{k}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    return type(inputs).__name__


def call_model(
    model: nn.Module,
    inputs: Any,
    forward_fn: Callable[[nn.Module, Any], Any] | None,
) -> Any:
    """Run the model on example inputs the way ChannelGraph documents, wrapping its errors with context."""
    try:
        if forward_fn is not None:
            return forward_fn(model, inputs)
        if isinstance(inputs, dict):
            return model(**inputs)
        if isinstance(inputs, (list, tuple)):
            return model(*inputs)
        return model(inputs)
    except Exception as err:
        raise ValueError(
            f"forward of {type(model).__name__} failed on example_inputs {describe_inputs(inputs)}: "
            f"{type(err).__name__}: {err}"
        ) from err


def flat_tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors of a nested list / tuple / dict, in order."""
    return [t for t in tp.utils.flatten_as_list(obj) if isinstance(t, torch.Tensor)]


@dataclass
class Trace:
    """What one traced forward pass tells: the dependency graph, output shapes of roots, model outputs."""

    dg: tp.DependencyGraph
    out_shapes: dict[nn.Module, list[tuple[int, ...]]]
    input_hw: tuple[int, int] | None
    output_shapes: list[tuple[int, ...]]
    output_nodes: set[Node] = field(default_factory=set)
    unmapped_concats: set[Node] = field(default_factory=set)
    unmapped_ops: dict[Node, str] = field(default_factory=dict)


def trace(
    model: nn.Module,
    example_inputs: Any,
    forward_fn: Callable[[nn.Module, Any], Any] | None,
    output_transform: Callable[[Any], Any] | None,
) -> Trace:
    """Build Torch-Pruning's DependencyGraph and record root output shapes in the same forward pass.

    Parameters are switched to ``requires_grad=True`` and autograd is enabled for the trace (Torch-Pruning
    follows ``grad_fn`` links, so frozen layers would vanish from the graph); flags and train/eval modes of
    every module are restored afterwards.
    """
    if torch.is_inference_mode_enabled():
        raise ValueError("ChannelGraph traces autograd links and cannot be built inside torch.inference_mode()")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    out_shapes: dict[nn.Module, list[tuple[int, ...]]] = {}
    output_shapes: list[tuple[int, ...]] = []
    output_fns: list[Any] = []

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            out_shapes.setdefault(module, []).append(tuple(output.shape))

    def forward(m: nn.Module, inputs: Any) -> Any:
        out = call_model(m, inputs, forward_fn)
        if output_transform is not None:
            try:
                out = output_transform(out)
            except Exception as err:
                raise ValueError(f"output_transform failed on the outputs of {type(m).__name__}: {err}") from err
        tensors = flat_tensors(out)
        output_shapes.extend(tuple(t.shape) for t in tensors)
        output_fns.extend(t.grad_fn for t in tensors if t.grad_fn is not None)
        return out

    # Torch-Pruning does not remove its tracing hooks when the forward raises; remember what was there.
    existing = {m: set(m._forward_hooks) for m in model.modules()}
    for m in model.modules():
        if isinstance(m, (ops.TORCH_CONV, nn.Linear)):
            m.register_forward_hook(record)
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            dg = _build_dependency_graph(model, example_inputs, forward)
    finally:
        for m, keep in existing.items():
            for key in set(m._forward_hooks) - keep:
                del m._forward_hooks[key]
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training
    inputs_4d = [t for t in flat_tensors(example_inputs) if t.dim() == 4]
    input_hw = (int(inputs_4d[0].shape[2]), int(inputs_4d[0].shape[3])) if inputs_4d else None
    by_fn = _node_of_gradfn(dg)
    output_nodes = {by_fn[fn] for fn in output_fns if fn in by_fn}
    return Trace(dg, out_shapes, input_hw, output_shapes, output_nodes)


def _build_dependency_graph(model: nn.Module, example_inputs: Any, forward: Callable[..., Any]) -> Any:
    """``DependencyGraph.build_dependency`` of Torch-Pruning 1.6.1 without its last two steps.

    Its shape and index-mapping inference crashes on some concat / split combinations
    (``sum()`` over an unknown size); :func:`fix_index_mappings` computes those from autograd metadata instead.
    """
    dg = tp.DependencyGraph()
    dg.verbose = False
    dg.model = model
    dg._module2name = {module: name for name, module in model.named_modules()}
    dg.ignored_params = []
    dg._param_to_name, dg.unwrapped_parameters = dg._detect_unwrapped_parameters(None)
    dg.module2node = dg._trace(model, example_inputs, forward, output_transform=None)
    dg._build_dependency(dg.module2node)
    return dg


def module_near(dg: tp.DependencyGraph, node: Node) -> str:
    """The closest named module before or after an op node, for error messages."""
    for direction in ("inputs", "outputs"):
        seen: set[Node] = set()
        frontier = list(getattr(node, direction))
        while frontier:
            n = frontier.pop(0)
            if n in seen:
                continue
            seen.add(n)
            name = dg._module2name.get(n.module)
            if isinstance(name, str) and not isinstance(n.module, nn.Parameter):
                return f"{'after' if direction == 'inputs' else 'before'} module '{name}'"
            frontier.extend(getattr(n, direction))
    return "at the model input"


def check_unsupported(dg: tp.DependencyGraph) -> None:
    """Raise GraphError for weighted functional ops, which Torch-Pruning would mistake for element-wise ones."""
    for node in dg.module2node.values():
        if node.type in (ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.OUTPUT) and node.grad_fn is not None:
            op_name = type(node.grad_fn).__name__
            if _WEIGHTED_OP.search(op_name):
                raise GraphError(
                    f"op {op_name} {module_near(dg, node)} computes with weights outside a registered layer "
                    "(a functional call such as F.conv2d / F.linear / x @ w on a bare nn.Parameter); "
                    "ChannelGraph cannot map its channels. Use nn.Conv2d / nn.Linear / nn.BatchNorm2d modules."
                )


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


def _node_of_gradfn(dg: tp.DependencyGraph) -> dict[Any, Node]:
    return {node.grad_fn: node for node in dg.module2node.values() if node.grad_fn is not None}


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
    return [
        (offsets[i], offsets[i + 1]) for i, (fn, _) in enumerate(g.next_functions) if _is_traced_input(dg, fn)
    ]


def fix_index_mappings(dg: tp.DependencyGraph) -> set[Node]:
    """Recompute split and concat index mappings from autograd metadata; return concats that cannot be mapped.

    Torch-Pruning 1.6.1 misreads ``chunk`` / ``split(int)`` sizes on current PyTorch (it finds no
    ``_saved_self_sizes`` and falls back to guessing from consumers), numbers split outputs by the order their
    consumers appear (so ``x.split(c, 1)[1]`` is mapped as part 0) and infers concat sizes from neighbouring
    layers, which fails behind splits. Split sizes come from the saved arguments, each output's part from its
    autograd edge (``output_nr``), concat sizes from the recorded shapes of the tensors fed in.
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
    for node in dg.module2node.values():
        if node.type in updaters:
            try:
                updaters[node.type](dg, node)
            except Exception as err:  # Torch-Pruning's shape inference on an unusual graph
                raise GraphError(
                    f"cannot map channels through op {type(node.grad_fn).__name__} {module_near(dg, node)}: "
                    f"torch-pruning failed with {type(err).__name__}: {err}"
                ) from err
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


def cut_channel_mismatches(dg: tp.DependencyGraph) -> dict[Node, str]:
    """Handle ops that Torch-Pruning treats as element-wise although they do not keep channel ``i`` as ``i``.

    A reduction over channels (``x.mean(1, keepdim=True)``, ``x.amax(1)``: CBAM-style spatial attention) and a
    one-channel map broadcast onto a feature map (``x * attention``) couple nothing: the edge is removed from the
    dependency graph (the output width does not depend on that input's width). Any other change of the channel
    count (``x.repeat(1, 2, 1, 1)``, ...) is returned as ``{op node: description}``; groups reaching it are not
    prunable, since removing input channels would change the op's output width.
    """
    by_fn = _node_of_gradfn(dg)
    unmapped: dict[Node, str] = {}
    for node in list(dg.module2node.values()):
        g = node.grad_fn
        if node.type != ops.OPTYPE.ELEMENTWISE or g is None:
            continue
        out_ch = _channels(g, 0)
        reduces = _reduces_channels(g)
        for fn, nr in g.next_functions:
            src = by_fn.get(fn)
            in_ch = _channels(fn, nr)
            if src is None or (not reduces and (in_ch is None or out_ch is None or in_ch == out_ch)):
                continue
            if reduces or in_ch == 1:
                logger.debug("no channel coupling through %s (%s -> %s channels)", type(g).__name__, in_ch, out_ch)
                src.dependencies = [d for d in src.dependencies if d.target is not node]
                node.dependencies = [d for d in node.dependencies if d.target is not src]
            else:
                unmapped[node] = f"op {type(g).__name__} {module_near(dg, node)} maps {in_ch} to {out_ch} channels"
    return unmapped


def _reduces_channels(grad_fn: Any) -> bool:
    if not hasattr(grad_fn, "_saved_keepdim") or not hasattr(grad_fn, "_saved_dim"):
        return False
    dims = grad_fn._saved_dim if isinstance(grad_fn._saved_dim, tuple) else (grad_fn._saved_dim,)
    ndim = len(getattr(grad_fn, "_saved_self_sym_sizes", ())) or 4
    return any((d - 2**64 if d >= 2**63 else d) % ndim == 1 for d in dims)


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
