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

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
from torch import nn

from .._utils.errors import InvalidOptionError
from ..graph import ChannelGroup
from ..profile import LayerCost, layer_costs

__all__ = [
    "TOLERANCE",
    "BudgetSolution",
    "CostModel",
    "Removed",
    "ScoredGroup",
    "kept_count",
    "latency_weights",
    "predict_cost",
    "quantile_cut",
    "removal_order",
    "removed_channels",
    "solve_budget",
    "solve_cut",
]

logger = logging.getLogger(__name__)

Removed: TypeAlias = "dict[tuple[str, str], int]"
"""Channels removed per ``(module name, dim)``, dim ``"out"`` or ``"in"``: what every cost model reads."""

LatencyFn: TypeAlias = "Callable[[Mapping[tuple[str, str], int]], float]"

TOLERANCE = 0.01
"""Budget modes: a plan within this relative distance of the target meets it."""


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


@dataclass(frozen=True)
class ScoredGroup:
    """One channel group the pruner may cut, with what its cut obeys and costs.

    Attributes:
        layer_group: the layer group it belongs to (which threshold applies).
        group: the channel group.
        score: ``(group.size,)`` its channel scores (higher is more important).
        minimum: the fewest group channels it keeps (:func:`~grouppruner.graph.groups.min_units` of ``min_channels``).
        new_biases: consumers that gain a bias when any of its channels goes (beta folding).
    """

    layer_group: str
    group: ChannelGroup
    score: np.ndarray
    minimum: int
    new_biases: tuple[str, ...] = ()

    @property
    def bare(self) -> int:
        """Entries of bare channel-indexed parameters (layer scales) per group channel: the module cost model
        does not see them."""
        return sum(ref.role == "parameter" for ref in self.group.layers)


def removed_channels(members: Sequence[ScoredGroup], gone: Sequence[int]) -> Removed:
    """Channels removed per ``(module name, dim)`` when member ``i`` loses ``gone[i]`` channels."""
    removed: Removed = {}
    for member, count in zip(members, gone, strict=True):
        for ref in member.group.layers if count else ():
            key = (ref.name, ref.dim)
            removed[key] = removed.get(key, 0) + int(count)
    return removed


def added_biases(members: Sequence[ScoredGroup], gone: Sequence[int]) -> list[str]:
    """Sorted names of the consumers that gain a bias when member ``i`` loses ``gone[i]`` channels."""
    return sorted({name for m, count in zip(members, gone, strict=True) if count for name in m.new_biases})


def predict_cost(cost: CostModel, members: Sequence[ScoredGroup], gone: Sequence[int]) -> tuple[int, int]:
    """``(params, macs)`` of the model after member ``i`` loses ``gone[i]`` channels (beta folding included)."""
    params, macs = cost.predict(removed_channels(members, gone), added_biases(members, gone))
    bare = sum(int(count) * m.bare for m, count in zip(members, gone, strict=True))
    return params - bare, macs


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


@dataclass(frozen=True)
class BudgetSolution:
    """What :func:`solve_budget` found.

    Attributes:
        thresholds: per layer group the threshold on its (raw) scores.
        gone: per member the channels it loses, ``min_channels`` / ``round_to`` applied.
        reached: the predicted cost after the cut, as a fraction of the current cost.
    """

    thresholds: dict[str, float]
    gone: list[int]
    reached: float


