"""Budgets: predict a model's cost after channel removal, and solve a budget into per-layer-group thresholds.

The cost model predicts the parameter count and the conv + linear multiply-accumulates (MACs, the convention of
:func:`grouppruner.profile.count_macs`, whose per-layer rule :class:`~grouppruner.profile.LayerCost` it reuses) of a
model after removing a given number of channels from each channel group, without touching the model. It needs,
per convolution / linear layer, the number of output positions seen in one forward pass (recorded once by
:func:`~grouppruner.profile.record_positions`), since channel removal never changes spatial sizes.

The solver turns a budget (``target_params`` or ``target_macs``, a fraction of the current model) into per-layer-group
thresholds. How the budget is shared between layer groups: every channel score is divided by the largest score of
its layer group, all channels are ranked by this normalised score (:func:`removal_order`), and the prefix of
that ranking whose removal comes closest to the budget is searched by bisection (:func:`solve_cut`); the threshold of
layer group ``g`` is then ``lam * max_g`` with ``lam`` the normalised score where the prefix ends. After sparse
training each layer group has its own gamma scale (deep, wide stages end with much smaller gammas than the stem),
so a raw global threshold would empty the groups whose gammas are uniformly small, while per-group quantiles at
one common fraction would ignore that sparse training drove some groups much further towards zero than others.
The normalised cut prunes, in every group, the channels that are small *relative to that group's strongest
channels*: a group in which sparse training zeroed 90 % of the channels loses about 90 %, a group with a flat
distribution loses little. That is the per-group behaviour the authors tuned by hand (0.18 ... 0.97 per group on
YOLOv4).

Ties are broken deterministically, one channel at a time: channels with equal scores are ranked by their
relative rank among the equal channels of their own channel group (``(k + 0.5) / t`` for the ``k``-th of ``t``),
then by position. Equal scores are therefore removed evenly across channel groups (each loses the same share of
its tied channels), and a model whose gammas all tie (a fresh, untrained one) is cut uniformly, to within one channel
per group of any target; the ``ratios`` mode ranks ties the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from .._utils.errors import InvalidOptionError
from ..profile import LayerCost, layer_costs

__all__ = ["TOLERANCE", "CostModel", "check_reached", "kept_count", "removal_order", "solve_cut"]

logger = logging.getLogger(__name__)

#: Target modes: a plan within this relative distance of the target is accepted as is.
TOLERANCE = 0.01


class CostModel:
    """Predicts parameters and MACs of a model after channel removal, from shapes alone.

    Args:
        model: the model in its current (possibly already pruned) state.
        positions: output positions per conv / linear layer, from :func:`record_positions`.
    """

    def __init__(self, model: nn.Module, positions: Mapping[str, int]) -> None:
        self.modules: dict[str, LayerCost] = layer_costs(model, positions)
        self.params = sum(p.numel() for p in model.parameters())
        self.macs = sum(m.cost(0, 0)[1] for m in self.modules.values())

    def predict(
        self,
        removed: Mapping[tuple[str, str], int],
        add_bias: Sequence[str] = (),
    ) -> tuple[int, int]:
        """Parameters and MACs of the whole model after a removal.

        Args:
            removed: number of channels removed per ``(module name, dim)`` with dim ``"out"`` or ``"in"``.
            add_bias: modules that gain a bias through beta folding.

        Returns:
            ``(params, macs)`` of the pruned model.
        """
        params, macs = self.params, self.macs
        touched = {name for name, _ in removed} | set(add_bias)
        for name in touched:
            module = self.modules.get(name)
            if module is None:
                continue
            before_params, before_macs = module.cost(0, 0)
            after_params, after_macs = module.cost(
                removed.get((name, "out"), 0), removed.get((name, "in"), 0), name in add_bias
            )
            params += after_params - before_params
            macs += after_macs - before_macs
        return params, macs


def kept_count(raw: int, size: int, min_channels: int, round_to: int | None) -> int:
    """Channels a channel group keeps once the hard rules are applied.

    Args:
        raw: channels whose score passes the threshold.
        size: channels in the group.
        min_channels: per-layer minimum (a group smaller than this keeps everything).
        round_to: if given, the kept count is rounded up to a multiple of it (or to ``size`` if that is smaller).

    Returns:
        The number of channels to keep, in ``[min(size, min_channels), size]``.
    """
    kept = max(raw, min(size, min_channels))
    if round_to is not None and round_to > 1:
        kept = min(size, -(-kept // round_to) * round_to)
    return kept


def removal_order(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Order in which the channels of several channel groups go: lowest score first, ties spread evenly.

    Channels with equal scores are ranked by ``(k + 0.5) / t``, where ``k`` is the channel's rank (by index)
    among the ``t`` channels of its own channel group that have this score, and then by position in the
    concatenation. Removing any prefix of the order therefore takes tied channels from every channel group in
    proportion to how many it has, deterministically.

    Args:
        scores: per channel group its channel scores, shape (size_i,).

    Returns:
        A permutation of ``range(sum(size_i))`` (int64, shape (sum(size_i),)): indices into
        ``np.concatenate(scores)``, in removal order.
    """
    if not scores:
        return np.zeros(0, dtype=np.int64)
    spread = []
    for score in scores:
        order = np.argsort(score, kind="stable")
        ordered = score[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        lengths = np.diff(np.r_[starts, len(ordered)])
        run_start = np.repeat(starts, lengths)
        key = np.empty(len(score))
        key[order] = (np.arange(len(ordered)) - run_start + 0.5) / np.repeat(lengths, lengths)
        spread.append(key)
    pooled = np.concatenate(scores)
    return np.lexsort((np.arange(len(pooled)), np.concatenate(spread), pooled)).astype(np.int64)


def solve_cut(
    evaluate: Callable[[float], float],
    candidates: np.ndarray,
    target: float,
) -> tuple[float, float]:
    """Find the candidate cut whose predicted cost is closest to ``target`` (bisection over sorted candidates).

    ``evaluate(cut)`` must be non-increasing in ``cut`` (a higher cut removes more channels). The budget solver
    passes the prefix lengths ``0 .. N`` of :func:`removal_order` as candidates.

    Args:
        evaluate: predicted cost (e.g. parameters) for a cut.
        candidates: sorted ascending array of cuts, shape (K,).
        target: the cost to reach.

    Returns:
        ``(cut, cost)``: the chosen cut and its predicted cost. When even the last candidate costs more than
        ``target``, that candidate.
    """
    lo, hi = 0, len(candidates) - 1
    # Find the first candidate whose cost is <= target (the last one if none is), then compare with the one before.
    while lo < hi:
        mid = (lo + hi) // 2
        if evaluate(float(candidates[mid])) <= target:
            hi = mid
        else:
            lo = mid + 1
    best_cut = float(candidates[lo])
    best_cost = evaluate(best_cut)
    if lo > 0:
        previous = float(candidates[lo - 1])
        previous_cost = evaluate(previous)
        if abs(previous_cost - target) < abs(best_cost - target):
            return previous, previous_cost
    return best_cut, best_cost


def check_reached(
    mode: str,
    target: float,
    reached: float,
    total: float,
    smallest: Callable[[], float],
    rules: str,
    *,
    strict: bool,
) -> float:
    """Judge the cost of the cut :func:`solve_cut` found against the budget ``target * total``.

    Within :data:`TOLERANCE` of the budget the cut is taken. Further away, when even removing every removable
    channel costs more than ``(1 + TOLERANCE) * target * total``, the target is out of reach and this raises. Else
    the channel steps are too coarse for the target (one step is more than 2 % of a small model): with ``strict``
    this raises too; otherwise the closest cut is taken and a warning gives the value reached.

    Args:
        mode: the plan mode, for messages (``"target_params"`` ...).
        target: the fraction asked for, in (0, 1].
        reached: cost of the chosen cut.
        total: cost of the unpruned model.
        smallest: cost of the deepest cut allowed (called only when the cut misses).
        rules: the rules limiting the cut, for messages (``"min_channels=8, round_to=4"``).
        strict: refuse a plan outside the tolerance instead of warning.

    Returns:
        The fraction reached, ``reached / total``.

    Raises:
        InvalidOptionError: the target is out of reach, or (``strict``) no cut lands within the tolerance.
    """
    goal = target * total
    fraction = reached / total
    if abs(reached - goal) <= TOLERANCE * goal:
        return fraction
    deepest = smallest()
    if deepest > (1 + TOLERANCE) * goal:
        raise InvalidOptionError(
            f"{mode}={target:g} is not reachable with {rules}: the smallest reachable value is {deepest / total:.4f}"
        )
    if strict:
        raise InvalidOptionError(
            f"{mode}={target:g} cannot be met within {TOLERANCE:.0%} with {rules}: the closest reachable value "
            f"is {fraction:.4f} (channel steps too coarse); choose another target or a smaller round_to"
        )
    logger.warning(
        "%s=%g: channel steps are too coarse to land within %.0f%% with %s; the plan takes the closest reachable "
        "value, %.4f (strict=True refuses instead)",
        mode, target, TOLERANCE * 100, rules, fraction,
    )
    return fraction
