"""Beta folding: move the constant that a removed channel still emits into the layers that consume it.

A channel whose BatchNorm scale (gamma) is zero emits ``act(beta)`` everywhere, whatever its input. Removing it
outright would drop that constant from every consumer (torch-pruning does this; outputs move by ~1e-2 on YOLOv4).
Folding keeps the network function: the constant's contribution is added to the consumer's bias, or, for a
bias-free consumer followed directly by a BatchNorm, subtracted from that BatchNorm's running mean (the BN computes
``(x - mean) / std * gamma + beta``, so adding a constant ``c`` to its input equals ``mean -= c``).

How the constants are found, so that residual adds, concatenation, max-pool, upsampling, chunking and identity
need no special code: the removed channels are made constant (gamma = 0 on every BatchNorm of the channel group;
for a producer layer without a following BatchNorm its weights are zeroed so that it emits its bias), one probe
forward pass in eval mode records the input of every consumer layer, and the value of each removed input channel
at the centre pixel is the constant (all pixels are equal there; the centre is the pixel farthest from any
padding, so a layer that pads on the way does not disturb it).

Exactness, for the model in which the removed channels had gamma = 0:

- exact (up to float rounding) for 1x1 convolutions and linear layers;
- exact on interior pixels of a k x k convolution with zero padding; on border pixels the unpruned model saw
  zero padding instead of the constant for the taps outside the image, so the fold over-corrects there by the
  weight of the missing taps times the constant. With gamma only close to zero (real sparse training) the fold
  is the first-order correction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._utils.calls import call_model, eval_mode
from .._utils.modules import is_depthwise

__all__ = ["FoldTarget", "fold_removed_channels", "fold_target", "is_fold_consumer"]

logger = logging.getLogger(__name__)

FoldTarget = str  # "bias" | "running_mean" | "new_bias"


def _is_consumer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.modules.conv._ConvNd) and not module.transposed)


def is_fold_consumer(module: nn.Module) -> bool:
    """Whether constants arriving at ``module``'s inputs must be folded into it.

    True for linear layers and convolutions, except depthwise ones: their output channel ``c`` reads only input
    channel ``c``, which the channel group removes together. A full convolution whose input and output are in the
    same channel group (e.g. ``x + conv(x)``) is folded: its kept outputs still read the removed inputs.
    """
    if is_depthwise(module):
        return False
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        return not module.transposed
    return _is_consumer(module)


def fold_target(model: nn.Module, name: str, successor_bn: Mapping[str, str]) -> FoldTarget:
    """Where a constant arriving at consumer ``name`` is folded.

    Args:
        model: the model.
        name: qualified name of a conv / linear consumer.
        successor_bn: conv / linear name -> name of the BatchNorm its output goes straight into.

    Returns:
        ``"bias"`` (the layer has a bias), ``"running_mean"`` (no bias, followed by a BatchNorm with running
        statistics) or ``"new_bias"`` (a zero bias is added to the layer first).
    """
    module = model.get_submodule(name)
    if getattr(module, "bias", None) is not None:
        return "bias"
    bn_name = successor_bn.get(name)
    if bn_name is not None:
        bn = model.get_submodule(bn_name)
        if getattr(bn, "running_mean", None) is not None:
            return "running_mean"
    return "new_bias"


def _consumer_delta(module: nn.Module, channels: torch.Tensor, constants: torch.Tensor) -> torch.Tensor:
    """Output shift of ``module`` caused by constant inputs: shape (out_channels,).

    One matrix-vector product over the whole weight (every kernel tap sees the constant), which reads the
    weight once instead of gathering the removed columns.
    """
    assert isinstance(module.weight, torch.Tensor)
    weight = module.weight.detach()
    full = torch.zeros(weight.shape[1] * getattr(module, "groups", 1), dtype=weight.dtype, device=weight.device)
    full.index_put_((channels,), constants.to(weight.dtype), accumulate=True)  # (in_channels,)
    if isinstance(module, nn.Linear):
        return weight @ full
    assert isinstance(module, nn.modules.conv._ConvNd)
    groups = module.groups
    taps = math.prod(module.kernel_size)
    per_group = weight.reshape(groups, module.out_channels // groups, -1)  # (groups, out / groups, in / groups * taps)
    vector = full.repeat_interleave(taps).reshape(groups, -1, 1)  # (groups, in / groups * taps, 1)
    return torch.bmm(per_group, vector).reshape(module.out_channels)


def _shrink(example_inputs: Any, max_stride: int | None) -> torch.Tensor | None:
    """A crop of a single image batch to one image of 2 x the largest feature stride, or ``None``."""
    if max_stride is None or not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 4:
        return None
    size = 2 * max_stride
    height, width = example_inputs.shape[-2:]
    if height <= size and width <= size and example_inputs.shape[0] == 1:
        return None
    return example_inputs[:1, :, : min(height, size), : min(width, size)]


def _probe(
    model: nn.Module,
    consumer_channels: Mapping[str, list[int]],
    zeroed: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    inputs: Any,
    forward_fn: Callable[[nn.Module, Any], Any] | None,
    *,
    small: bool,
) -> tuple[dict[str, torch.Tensor], bool]:
    """One eval-mode pass with the removed channels made constant.

    Returns:
        Per consumer the value of each removed input channel at the centre pixel, shape (len(channels),), and
        whether every such channel was spatially constant (then any input size gives the same constants).
    """
    constants: dict[str, torch.Tensor] = {}
    constant = True
    handles = []
    for name, channels in consumer_channels.items():
        index = torch.tensor(channels, dtype=torch.long)

        def capture(module: nn.Module, args: tuple[Any, ...], name: str = name, index: torch.Tensor = index) -> None:
            nonlocal constant
            if name in constants:  # a layer called twice: the first call is the one the graph traced
                return
            x = args[0].detach()
            if isinstance(module, nn.Linear):
                values = x.reshape(-1, x.shape[-1])[:, index].T  # (channels, positions)
                centre = values[:, 0]
            else:
                values = x[0, index].reshape(len(index), -1)
                middle = (slice(None), *[size // 2 for size in x.shape[2:]])
                centre = x[0, index][middle]
            spread = values.amax(dim=1) - values.amin(dim=1)
            constant = constant and bool((spread <= 1e-5 * (1 + centre.abs())).all())
            constants[name] = centre

        handles.append(model.get_submodule(name).register_forward_pre_hook(capture))
    threads = torch.get_num_threads()
    try:
        with eval_mode(model), torch.no_grad():
            for tensor, index, _ in zeroed:
                tensor[index] = 0
            if small:
                # A crop-sized pass is all per-op overhead; with several intra-op threads that overhead is
                # thread synchronisation (seconds instead of ~0.1 s for YOLOv4 on a busy 2-core machine).
                torch.set_num_threads(1)
            call_model(model, inputs, forward_fn)
    finally:
        torch.set_num_threads(threads)
        with torch.no_grad():
            for tensor, index, saved in zeroed:
                tensor[index] = saved
        for handle in handles:
            handle.remove()
    return constants, constant


def fold_removed_channels(
    model: nn.Module,
    removals: Sequence[tuple[Any, Sequence[int]]],
    example_inputs: Any,
    *,
    successor_bn: Mapping[str, str],
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    max_stride: int | None = None,
) -> list[str]:
    """Fold the constants of channels about to be removed into their consumers (modifies ``model`` in place).

    Call this before the channels are removed; the removed channels' own parameters are left as they were.

    Args:
        model: the model, unpruned yet.
        removals: ``(channel group, group-local channel indices to remove)`` pairs; a channel group is a
            :class:`grouppruner.graph.ChannelGroup` (its ``layers`` are ``LayerRef`` entries).
        example_inputs: inputs for the probe forward pass, e.g. a tensor of shape (N, 3, H, W).
        successor_bn: conv / linear name -> the BatchNorm its output goes straight into
            (from :func:`grouppruner.profile.record_positions`).
        forward_fn: optional ``forward_fn(model, example_inputs)`` used instead of calling the model.
        max_stride: largest feature stride of the model; if given and the inputs are one image tensor, the probe
            first runs on a crop of ``2 * max_stride`` pixels (the constants do not depend on the input), and
            falls back to the full inputs when that fails or a removed channel is not spatially constant.

    Returns:
        Names of the layers that were given a new bias parameter (bias-free consumers without a BatchNorm).
    """
    consumer_channels: dict[str, list[int]] = {}
    zeroed: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for group, removed in removals:
        if not removed:
            continue
        for ref in group.layers:
            if ref.role == "parameter":  # a layer scale neither produces nor consumes: it shrinks with the channels
                continue
            module = model.get_submodule(ref.name)
            weight = getattr(module, "weight", None)
            index = torch.tensor([ref.indices[i] for i in removed], dtype=torch.long)
            if ref.dim == "out" and isinstance(module, nn.modules.batchnorm._BatchNorm):
                if isinstance(weight, torch.Tensor):
                    zeroed.append((weight.data, index, weight.data[index].clone()))
            elif ref.dim == "out" and _is_consumer(module) and ref.name not in successor_bn:
                # A producer without its own BN: zero its filters so that it emits its bias, a constant.
                assert isinstance(weight, torch.Tensor)
                zeroed.append((weight.data, index, weight.data[index].clone()))
            elif ref.dim == "in" and is_fold_consumer(module):
                consumer_channels.setdefault(ref.name, []).extend(ref.indices[i] for i in removed)
    if not consumer_channels:
        return []

    small = _shrink(example_inputs, max_stride)
    constants: dict[str, torch.Tensor] | None = None
    if small is not None:
        try:
            constants, constant = _probe(model, consumer_channels, zeroed, small, forward_fn, small=True)
        except (RuntimeError, ValueError, IndexError) as error:
            logger.debug("beta folding: probe at reduced size failed (%s); probing at full size", error)
            constant = False
        if not constant:
            constants = None
    if constants is None:
        constants, constant = _probe(model, consumer_channels, zeroed, example_inputs, forward_fn, small=False)
        if not constant:
            logger.info("beta folding: some removed channels are not spatially constant; folded their centre value")

    added: list[str] = []
    with torch.no_grad():
        for name, channels in consumer_channels.items():
            if name not in constants:
                logger.warning("beta folding: consumer %s was not called in the probe pass; nothing folded", name)
                continue
            module = model.get_submodule(name)
            delta = _consumer_delta(module, torch.tensor(channels, dtype=torch.long), constants[name])
            target = fold_target(model, name, successor_bn)
            if target == "bias":
                bias = module.bias
                assert isinstance(bias, torch.Tensor)
                bias.add_(delta)
            elif target == "running_mean":
                running_mean = model.get_submodule(successor_bn[name]).running_mean
                assert isinstance(running_mean, torch.Tensor)
                running_mean.sub_(delta)
            else:
                module.bias = nn.Parameter(delta.clone())
                added.append(name)
            logger.debug("beta folding: %d channels into %s (%s)", len(channels), name, target)
    return added
