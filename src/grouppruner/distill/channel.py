"""Channel-wise distillation (CWD; Shu et al., ICCV 2021) on the channels a pruned student kept.

Each channel of a feature map becomes a distribution over the spatial positions, ``softmax(x_c / T)`` over
``H * W``, and the student's distribution is pulled towards the teacher's by their KL divergence. A pruned
student's channel ``j`` is its teacher's channel ``idx[j]`` (:func:`grouppruner.pruning.teacher_channels`), so
the teacher's feature is gathered at those indices instead of being projected by a learnt 1x1 conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils.errors import InvalidOptionError, OptionTypeError

__all__ = ["channel_wise_distillation"]


def channel_wise_distillation(
    student_feat: Tensor,
    teacher_feat: Tensor,
    *,
    temperature: float = 1.0,
    normalize: bool = False,
) -> Tensor:
    """The CWD loss ``T^2 / (N * C) * sum_{n, c} KL(softmax(t_nc / T) || softmax(s_nc / T))``.

    The softmax runs over the ``H * W`` positions of each channel of each image; the teacher is detached. With
    ``normalize``, each channel of each image is first standardised over its positions (zero mean, unit
    variance), so that the temperature acts on every channel alike whatever its scale.

    Args:
        student_feat: ``(N, C, H, W)`` student feature (any floating dtype; the loss is computed in fp32).
        teacher_feat: ``(N, C, H, W)`` teacher feature with the same channels in the same order, e.g.
            ``teacher_feature[:, idx]``.
        temperature: softmax temperature ``T`` (> 0).
        normalize: standardise each channel over space before the softmax.

    Returns:
        A scalar fp32 (fp64 for fp64 inputs) loss, 0 when the two features are equal.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: shapes differ or are not 4-D, or ``temperature`` is not a positive finite number.
    """
    if not isinstance(student_feat, Tensor) or not isinstance(teacher_feat, Tensor):
        raise OptionTypeError("channel_wise_distillation expects two tensors")
    if student_feat.dim() != 4 or student_feat.shape != teacher_feat.shape:
        raise InvalidOptionError(
            "channel_wise_distillation expects two (N, C, H, W) features of equal shape, got student "
            f"{tuple(student_feat.shape)} and teacher {tuple(teacher_feat.shape)}"
        )
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise InvalidOptionError(f"temperature must be a positive finite number, got {temperature!r}")
    batch, channels = student_feat.shape[:2]
    dtype = torch.promote_types(student_feat.dtype, torch.float32)
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        s = student_feat.to(dtype).flatten(2)  # (N, C, H*W)
        t = teacher_feat.detach().to(dtype).flatten(2)
        if normalize:
            s, t = _standardise(s), _standardise(t)
        log_q = F.log_softmax(s / temperature, dim=2)
        log_p = F.log_softmax(t / temperature, dim=2)
        kl = (log_p.exp() * (log_p - log_q)).sum()
        return kl * (temperature * temperature) / (batch * channels)


def _standardise(x: Tensor) -> Tensor:
    """``(x - mean) / std`` over the last dimension; a constant channel becomes all zeros."""
    centred = x - x.mean(dim=2, keepdim=True)
    return centred / centred.square().mean(dim=2, keepdim=True).add(1e-5).sqrt()
