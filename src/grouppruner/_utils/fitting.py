"""Fitting a conv unit's time: the widths it is timed at (on and off a channel block) and a non-negative
least-squares fit over them (:mod:`grouppruner.latency`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
from torch import nn

from .modules import is_depthwise

__all__ = ["nonnegative_lstsq", "snap", "unit_points"]


def nonnegative_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmin ||a x - b||`` over ``x >= 0``, a: (M, K) with small K, b: (M,) -> x: (K,).

    Exact for the 2-4 features used here: the optimum is the unconstrained least-squares solution on some subset
    of the features (its active set), so every subset is tried and the best feasible one kept.
    """
    best, best_residual = np.zeros(a.shape[1]), float(np.sum(b**2))
    for size in range(1, a.shape[1] + 1):
        for subset in combinations(range(a.shape[1]), size):
            columns = list(subset)
            x_subset, *_ = np.linalg.lstsq(a[:, columns], b, rcond=None)
            if np.any(x_subset < 0):
                continue
            residual = float(np.sum((a[:, columns] @ x_subset - b) ** 2))
            if residual < best_residual:
                best = np.zeros(a.shape[1])
                best[columns] = x_subset
                best_residual = residual
    return best


def snap(width: float, full: int, step: int) -> int:
    """``width`` rounded to a multiple of ``step`` in ``[step, full]`` (``full`` itself when below ``step``)."""
    if full <= step:
        return full
    return min(full, max(step, round(width / step) * step))


def unit_points(
    conv: nn.modules.conv._ConvNd, block: int, widths: Sequence[tuple[float, float]]
) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """The ``(C_in, C_out)`` widths a unit is timed at: on the block (the fit) and off it (the off-block factor)."""
    depthwise = is_depthwise(conv)
    groups = 1 if depthwise else conv.groups  # grouped convs need widths divisible by their groups
    step = math.lcm(groups, block)
    on: set[tuple[int, int]] = set()
    for fin, fout in widths:
        if depthwise and fin != fout:
            continue
        cin = snap(conv.in_channels * fin, conv.in_channels, step)
        cout = cin if depthwise else snap(conv.out_channels * fout, conv.out_channels, step)
        on.add((cin, cout))
    off: set[tuple[int, int]] = set()
    if block > 1 and groups == 1:
        for fraction in (1.0, 0.75, 0.5):
            # half a block below a width on the block: what an unrounded plan keeps
            cin = snap(conv.in_channels * fraction, conv.in_channels, step)
            cout = snap(conv.out_channels * fraction, conv.out_channels, step)
            cin = cin - block // 2 if cin > block else cin
            cout = cin if depthwise else (cout - block // 2 if cout > block else cout)
            if (cin, cout) not in on:
                off.add((cin, cout))
    return on, off
