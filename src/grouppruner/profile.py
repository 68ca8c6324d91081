"""Model size and cost: parameters, multiply-accumulates, bytes and CPU latency.

These are the numbers a compression run is judged by. MACs count the multiply-accumulates of convolutions and
linear layers only (the convention of darknet and of the paper), measured from the shapes seen in one forward pass,
so any layer graph works, including channel slicing written in ``forward()``.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._utils.calls import ForwardFn, call_model, eval_mode, meta_call, model_device, synchronize
from ._utils.errors import InvalidOptionError

__all__ = [
    "LayerCost",
    "ModelProfile",
    "count_macs",
    "count_params",
    "layer_costs",
    "measure_latency",
    "model_size_bytes",
    "profile_model",
    "record_positions",
]

logger = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (shared parameters counted once).

    Args:
        model: any module.

    Returns:
        The total number of scalar parameters, frozen ones included.
    """
    return sum(p.numel() for p in model.parameters())


def model_size_bytes(model: nn.Module) -> int:
    """Size of ``model`` stored in fp32: every parameter and floating buffer at 4 bytes per element.

    Integer buffers (such as BatchNorm's ``num_batches_tracked``) count at their own element size.

    Args:
        model: any module.

    Returns:
        Size in bytes.
    """
    total = sum(p.numel() * 4 for p in model.parameters())
    for buffer in model.buffers():
        total += buffer.numel() * (4 if buffer.is_floating_point() else buffer.element_size())
    return total


