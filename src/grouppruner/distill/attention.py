"""Spatial attention maps: ``A(F) = normalize_L2(mean_c |F|^p).view(N, H*W)`` of a feature map ``F (N, C, H, W)``.

The map is aggregated over channels, so a pruned student with fewer channels can be compared with its teacher.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils.errors import InvalidOptionError, OptionTypeError

__all__ = ["ChannelEnergy", "spatial_attention"]


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


def spatial_attention(feature: Tensor, *, p: float = 2.0) -> Tensor:
    """Spatial attention map of a feature map, computed in fp32 whatever the input dtype (fp64 stays fp64).

    ``A = normalize_L2(mean_c |F|^p)`` flattened over space. The map does not change when channels are
    permuted or duplicated, nor when the feature is multiplied by a positive constant. An all-zero feature
    gives an all-zero map.

    Args:
        feature: ``(N, C, H, W)`` feature map (any floating dtype, autocast or not).
        p: exponent applied to ``|F|`` before averaging over channels (paper: 2).

    Returns:
        ``(N, H*W)`` fp32 map (fp64 for an fp64 feature), each row of unit L2 norm (or zero). Exact for
        feature magnitudes from about 1e-18 to 1e18 (``p = 2``); beyond, fp32 under/overflows.

    Raises:
        TypeError: ``feature`` is not a tensor.
        ValueError: ``feature`` is not 4-D or ``p`` is not a positive finite number.
    """
    if not isinstance(feature, Tensor):
        raise OptionTypeError(f"spatial_attention expects a tensor, got {type(feature).__name__}")
    if feature.dim() != 4:
        raise InvalidOptionError(
            f"spatial_attention expects an (N, C, H, W) feature map, got shape {tuple(feature.shape)}"
        )
    if not (isinstance(p, int | float) and math.isfinite(p) and p > 0):
        raise InvalidOptionError(f"p must be a positive finite number, got {p!r}")
    if feature.shape[-2] * feature.shape[-1] == 0:
        raise InvalidOptionError(f"spatial_attention got an empty spatial grid, shape {tuple(feature.shape)}")
    if not feature.is_floating_point():
        feature = feature.float()
    tiny = torch.finfo(torch.float32).tiny
    # Autocast off: the map must be computed in fp32 from features of any dtype.
    with torch.autocast(device_type=feature.device.type, enabled=False):
        energy = ChannelEnergy.apply(feature, float(p)).flatten(1)  # type: ignore[no-untyped-call]
        # The normalised map does not depend on the scale of the energy (nor on the 1/C of the mean): divide by the
        # per-sample peak first (detached: the result does not depend on it, so gradients stay exact) so that the
        # L2 norm of tiny energies (an untrained teacher in eval mode emits ~1e-10 features) does not underflow.
        peak = energy.detach().amax(dim=1, keepdim=True).clamp_min(tiny)
        return F.normalize(energy / peak, p=2.0, dim=1, eps=tiny)
