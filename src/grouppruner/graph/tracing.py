"""Tracing: one forward pass builds Torch-Pruning's DependencyGraph (without its index-mapping inference, which
:mod:`.repair` replaces) and records the output shapes of every layer and of the model.

Weighted functional ops outside a registered layer are refused here (:func:`check_unsupported`), since
Torch-Pruning would treat them as element-wise and mis-couple channels.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from torch_pruning.dependency.node import Node

from .._utils.calls import call_model, eval_mode
from .._utils.errors import GraphError, InvalidOptionError

logger = logging.getLogger(__name__)

# Ops that compute with weights although no registered module produced them (F.conv2d with a bare Parameter,
# x @ w, ...). Torch-Pruning would treat them as element-wise and mis-couple channels.
_WEIGHTED_OP = re.compile(r"Convolution|Addmm|^MmBackward|Bmm|Matmul|Linear|Embedding|BatchNorm|GroupNorm|LayerNorm")
# Products that are attention when neither side is a parameter.
_PRODUCT_OP = re.compile(r"^MmBackward|Bmm|Matmul")
# Ops between a parameter and the op using it that only change its shape (F.linear transposes its weight).
_SHAPE_ONLY = re.compile(r"^(T|Transpose|Permute|View|Reshape|UnsafeView|Expand|Unsqueeze|Squeeze)Backward")


def flat_tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors of a nested list / tuple / dict, in order; anything else (``None``, numbers) is left out."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in flat_tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in flat_tensors(item)]
    return []


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
    shuffle_nodes: set[Node] = field(default_factory=set)  # the ops of channel shuffles (see .shuffle)
    shuffle_parts: dict[Node, tuple[int, int]] = field(default_factory=dict)  # first view -> (channels, P)


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
        raise InvalidOptionError("ChannelGraph traces autograd links and cannot be built inside torch.inference_mode()")
    flags = [(p, p.requires_grad) for p in model.parameters()]
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
                message = f"output_transform failed on the outputs of {type(m).__name__}: {err}"
                raise InvalidOptionError(message) from err
        tensors = flat_tensors(out)
        output_shapes.extend(tuple(t.shape) for t in tensors)
        output_fns.extend(t.grad_fn for t in tensors if t.grad_fn is not None)
        return tensors  # Torch-Pruning's own flattening fails on None entries (RT-DETR's eval output)

    # Torch-Pruning does not remove its tracing hooks when the forward raises; remember what was there.
    existing = {m: set(m._forward_hooks) for m in model.modules()}
    for m in model.modules():
        if isinstance(m, (ops.TORCH_CONV, nn.Linear)):
            m.register_forward_hook(record)
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            dg = _build_dependency_graph(model, example_inputs, forward)
    finally:
        for m, keep in existing.items():
            for key in set(m._forward_hooks) - keep:
                del m._forward_hooks[key]
        for p, flag in flags:
            p.requires_grad_(flag)
    inputs_4d = [t for t in flat_tensors(example_inputs) if t.dim() == 4]
    input_hw = (int(inputs_4d[0].shape[2]), int(inputs_4d[0].shape[3])) if inputs_4d else None
    by_fn = node_of_gradfn(dg)
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


def _parameters_used(grad_fn: Any) -> list[torch.Tensor]:
    """Parameters an op reads directly or through shape-only ops on them (``w.t()``, ``w.view(...)``)."""
    found: list[torch.Tensor] = []
    frontier = [(fn, 0) for fn, _ in grad_fn.next_functions if fn is not None]
    while frontier:
        fn, depth = frontier.pop()
        if type(fn).__name__ == "AccumulateGrad":
            found.append(fn.variable)
        elif depth < 2 and _SHAPE_ONLY.search(type(fn).__name__):
            frontier.extend((f, depth + 1) for f, _ in fn.next_functions if f is not None)
    return found


def check_unsupported(dg: tp.DependencyGraph) -> tuple[dict[Node, str], set[Node]]:
    """Classify the weighted ops Torch-Pruning saw as element-wise; raise GraphError for unmappable ones.

    - An op on the parameters of a traced layer (a ``BatchNorm2d`` subclass calling ``F.batch_norm`` itself, a
      ``LayerNorm`` applied channels-last through ``F.layer_norm``, the matmul inside ``nn.Linear`` on a 4-D
      input) is that layer's own computation: channel-wise for norms, and Torch-Pruning already holds the layer
      as a node. These op nodes are returned (second item) so that channel-count checks skip them.
    - A product of two activations (``q @ k``: attention) is no weight op; it fixes the channels that form the
      head layout. Returned as ``{op node: description}`` (first item) so that the groups reaching it are not
      prunable.
    - Anything else (``F.conv2d`` / ``x @ w`` on a bare ``nn.Parameter``) raises GraphError naming the op, the
      module next to it and the parameter.
    """
    owned = {
        id(p) for module in dg.module2node if isinstance(module, nn.Module) for p in module.parameters(recurse=False)
    }
    products: dict[Node, str] = {}
    own: set[Node] = set()
    for node in dg.module2node.values():
        if node.type not in (ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.OUTPUT) or node.grad_fn is None:
            continue
        op_name = type(node.grad_fn).__name__
        if not _WEIGHTED_OP.search(op_name):
            continue
        params = _parameters_used(node.grad_fn)
        if params and all(id(p) in owned for p in params):
            own.add(node)
            continue
        if not params and _PRODUCT_OP.search(op_name):
            products[node] = (
                f"op {op_name} {module_near(dg, node)} multiplies two activations (attention: q @ k, attn @ v), "
                "whose channels form the head layout"
            )
            continue
        names = [dg._param_to_name.get(p, tuple(p.shape)) for p in params] or ["a tensor not among the parameters"]
        raise GraphError(
            f"op {op_name} {module_near(dg, node)} computes with weights outside a registered layer "
            f"({', '.join(map(str, names))}: a functional call such as F.conv2d / F.linear / x @ w on a bare "
            "nn.Parameter); ChannelGraph cannot map its channels. Use nn.Conv2d / nn.Linear / nn.BatchNorm2d "
            "modules."
        )
    return products, own


def node_of_gradfn(dg: tp.DependencyGraph) -> dict[Any, Node]:
    return {node.grad_fn: node for node in dg.module2node.values() if node.grad_fn is not None}