@dataclass
class LayerCost:
    """Shape facts of one module that determine its parameters and MACs.

    Attributes:
        name: qualified module name.
        kind: ``"conv"``, ``"linear"`` or ``"channelwise"`` (norms and other modules whose parameters all have
            the channel count as first dimension).
        out_channels: output channels (``channelwise``: the channel count).
        in_channels: input channels (``channelwise``: the channel count).
        groups: convolution groups (1 otherwise).
        kernel: product of the kernel size (1 for linear).
        bias: whether the layer has a bias.
        positions: output positions per forward pass (batch included), i.e. MACs per weight element.
        params: current number of parameters of the module itself.
    """

    name: str
    kind: str
    out_channels: int
    in_channels: int
    groups: int
    kernel: int
    bias: bool
    positions: int
    params: int

    @property
    def depthwise(self) -> bool:
        """True for a convolution with one filter per channel (its inputs and outputs shrink together)."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def cost(self, removed_out: int, removed_in: int, add_bias: bool = False) -> tuple[int, int]:
        """Parameters and MACs after removing ``removed_out`` output and ``removed_in`` input channels.

        Args:
            removed_out: output channels removed.
            removed_in: input channels removed.
            add_bias: the layer gains a bias (beta folding into a bias-free layer without a following BN).

        Returns:
            ``(params, macs)`` of this module after removal.
        """
        if self.kind == "channelwise" or self.depthwise:
            channels = self.out_channels - max(removed_out, removed_in)
            if self.kind == "channelwise":
                return self.params * channels // max(self.out_channels, 1), 0
            weight = channels * self.kernel
            return weight + (channels if self.bias or add_bias else 0), weight * self.positions
        out = self.out_channels - removed_out
        inp = self.in_channels - removed_in
        weight = out * (inp // self.groups) * self.kernel
        bias = out if (self.bias or add_bias) else 0
        return weight + bias, weight * self.positions


def layer_costs(model: nn.Module, positions: Mapping[str, int]) -> dict[str, LayerCost]:
    """The :class:`LayerCost` of every module of ``model`` that owns parameters, by qualified name.

    Args:
        model: the model.
        positions: output positions per conv / linear layer, from :func:`record_positions`.
    """
    modules: dict[str, LayerCost] = {}
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            kernel = math.prod(module.kernel_size)
            modules[name] = LayerCost(
                name,
                "conv",
                module.out_channels,
                module.in_channels,
                module.groups,
                kernel,
                module.bias is not None,
                positions.get(name, 0),
                own,
            )
        elif isinstance(module, nn.Linear):
            modules[name] = LayerCost(
                name,
                "linear",
                module.out_features,
                module.in_features,
                1,
                1,
                module.bias is not None,
                positions.get(name, 0),
                own,
            )
        elif own > 0:
            first = next(module.parameters(recurse=False))
            channels = int(first.shape[0]) if first.dim() > 0 else 1
            modules[name] = LayerCost(name, "channelwise", channels, channels, 1, 1, False, 0, own)
    return modules


def record_positions(
    model: nn.Module,
    example_inputs: Any,
    *,
    forward_fn: ForwardFn | None = None,
) -> tuple[dict[str, int], dict[str, str]]:
    """Trace ``model`` once (eval mode, no autograd) and record what channel pruning cannot change.

    The pass runs on the meta device when possible (shapes only: no compute and no activation memory) and
    falls back to a real forward pass (always with ``forward_fn``, or when an op has no meta kernel).

    Args:
        model: the model.
        example_inputs: a tensor such as (N, 3, H, W), a tuple of positional inputs or a dict of keyword inputs.
        forward_fn: optional ``forward_fn(model, example_inputs)`` used instead of calling the model.

    Returns:
        ``(positions, successor_bn)``: output positions per weight element of every conv / linear layer
        (``N * H_out * W_out`` for a 2-d conv), and for every conv / linear layer whose output tensor goes straight
        into a BatchNorm, that BatchNorm's name.
    """
    names = {module: name for name, module in model.named_modules()}
    positions: dict[str, int] = {}
    outputs: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}
    successor: dict[str, str] = {}
    handles = []

    def on_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        name = names[module]
        if name in positions or not isinstance(output, torch.Tensor):
            return
        channels = output.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else output.shape[-1]
        positions[name] = output.numel() // max(int(channels), 1)
        outputs[id(output)] = (weakref.ref(output), name)

    def on_bn_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and id(args[0]) in outputs:
            # The weak reference tells a live producer output from a new tensor that reuses a freed id.
            ref, producer = outputs[id(args[0])]
            if ref() is args[0] and producer not in successor:
                successor[producer] = names[module]

    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(module.register_forward_hook(on_output))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(on_bn_input))
    try:
        with eval_mode(model), torch.no_grad():
            # Shapes on the meta device cost no arithmetic; a custom forward_fn may not run there.
            traced = False
            if forward_fn is None:
                try:
                    meta_call(model, example_inputs)
                    traced = True
                except (NotImplementedError, RuntimeError, TypeError, ValueError) as error:
                    logger.debug("shape trace on the meta device failed (%s); running a real forward pass", error)
                    positions.clear()
                    outputs.clear()
                    successor.clear()
            if not traced:
                call_model(model, example_inputs, forward_fn)
    finally:
        for handle in handles:
            handle.remove()
    return positions, successor


def count_macs(
    model: nn.Module,
    example_inputs: Any,
    *,
    forward_fn: ForwardFn | None = None,
) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one forward pass.

    For a convolution the count is ``N * H_out * W_out * C_out * (C_in / groups) * prod(kernel_size)``; for a
    linear layer ``(elements of the input / in_features) * in_features * out_features``. Biases, norms,
    activations and transposed convolutions are not counted. The shapes come from one pass on the meta device
    where possible (no arithmetic), the same rule the pruner's budgets use (:class:`LayerCost`).

    Args:
        model: the model; its mode is restored afterwards.
        example_inputs: a tensor, e.g. of shape (N, 3, H, W), a tuple of positional inputs or a dict of
            keyword inputs.
        forward_fn: optional ``forward_fn(model, example_inputs)`` used instead of calling the model.

    Returns:
        MACs for the given batch (divide by N for per-image MACs).
    """
    positions, _ = record_positions(model, example_inputs, forward_fn=forward_fn)
    return sum(cost.cost(0, 0)[1] for cost in layer_costs(model, positions).values())


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> float:
    """Median wall-clock seconds of one forward pass, in eval mode and without autograd.

    Args:
        model: the model; it is switched to eval mode for the measurement and its mode restored afterwards.
        example_inputs: a tensor, e.g. (1, 3, 416, 416), a tuple of positional inputs or a dict of keyword inputs.
        repeats: timed runs; the median is returned (robust to a noisy machine).
        warmup: untimed runs first (allocator and kernel selection warm-up).
        threads: if given, ``torch.set_num_threads`` for the measurement (restored afterwards).

    Returns:
        The median latency in seconds.
    """
    if repeats < 1 or warmup < 0:
        raise InvalidOptionError(f"measure_latency needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    times: list[float] = []
    device = model_device(model)
    try:
        with eval_mode(model), torch.inference_mode():
            for _ in range(warmup):
                call_model(model, example_inputs)
            for _ in range(repeats):
                synchronize(device)
                start = time.perf_counter()
                call_model(model, example_inputs)
                synchronize(device)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    return statistics.median(times)


@dataclass(frozen=True)
class ModelProfile:
    """Cost of a model for one example input.

    Attributes:
        params: number of parameters.
        macs: conv + linear multiply-accumulates for the example batch.
        size_bytes: fp32 size of parameters and buffers.
        latency_s: median forward latency in seconds, or ``None`` when not measured.
    """

    params: int
    macs: int
    size_bytes: int
    latency_s: float | None = None

    def ratio_to(self, baseline: ModelProfile) -> dict[str, float]:
        """Each measured quantity of this profile divided by the baseline's (e.g. pruned / dense).

        Args:
            baseline: the profile to compare against.

        Returns:
            A dict with keys ``params``, ``macs``, ``size_bytes`` and, when both have it, ``latency_s``.
        """
        ratios = {
            "params": self.params / baseline.params,
            "macs": self.macs / baseline.macs,
            "size_bytes": self.size_bytes / baseline.size_bytes,
        }
        if self.latency_s is not None and baseline.latency_s is not None:
            ratios["latency_s"] = self.latency_s / baseline.latency_s
        return ratios


def profile_model(
    model: nn.Module,
    example_inputs: Any,
    *,
    latency: bool = False,
    **latency_options: Any,
) -> ModelProfile:
    """Parameters, MACs, fp32 size and optionally latency of ``model`` in one call.

    Args:
        model: the model to profile.
        example_inputs: a tensor, e.g. (1, 3, 416, 416), a tuple of positional inputs or a dict of keyword inputs.
        latency: also measure the median latency (slower).
        **latency_options: keyword options passed to :func:`measure_latency` (``repeats``, ``warmup``, ``threads``).

    Returns:
        A :class:`ModelProfile`.
    """
    latency_s = measure_latency(model, example_inputs, **latency_options) if latency else None
    return ModelProfile(
        params=count_params(model),
        macs=count_macs(model, example_inputs),
        size_bytes=model_size_bytes(model),
        latency_s=latency_s,
    )
