"""Model size and cost: parameters, multiply-accumulates, bytes and CPU latency.

These are the numbers a compression run is judged by. MACs count the multiply-accumulates of convolutions and
linear layers only (the convention of darknet and of the paper), measured from the shapes seen in one forward pass,
so any layer graph works, including channel slicing written in ``forward()``.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ModelProfile", "count_macs", "count_params", "measure_latency", "model_size_bytes", "profile_model"]

logger = logging.getLogger(__name__)

Inputs = torch.Tensor | Sequence[Any]


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


def _call(model: nn.Module, example_inputs: Inputs) -> Any:
    if isinstance(example_inputs, torch.Tensor):
        return model(example_inputs)
    return model(*example_inputs)


def count_macs(model: nn.Module, example_inputs: Inputs) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one forward pass.

    For a convolution the count is ``N * H_out * W_out * C_out * (C_in / groups) * prod(kernel_size)``; for a
    linear layer ``(elements of the input / in_features) * in_features * out_features``. Biases, norms and
    activations are not counted.

    Args:
        model: the model; it is run once in its current mode under ``torch.no_grad()``.
        example_inputs: a tensor, e.g. of shape (N, 3, H, W), or a sequence of positional arguments.

    Returns:
        MACs for the given batch (divide by N for per-image MACs).
    """
    total = 0

    def conv_hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.modules.conv._ConvNd)
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        total += output.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            _call(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total


def measure_latency(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> float:
    """Median wall-clock seconds of one forward pass, in eval mode and without autograd.

    Args:
        model: the model; it is switched to eval mode for the measurement and its mode restored afterwards.
        example_inputs: a tensor, e.g. (1, 3, 416, 416), or a sequence of positional arguments.
        repeats: timed runs; the median is returned (robust to a noisy machine).
        warmup: untimed runs first (allocator and kernel selection warm-up).
        threads: if given, ``torch.set_num_threads`` for the measurement (restored afterwards).

    Returns:
        The median latency in seconds.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure_latency needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    was_training = model.training
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                _call(model, example_inputs)
            for _ in range(repeats):
                start = time.perf_counter()
                _call(model, example_inputs)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
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
    example_inputs: Inputs,
    *,
    latency: bool = False,
    **latency_options: Any,
) -> ModelProfile:
    """Parameters, MACs, fp32 size and optionally latency of ``model`` in one call.

    Args:
        model: the model to profile.
        example_inputs: a tensor, e.g. (1, 3, 416, 416), or a sequence of positional arguments.
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
