"""Which teacher channel each channel of a pruned model is: the map that channel-wise distillation needs.

A pruned student keeps a subset of its teacher's channels, in order (every plan's ``kept`` is sorted). For a
layer whose output is one channel group's channels (a conv / BatchNorm, or a block ending in one followed by
channel-wise activations), student channel ``j`` is teacher channel ``idx[j]``: compare
``student_feature`` with ``teacher_feature[:, idx]``, no projector needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._utils.errors import LayerNotFoundError, LayerOutputError, UsageError
from .._utils.wrappers import inner_name, unwrap
from ..graph import ChannelGraph
from .plan import applied_plans

__all__ = ["teacher_channels"]


def teacher_channels(
    model: nn.Module,
    layer: str,
    *,
    graph: ChannelGraph | None = None,
    example_inputs: Any = None,
) -> Tensor:
    """The teacher's channel index of each output channel of ``layer`` in a pruned ``model``.

    The applied plans (:func:`~grouppruner.pruning.applied_plans`, chained plans composed, last applied first)
    map each channel the model keeps back to the unpruned model's channel. A layer whose channel group no plan
    pruned gets the identity map.

    Args:
        model: the pruned model (a DDP / compiled wrapper is seen through); it is run once, in eval mode under
            ``torch.no_grad()``, to find the module producing ``layer``'s output, and its modes are restored.
        layer: a module name whose output is an ``(N, C, H, W)`` feature map: a conv or BatchNorm layer, or a
            block whose output is one (followed only by parameter-free, shape-preserving modules such as
            activations).
        graph: the :class:`~grouppruner.graph.ChannelGraph` of ``model`` as it is now (built when ``None``).
        example_inputs: inputs for the forward (default: the graph's, else zeros of the last plan's
            ``input_shapes``).

    Returns:
        ``(C_student,)`` int64 tensor: student channel ``j`` of ``layer`` is teacher channel ``idx[j]``,
        strictly increasing.

    Raises:
        UsageError: ``model`` has no applied plan and no ``example_inputs`` were given.
        LayerNotFoundError: ``layer`` is not a module of ``model``.
        LayerOutputError: ``layer``'s output is not a 4-D tensor, or its channels are not one channel group's
            channels in order (e.g. a concatenation or a residual sum computed outside any module).
    """
    root = unwrap(model)
    name = inner_name(model, layer)
    modules = dict(root.named_modules())
    if name not in modules:
        raise LayerNotFoundError(f"teacher_channels: layer {name!r} is not a module of {type(root).__name__}")
    plans = applied_plans(root)
    if example_inputs is None and graph is not None:
        example_inputs = graph.example_inputs
    if example_inputs is None:
        if not plans or not plans[-1].input_shapes:
            raise UsageError(
                f"teacher_channels({name!r}): the model has no applied plan with input shapes; pass example_inputs"
            )
        device = next(root.parameters()).device
        example_inputs = tuple(torch.zeros(shape, device=device) for shape in plans[-1].input_shapes)
    producer, channels = _producer(root, name, modules, example_inputs)
    if graph is None:
        graph = ChannelGraph(root, example_inputs)
    refs = [
        (group, ref)
        for group in graph.channel_groups
        for ref in group.layers
        if ref.name == producer and ref.dim == "out"
    ]
    whole = [(group, ref) for group, ref in refs if ref.indices == tuple(range(channels))]
    if len(refs) != 1 or not whole:
        raise LayerOutputError(
            f"teacher_channels: the output of layer {name!r} (produced by {producer!r}, {channels} channels) is "
            f"not one channel group's channels in order (it is in {len(refs)} channel group(s)); distil a layer "
            "whose output is a conv / BatchNorm output"
        )
    group = whole[0][0]
    index, size = torch.arange(channels), channels  # size: the group's width in the numbering ``index`` is in
    for plan in reversed(plans):
        entry = next((e for e in plan.channel_groups if e.name == group.name), None)
        if entry is None:
            continue
        if len(entry.kept) != size:
            raise LayerOutputError(
                f"teacher_channels({name!r}): channel group {group.name!r} keeps {len(entry.kept)} channels in a "
                f"plan, but {size} come out of it (plans not applied in order?)"
            )
        index, size = torch.tensor(entry.kept, dtype=torch.long)[index], entry.size
    return index


def _producer(root: nn.Module, name: str, modules: dict[str, nn.Module], example_inputs: Any) -> tuple[str, int]:
    """The leaf module whose output ``name``'s output is (through channel-wise modules), and its channel count."""
    target = modules[name]
    prefix = f"{name}." if name else ""
    leaves = [(n, m) for n, m in modules.items() if (n == name or n.startswith(prefix)) and not any(m.children())]
    calls: list[tuple[str, nn.Module, Any, Any]] = []  # in execution order; holds the tensors so ids stay unique
    result: list[Any] = []

    def record(leaf: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls.append((leaf, module, args, output))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in leaves]
    if target not in dict(leaves).values():
        handles.append(target.register_forward_hook(lambda _m, _a, out: result.append(out)))
    modes = {m: m.training for m in root.modules()}
    try:
        root.eval()
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                root(**example_inputs)
            elif isinstance(example_inputs, tuple | list):
                root(*example_inputs)
            else:
                root(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    output = result[0] if result else next((out for n, _, _, out in calls if n == name), None)
    if not isinstance(output, Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise LayerOutputError(f"teacher_channels: layer {name!r} produced {shape}, not an (N, C, H, W) feature map")
    tensor, before = output, len(calls)
    while True:
        position = next((i for i in range(before - 1, -1, -1) if calls[i][3] is tensor), None)
        if position is None:
            raise LayerOutputError(
                f"teacher_channels: the output of layer {name!r} is not produced by one of its modules "
                "(a functional op such as a concatenation or a residual sum comes last)"
            )
        leaf, module, args, _ = calls[position]
        if isinstance(module, nn.modules.conv._ConvNd | nn.modules.batchnorm._BatchNorm):
            return leaf, int(tensor.shape[1])
        first = args[0] if args else None
        if not (isinstance(first, Tensor) and next(module.parameters(), None) is None and first.shape == tensor.shape):
            raise LayerOutputError(
                f"teacher_channels: the output of layer {name!r} comes from {leaf!r} ({type(module).__name__}), "
                "neither a conv / BatchNorm nor a parameter-free shape-preserving module"
            )
        tensor, before = first, position