def solve_budget(
    members: Sequence[ScoredGroup],
    layer_groups: Sequence[str],
    *,
    cost_of: Callable[[list[int]], float],
    total: float,
    target: float,
    round_to: int | None,
    request: str,
    rules: str,
    strict: bool = False,
    weights: Sequence[float] | None = None,
    miss_level: int = logging.WARNING,
) -> BudgetSolution:
    """Per-layer-group thresholds whose cut brings ``cost_of`` closest to ``target * total`` (see module doc).

    Args:
        members: the scored channel groups.
        layer_groups: every layer group, also those without a scored member (each gets a threshold).
        cost_of: predicted cost (parameters, MACs or seconds) after member ``i`` loses ``gone[i]`` channels.
        total: the current cost.
        target: the fraction of ``total`` to keep, in (0, 1].
        round_to: kept counts are multiples of it (``None``: any count).
        request: the request, for messages (e.g. ``"target_params=0.35"``).
        rules: the rules the cut obeys, for messages (e.g. ``"min_channels=8, round_to=8"``).
        strict: refuse a plan more than :data:`TOLERANCE` away from the target because the channel steps are too
            coarse; otherwise the closest plan is returned and a warning logged with the value it reaches. A target
            below what the minimum widths allow is refused either way.
        weights: per member a divisor of its normalised scores (:func:`latency_weights`), or ``None``.
        miss_level: the logging level of the message when the closest plan misses (``logging.DEBUG`` for the
            intermediate steps of a correction loop, whose caller reports the final outcome itself).

    Raises:
        InvalidOptionError: a target below the smallest reachable value (named in the message), or ``strict`` and
            no plan within :data:`TOLERANCE` (the message names the closest value).
    """
    maxima = dict.fromkeys(layer_groups, -np.inf)
    for m in members:
        if len(m.score):
            maxima[m.layer_group] = max(maxima[m.layer_group], float(m.score.max()))
    scale = {lg: v if np.isfinite(v) and v != 0 else 1.0 for lg, v in maxima.items()}
    normalised = [m.score / scale[m.layer_group] for m in members]
    if weights is not None:
        normalised = [score / w for score, w in zip(normalised, weights, strict=True)]
    goal = target * total
    order = removal_order(normalised)
    owners = np.repeat(np.arange(len(members)), [len(s) for s in normalised])[order]
    channels = len(order)

    def gone_at(prefix: int) -> list[int]:
        counts = np.bincount(owners[:prefix], minlength=len(members))
        return [
            m.group.size - kept_count(m.group.size - int(c), m.group.size, m.minimum, round_to)
            for m, c in zip(members, counts, strict=True)
        ]

    prefix_cut, reached = solve_cut(
        lambda prefix: cost_of(gone_at(int(prefix))), np.arange(channels + 1, dtype=np.float64), goal
    )
    prefix = int(prefix_cut)
    if abs(reached - goal) > TOLERANCE * goal:
        smallest = cost_of(gone_at(channels))
        if smallest > (1 + TOLERANCE) * goal:
            # below what the minimum widths allow: no plan is near what was asked, so none is made
            raise InvalidOptionError(
                f"{request} is not reachable with {rules}: the smallest reachable value is {smallest / total:.4f}"
            )
        else:
            message = (
                f"{request} cannot be met within {TOLERANCE:.0%} with {rules}: the closest reachable value is "
                f"{reached / total:.4f} (channel steps too coarse; choose another target or a smaller round_to)"
            )
        if strict:
            raise InvalidOptionError(message)
        logger.log(miss_level, "%s; planned the closest reachable value (strict=True refuses instead)", message)
    pooled = np.concatenate(normalised) if normalised else np.zeros(0)
    # Channels scoring below lam go; channels tied at lam are split by the tie order.
    end = float(np.nextafter(pooled.max(initial=1.0), np.inf))
    lam = float(pooled[order[prefix]]) if prefix < channels else end
    return BudgetSolution({lg: lam * scale[lg] for lg in layer_groups}, gone_at(prefix), reached / total)


def quantile_cut(members: Sequence[ScoredGroup], ratio: float) -> tuple[float, list[int]]:
    """The authors' rule for one layer group: its ``floor(ratio * n)`` lowest-scoring channels go.

    Ties are spread evenly over the channel groups (:func:`removal_order`), so ``ratio`` is honoured even when
    all scores tie.

    Returns:
        ``(threshold, raw_gone)``: the ``ratio``-quantile of the pooled scores and, per member, the channels
        below it (before ``min_channels`` / ``round_to``).
    """
    scores = [m.score for m in members]
    pooled = np.sort(np.concatenate(scores)) if scores else np.zeros(0)
    if not len(pooled):
        return 0.0, [0] * len(members)
    cut = math.floor(ratio * len(pooled))
    owners = np.repeat(np.arange(len(scores)), [len(s) for s in scores])[removal_order(scores)]
    return float(pooled[cut]), [int(c) for c in np.bincount(owners[:cut], minlength=len(members))]


def latency_weights(members: Sequence[ScoredGroup], latency: LatencyFn, weight: float) -> list[float]:
    """Per member the divisor ``(saving_i / mean saving) ** weight`` of its normalised scores.

    ``saving_i``: predicted seconds saved per channel when half of channel group ``i`` goes (half, not one, so that
    the saving reflects the group's slope rather than one step of a fitted intercept). At equal scores, the
    channels that cost more time then go first.
    """
    dense = latency({})
    savings = []
    for m in members:
        half = max(m.group.size // 2, 1)
        keys = {(ref.name, ref.dim) for ref in m.group.layers}
        savings.append(max(dense - latency(dict.fromkeys(keys, half)), 0.0) / half)
    positive = [s for s in savings if s > 0]
    floor = min(positive) if positive else 1.0  # a group whose removal saves nothing measurable ranks as the cheapest
    mean = float(np.mean([max(s, floor) for s in savings])) if savings else 1.0
    return [(max(s, floor) / mean) ** weight for s in savings]


def _rank_scores(members: list[ScoredGroup]) -> list[ScoredGroup]:
    """``members`` with each score replaced by the channel's quantile ``(k + 0.5) / n`` within its layer group
    (same order within every channel group; ties ranked as :func:`~grouppruner.pruning.budget.removal_order` does)."""
    ranked = list(members)
    for lg in dict.fromkeys(m.layer_group for m in members):
        index = [i for i, m in enumerate(members) if m.layer_group == lg]
        scores = [members[i].score for i in index]
        order = removal_order(scores)
        quantile = np.empty(len(order))
        quantile[order] = (np.arange(len(order)) + 0.5) / max(len(order), 1)
        starts = np.cumsum([0] + [len(s) for s in scores])
        for j, i in enumerate(index):
            ranked[i] = dataclasses.replace(members[i], score=quantile[starts[j] : starts[j + 1]])
    return ranked
