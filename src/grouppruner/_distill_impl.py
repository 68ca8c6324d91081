"""Helpers of `grouppruner.distill`: the channel-energy autograd function, wrapper-prefixed names, name lookup."""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

# Wrappers whose wrapped model is the one that owns the named layers.
_WRAPPER_ATTRS = ("module", "_orig_mod")
_WRAPPER_PREFIXES = tuple(f"{attr}." for attr in _WRAPPER_ATTRS)


def _compute_dtype(feature: Tensor) -> torch.dtype:
    """fp32 for fp32 and lower-precision features, fp64 for fp64 ones."""
    return torch.promote_types(feature.dtype, torch.float32)


class ChannelEnergy(torch.autograd.Function):
    """``sum_c |F|^p`` in fp32, ``(N, C, H, W) -> (N, H, W)``, for features of any floating dtype.

    Written out because ``torch.linalg.vector_norm(F, dim=1)`` is ~4x slower than an elementwise power and a sum
    on CPU, and because the plain ``F.float().square().sum(1)`` would keep an fp32 copy of a bf16 / fp16 feature
    alive for backward: this saves only the feature itself, which the next layer keeps anyway.
    """

    @staticmethod
    def forward(ctx: Any, feature: Tensor, p: float) -> Tensor:
        f32 = feature.to(_compute_dtype(feature))
        energy = f32.square().sum(dim=1) if p == 2.0 else f32.abs().pow(p).sum(dim=1)
        ctx.save_for_backward(feature)
        ctx.p = p
        return energy

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (feature,) = ctx.saved_tensors
        p: float = ctx.p
        f32 = feature.to(_compute_dtype(feature))
        g = grad.unsqueeze(1)
        if p == 2.0:
            grad_feature = f32 * (2.0 * g)
        else:
            # d|f|^p/df = p |f|^(p-1) sign(f), taken as 0 at f = 0 (also for p < 1, where it is unbounded).
            magnitude = f32.abs()
            slope = torch.where(magnitude > 0, magnitude.pow(p - 1.0), torch.zeros_like(magnitude))
            grad_feature = slope * f32.sign() * (p * g)
        return grad_feature.to(feature.dtype), None


def strip_wrapper_prefix(name: str) -> str:
    """``module._orig_mod.backbone.x`` -> ``backbone.x`` (names copied from a wrapped model's state_dict)."""
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def missing_message(missing: Sequence[str], role: str, model: nn.Module) -> str:
    """Error text for layer names absent from ``model``: close matches per name and the available module names."""
    available = [name for name, _ in model.named_modules() if name]
    lines = [f"{len(missing)} layer(s) not found in the {role} ({type(model).__name__}):"]
    for name in missing:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        hint = f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        lines.append(f"  {name!r}{hint}")
    shown = available if len(available) <= 40 else [*available[:40], f"... ({len(available)} in all)"]
    lines.append(f"available module names: {', '.join(shown)}")
    return "\n".join(lines)


def grid_stride(input_len: int, grid_len: int) -> float:
    """Input pixels per cell along one axis: the integer stride when the grid matches one, else the ratio.

    With ``input_len=321`` and a stride-8 network the grid has 41 (ceil) or 40 (floor) cells; both give 8.
    """
    ratio = input_len / grid_len
    nominal = round(ratio)
    if nominal >= 1 and grid_len in (math.ceil(input_len / nominal), input_len // nominal):
        return float(nominal)
    return ratio


def first_device(model: nn.Module) -> torch.device | None:
    """Device of the first parameter (else buffer) of ``model``; ``None`` for a model without tensors."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device
