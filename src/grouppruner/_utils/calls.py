"""Calling a model on example inputs: one rule for every stage.

``example_inputs`` is a tensor (passed as the single argument), a list / tuple (positional arguments) or a
mapping (keyword arguments); ``forward_fn(model, example_inputs)`` replaces the call entirely when given.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import InvalidOptionError
from .modules import ModuleSnapshot

__all__ = ["ForwardFn", "call_model", "describe_inputs", "eval_mode", "meta_call", "split_inputs"]

ForwardFn = Callable[[nn.Module, Any], Any]
"""``forward_fn(model, example_inputs) -> outputs``, called instead of ``model(...)``."""


def split_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)`` following the rule above."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), {}
    return (inputs,), {}


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU for a model with neither)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the kernels queued on ``device``: CUDA runs them asynchronously, so a host clock read right after
    a call would time the launch, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor in ``value``, depth first: a tensor, or tensors nested in lists, tuples and mappings (the one
    walker over example inputs and model outputs)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in tensors_in(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    return []


def describe_inputs(inputs: Any) -> str:
    """Short description of example inputs for error messages, e.g. ``Tensor(1, 3, 32, 32)``."""
    if isinstance(inputs, torch.Tensor):
        return f"Tensor{tuple(inputs.shape)}"
    if isinstance(inputs, (list, tuple)):
        return f"{type(inputs).__name__}[" + ", ".join(describe_inputs(x) for x in inputs) + "]"
    if isinstance(inputs, Mapping):
        return "dict{" + ", ".join(f"{k}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    return type(inputs).__name__


def call_model(model: nn.Module, inputs: Any, forward_fn: ForwardFn | None = None) -> Any:
    """Run ``model`` on ``inputs`` (or ``forward_fn(model, inputs)``) and return its outputs.

    Raises:
        ValueError: the forward failed; the message names the model class and describes the inputs, and the
            model's own error is chained.
    """
    try:
        if forward_fn is not None:
            return forward_fn(model, inputs)
        args, kwargs = split_inputs(inputs)
        return model(*args, **kwargs)
    except Exception as err:
        raise InvalidOptionError(
            f"forward of {type(model).__name__} failed on example_inputs {describe_inputs(inputs)}: "
            f"{type(err).__name__}: {err}"
        ) from err


def meta_call(model: nn.Module, inputs: Any) -> None:
    """Run ``model`` on the meta device: shapes only, no compute, no activation memory.

    The model is left exactly as it was: a forward that caches tensors in plain attributes (an Ultralytics
    Detect head keeps ``anchors`` / ``strides`` / ``shape``) or registers buffers would otherwise keep meta tensors,
    and the next real forward at that input size would fail on them.
    """

    def to_meta(value: Any) -> Any:
        return value.to("meta") if isinstance(value, torch.Tensor) else value

    state = {n: torch.empty_like(t, device="meta") for n, t in model.named_parameters(remove_duplicate=False)}
    state.update({n: torch.empty_like(t, device="meta") for n, t in model.named_buffers(remove_duplicate=False)})
    args, kwargs = split_inputs(inputs)
    snapshot = ModuleSnapshot(model)
    try:
        torch.func.functional_call(
            model, state, tuple(map(to_meta, args)), {k: to_meta(v) for k, v in kwargs.items()}, strict=False
        )
    finally:
        snapshot.restore()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block; afterwards every submodule gets back its own train/eval flag
    (``model.train(was_training)`` would also flip submodules a user had frozen in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
