"""Adaptive BatchNorm: recompute a pruned model's BatchNorm statistics on a few batches before scoring it.

Removing channels changes what every later layer sees, so the running mean / variance a BatchNorm learnt on the
dense model no longer describe its inputs, and a pruned model evaluated with them scores far below what it is
worth after training. EagleEye (Li et al., ECCV 2020) showed that recomputing only those statistics, on a few
training batches and without any gradient step, makes the accuracy of an untrained pruned candidate a good
predictor of its accuracy after fine-tuning; :class:`~grouppruner.pruning.PlanSearch` ranks its candidates that way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .._utils.calls import ForwardFn, call_model
from .._utils.errors import InvalidOptionError

__all__ = ["recalibrate_batchnorm"]

logger = logging.getLogger(__name__)


def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    forward_fn: ForwardFn | None = None,
) -> int:
    """Reset and recompute the running statistics of every BatchNorm of ``model`` from ``batches``.

    The model runs in train mode under ``torch.no_grad()``, with each BatchNorm's ``momentum`` set to ``None``
    (a cumulative average, so that every batch counts equally whatever their number); afterwards momenta and
    the train / eval mode of every module are restored. Weights, biases and every other buffer are unchanged.

    Args:
        model: the model (e.g. a pruned candidate); changed in place.
        batches: model inputs, one per batch, as for ``example_inputs``: a tensor (N, C, H, W) for
            ``model(x)``, a tuple of positional arguments or a mapping of keyword arguments; or anything
            ``forward_fn`` takes. A list or a ``DataLoader`` can be iterated again for the next candidate, a
            generator cannot.
        num_batches: use at most this many batches (default: all of ``batches``).
        forward_fn: ``forward_fn(model, batch)`` instead of ``model(batch)`` (e.g. ``lambda m, b: m(b[0])``
            for a loader of ``(images, targets)``).

    Returns:
        The number of batches used; 0 for a model without BatchNorm that tracks running statistics (nothing to
        recalibrate, ``batches`` is not read).

    Raises:
        InvalidOptionError: ``num_batches`` < 1, or ``batches`` yielded no batch for a model that has BatchNorms.
    """
    if num_batches is not None and (isinstance(num_batches, bool) or num_batches < 1):
        raise InvalidOptionError(f"recalibrate_batchnorm: num_batches must be None or >= 1, got {num_batches!r}")
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]
    if not norms:
        logger.info("recalibrate_batchnorm: %s has no BatchNorm with running statistics", type(model).__name__)
        return 0
    modes = {name: m.training for name, m in model.named_modules()}
    momenta = [m.momentum for m in norms]
    used = 0
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        model.train()
        with torch.no_grad():
            for batch in batches:
                if num_batches is not None and used >= num_batches:
                    break
                call_model(model, batch, forward_fn)
                used += 1
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        for name, module in model.named_modules():
            module.training = modes[name]
    if used == 0:
        raise InvalidOptionError(
            f"recalibrate_batchnorm: the calibration batches of {type(model).__name__} yielded no batch (a generator "
            "is used up after one pass: pass a list or a DataLoader)"
        )
    return used
