"""The pruner: :class:`GroupPruner` plans (per-layer-group thresholds, budgets) and applies group channel pruning.

Scores come from an importance (:mod:`.importance`); budgets are solved by :mod:`.budget`; plans are
:mod:`.plan` records; applying folds removed channels (:mod:`.folding`) and removes them (:mod:`.apply`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import nn

from .._utils.calls import split_inputs, tensors_in
from .._utils.errors import InternalError, InvalidOptionError, LayerNotFoundError, OptionTypeError
from ..graph import ChannelGraph, ChannelGroup, LayerGroupSpec
from ..graph.groups import min_units
from ..latency import LatencyCacheError, LatencyModel
from ..profile import record_positions
from ..runtime import Runtime, resolve_runtime
from .apply import _apply_plan
from .budget import (
    BudgetSolution,
    CostModel,
    LatencyFn,
    ScoredGroup,
    _rank_scores,
    added_biases,
    kept_count,
    latency_weights,
    predict_cost,
    quantile_cut,
    removed_channels,
    solve_budget,
)
from .folding import fold_target, is_fold_consumer
from .importance import Coupling, Importance, ScoreFn, as_importance
from .plan import (
    PLAN_MODES,
    TARGET_MODES,
    ChannelGroupPlan,
    LayerGroupPlan,
    PruningPlan,
    model_fingerprint,
    scored_weights_digest,
)
from .verify import land_latency

__all__ = ["GroupPruner"]

logger = logging.getLogger(__name__)


def _input_shapes(example_inputs: Any) -> list[list[int]]:
    """Shapes ``load_pruned`` can replay as positional zero inputs: a tensor or a flat sequence of tensors."""
    args, kwargs = split_inputs(example_inputs)
    tensors = tensors_in(args)
    return [list(t.shape) for t in tensors] if not kwargs and len(tensors) == len(args) else []


@dataclass(frozen=True)
class _BudgetRequest:
    """A budget mode of :meth:`GroupPruner.plan` as the solver takes it (``searched``: a normalisation or bias
    other than the default, so the thresholds reported are the scores at each group's removed fraction)."""

    mode: str
    target: float
    latency: LatencyFn | None
    latency_weight: float
    strict: bool
    normalise: str
    bias: Mapping[str, float]
    searched: bool
    miss_level: int = logging.WARNING


class GroupPruner:
    """Plans and applies group channel pruning on the model of a :class:`~grouppruner.graph.ChannelGraph`.

    Args:
        graph: the channel graph of the model to prune (it is pruned in place through the graph).
        layer_groups: a layer-group spec (:data:`~grouppruner.graph.LayerGroupSpec`, the same forms as
            ``graph.layer_groups(by=...)``: ``None`` for the automatic partition, ``{name: [glob patterns, names
            or ChannelGroups]}``, or a callable). Channel groups in no layer group are never pruned.
        importance: an :class:`~grouppruner.pruning.Importance`, its name, or a callable
            ``importance(model, group)`` returning (size,) or (L, size) scores. Default ``"auto"``
            (:class:`~grouppruner.pruning.AutoImportance`): |gamma| where the group has a BatchNorm, else its
            GroupNorm / LayerNorm scale, else the per-layer-normalised L2 norm of its producers' filters; the plan
            records per group which score was used. ``"bn_l1"`` (:class:`~grouppruner.pruning.BNScaleImportance`) leaves
            groups without a BatchNorm alone; ``"norm_l1"``, ``"filter_l1"``, ``"filter_l2"`` name the others.
        min_channels: every layer keeps at least this many channels (or all of them if it has fewer); in a
            grouped conv, where one group channel is one channel per conv group, the minimum counts layer
            channels. Never violated.
        round_to: if given, kept channel counts are multiples of it (a group smaller than that keeps all);
            default: the runtime's channel block (``None`` for a block of 1).
        coupling: how the per-layer scores of a channel group combine: ``"mean"`` (default), ``"max"`` or
            ``"vote"``; for an :class:`~grouppruner.pruning.Importance` object, set it on the object instead.
        example_inputs: inputs for the cost model and the folding probe; defaults to ``graph.example_inputs``.
        forward_fn: ``forward_fn(model, example_inputs)``; defaults to ``graph.forward_fn`` if set.
        runtime: the runtime the pruned model ships on (:mod:`grouppruner.runtime`): ``"onnxruntime"`` (default,
            :data:`~grouppruner.runtime.DEFAULT_RUNTIME`: kept widths on the CPU's vector block, latency measured
            in onnxruntime's CPU execution provider), ``"torch"`` (eager PyTorch, any width), or a
            :class:`~grouppruner.runtime.Runtime` naming threads or a block.

    Raises:
        ValueError: bad option values, unknown or non-prunable channel groups, a channel group listed twice
            (:class:`~grouppruner.InvalidOptionError`).
        TypeError: ``importance`` is neither an Importance, ``"bn_l1"`` nor callable.
    """

    def __init__(
        self,
        graph: ChannelGraph,
        *,
        layer_groups: LayerGroupSpec = None,
        importance: Importance | str | ScoreFn = "auto",
        min_channels: int = 8,
        round_to: int | None = None,
        coupling: Coupling | None = None,
        example_inputs: Any = None,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
        runtime: str | Runtime | None = None,
    ) -> None:
        self.importance = as_importance(importance, coupling)
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
            raise InvalidOptionError(f"GroupPruner: min_channels must be an int >= 1, got {min_channels!r}")
        if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
            raise InvalidOptionError(f"GroupPruner: round_to must be None or an int >= 1, got {round_to!r}")
        self.graph = graph
        self.model: nn.Module = graph.model
        self.min_channels = min_channels
        self.runtime = resolve_runtime(runtime)
        if round_to is None and self.runtime.channel_block > 1:
            round_to = self.runtime.channel_block
        self.round_to = round_to
        self.example_inputs = example_inputs if example_inputs is not None else getattr(graph, "example_inputs", None)
        if self.example_inputs is None:
            raise InvalidOptionError("GroupPruner: the graph has no example_inputs; pass example_inputs=")
        self.forward_fn = forward_fn if forward_fn is not None else getattr(graph, "forward_fn", None)
        self.layer_groups: dict[str, list[str]] = {
            name: [g.name for g in groups] for name, groups in graph.layer_groups(layer_groups).items()
        }
        self._latency_model: LatencyModel | None = None  # measured on the first latency plan without one
        self._positions, self._successor_bn = record_positions(
            self.model, self.example_inputs, forward_fn=self.forward_fn
        )

    # ------------------------------------------------------------------ scoring

    def scores(self, group: ChannelGroup) -> np.ndarray | None:
        """Coupled score of every channel of ``group``: shape (group.size,), or ``None`` if it cannot be scored.

        Raises:
            ValueError: a wrong score shape, naming the group.
            NonFiniteError: NaN / infinite scores, naming the group.
        """
        return self.importance(self.model, group)

    def _check_refs(self, group: ChannelGroup) -> None:
        # A LayerRef pointing outside its layer would corrupt the removal; fail with the culprit named instead.
        for ref in group.layers:
            if ref.role == "parameter":  # a bare layer-scale parameter: the graph's own removal checks its width
                continue
            weight = getattr(self.model.get_submodule(ref.name), "weight", None)
            if weight is None or len(ref.indices) != group.size:
                continue
            module = self.model.get_submodule(ref.name)
            if ref.dim == "out" or isinstance(module, nn.modules.batchnorm._BatchNorm):
                width = int(weight.shape[0])
            else:
                width = int(weight.shape[1]) * int(getattr(module, "groups", 1))
            if ref.indices and max(ref.indices) >= width:
                raise InvalidOptionError(
                    f"channel group {group.name!r}: layer {ref.name!r} ({ref.dim}) has {width} channels but the "
                    f"graph maps channel indices up to {max(ref.indices)}; the ChannelGraph is inconsistent"
                )

    # ------------------------------------------------------------------ planning

    def plan(
        self,
        *,
        ratios: Mapping[str, float] | None = None,
        thresholds: Mapping[str, float] | None = None,
        target_params: float | None = None,
        target_macs: float | None = None,
        target_latency: float | None = None,
        latency_model: LatencyModel | None = None,
        latency_weight: float = 0.0,
        layer_group_bias: Mapping[str, float] | None = None,
        normalise: str = "max",
        strict: bool = False,
        verify_steps: int | None = 3,
    ) -> PruningPlan:
        """Decide which channels to remove. Exactly one mode must be given.

        Args:
            ratios: layer group -> fraction p in [0, 1); the group's threshold is the p-quantile of its channel
                scores (the authors' rule): its ``floor(p * n)`` lowest-scoring channels go (ties ranked by
                position, so p is honoured even when scores tie). Layer groups not listed are not pruned.
            thresholds: layer group -> absolute threshold on the scores. Layer groups not listed are not pruned.
            target_params: fraction of the current parameter count to keep, in (0, 1]; thresholds are solved
                (see :mod:`grouppruner.pruning.budget` for how the budget is shared between layer groups) so that
                the predicted count lands within 1 % of the target; tied scores are split one channel at a time,
                deterministically, so a model whose gammas all tie can be cut to any reachable target.
            target_macs: fraction of the current conv + linear MACs to keep, in (0, 1].
            target_latency: fraction of the current latency to keep, in (0, 1], as predicted by ``latency_model``
                (see :mod:`grouppruner.latency`); the plan lands within 1 % of the target *prediction*.
            latency_model: the :class:`~grouppruner.latency.LatencyModel` for ``target_latency`` and
                ``latency_weight``; measured on first need (and kept on the pruner) when not given.
            latency_weight: the latency / accuracy trade-off of the budget modes, >= 0. With 0 (default)
                channels are ranked by their normalised score alone; with ``w > 0`` a channel group's normalised
                scores are divided by ``(s_i / mean s) ** w``, ``s_i`` the predicted latency saved per channel
                removed from it, so that at equal scores the channels that cost more time go first (the
                thresholds reported are then on this weighted score). Works with every target mode, e.g.
                ``plan(target_params=0.35, latency_weight=1.0)``.
            layer_group_bias: budget modes only: layer group -> factor > 0 on its pruning pressure (default 1 for
                groups not listed): the group's normalised scores are divided by it, so a factor above 1 makes the
                group lose more of the budget, below 1 less; the budget is still met. Thresholds reported are then
                the scores at each layer group's removed fraction. :class:`~grouppruner.pruning.PlanSearch` draws
                these factors to propose other plans of the same cost.
            normalise: budget modes only: how scores are made comparable across layer groups. ``"max"``
                (default): divided by the layer group's largest score (see :mod:`grouppruner.pruning.budget`);
                ``"rank"``: replaced by the channel's quantile within its layer group (``(k + 0.5) / n`` for the
                ``k``-th lowest of ``n``), so every layer group loses the same fraction of its channels (times its
                ``layer_group_bias``), whatever its score scale; the channels kept are still the highest-scoring.
            verify_steps: ``target_latency`` only: correction steps after the first plan, >= 0 (with 0 the first
                plan is still measured and recorded; only a measured miss of the final plan warns, the steps log at
                DEBUG); ``None``: no measurement, the plan lands within 1 % of the latency model's *prediction*
                (what :class:`~grouppruner.pruning.PlanSearch` compares candidates on).
            strict: budget modes only. A target that no plan meets within 1 % (below what ``min_channels`` /
                ``round_to`` allow, or between two channel steps) gives the closest reachable plan and a logged
                warning with the value reached; ``strict=True`` raises instead.

        Returns:
            The plan; nothing is changed on the model.

        Raises:
            InvalidOptionError: zero or several modes, a ratio outside [0, 1), a target outside (0, 1], NaN
                values, ``latency_weight`` / ``layer_group_bias`` / ``normalise`` with a ratio / threshold mode,
                a bias that is not > 0, an unknown ``normalise``, and with ``strict`` a target no plan
                meets within 1 % (the message gives the closest or the smallest reachable value).
            OptionTypeError: ``ratios`` / ``thresholds`` is not a mapping (e.g. ``ratios=0.5``).
            LayerNotFoundError: an unknown layer-group name (the message lists the valid ones).
            LatencyCacheError: ``latency_model`` was measured in another runtime than the pruner's.
            MissingExtraError: ``target_latency`` / ``latency_weight`` in onnxruntime without onnxruntime installed.
        """
        given = {
            "ratios": ratios,
            "thresholds": thresholds,
            "target_params": target_params,
            "target_macs": target_macs,
            "target_latency": target_latency,
        }
        modes = [name for name, value in given.items() if value is not None]
        if len(modes) != 1:
            raise InvalidOptionError(f"GroupPruner.plan needs exactly one of {list(PLAN_MODES)}, got {modes or 'none'}")
        mode = modes[0]
        if math.isnan(latency_weight) or latency_weight < 0:
            raise InvalidOptionError(f"latency_weight must be >= 0, got {latency_weight}")
        if mode not in TARGET_MODES:
            for option, value, default in (
                ("latency_weight", latency_weight, 0.0),
                ("layer_group_bias", layer_group_bias, None),
                ("normalise", normalise, "max"),
            ):
                if value != default:
                    raise InvalidOptionError(f"{option} applies to the target modes, not to {mode}")
        if normalise not in ("max", "rank"):
            raise InvalidOptionError(f"normalise must be 'max' or 'rank', got {normalise!r}")
        bias = self._check_bias(layer_group_bias)
        if verify_steps is not None and (
            isinstance(verify_steps, bool) or not isinstance(verify_steps, int) or verify_steps < 0
        ):
            raise InvalidOptionError(f"verify_steps must be None or an int >= 0, got {verify_steps!r}")
        members = self._scored()
        cost = CostModel(self.model, self._positions)
        latency = None
        if mode == "target_latency" or latency_weight > 0:
            latency = self._latency_predictor(latency_model)

        target: float | None = None
        if mode in TARGET_MODES:
            target = _fraction(mode, given[mode])
            searched = normalise != "max" or layer_group_bias is not None
            request = _BudgetRequest(mode, target, latency, latency_weight, strict, normalise, bias, searched)
            if mode != "target_latency" or verify_steps is None:
                return self._budget_plan(members, cost, request)[0]

            def plan_for(asked: float) -> tuple[PruningPlan, float]:  # land_latency warns on the measured outcome
                return self._budget_plan(members, cost, replace(request, target=asked, miss_level=logging.DEBUG))

            found = land_latency(
                target,
                plan_for,
                self._pruned_copy,
                self.runtime.runner(self.model, self.example_inputs, self.forward_fn),
                lambda pruned: self.runtime.runner(pruned, self.example_inputs, self.forward_fn),
                self.runtime,
                steps=verify_steps,
            )
            found.target = target
            return found
        group_thresholds, raw = self._cut_per_layer_group(mode, given[mode], members)
        gone = [
            m.group.size - kept_count(m.group.size - r, m.group.size, m.minimum, self.round_to)
            for m, r in zip(members, raw, strict=True)
        ]
        return self._make_plan(mode, target, members, group_thresholds, gone, cost)

    def _budget_plan(
        self, members: list[ScoredGroup], cost: CostModel, request: _BudgetRequest
    ) -> tuple[PruningPlan, float]:
        """The plan of a budget mode and the predicted fraction it reaches (a miss logged at its ``miss_level``)."""
        mode, latency = request.mode, request.latency
        ordered = _rank_scores(members) if request.normalise == "rank" else members
        solution = self._solve(ordered, cost, request)
        gone = solution.gone
        group_thresholds = self._removed_quantiles(members, gone) if request.searched else solution.thresholds
        plan = self._make_plan(mode, request.target, members, group_thresholds, gone, cost)
        # A guard on the numbers the plan reports against the solver's: never a silent disagreement.
        if latency is not None and mode == "target_latency":
            reported = latency(removed_channels(members, gone)) / latency({})
        else:
            reported = plan.params_ratio if mode == "target_params" else plan.macs_ratio
        if not math.isclose(reported, solution.reached, rel_tol=1e-9, abs_tol=1e-12):
            raise InternalError(f"{mode}: the plan reports {reported:.6f}, the solver predicted {solution.reached:.6f}")
        return plan, solution.reached

    def _pruned_copy(self, plan: PruningPlan) -> nn.Module:
        """A pruned deep copy of the model (the model and its graph are not touched)."""
        graph = copy.deepcopy(self.graph)
        _apply_plan(graph, plan, self.example_inputs, self._successor_bn, self.forward_fn, fold=True, check=True)
        return graph.model

    def _scored(self) -> list[ScoredGroup]:
        """Every channel group of a layer group that the importance scores, in layer-group order."""
        members = []
        for lg_name, cg_names in self.layer_groups.items():
            for cg_name in cg_names:
                group = self.graph.group(cg_name)
                self._check_refs(group)
                score = self.scores(group)
                if score is None:
                    logger.info("channel group %s is not scored by %s; it is not pruned", cg_name, self.importance)
                    continue
                members.append(
                    ScoredGroup(lg_name, group, score, min_units(group, self.min_channels), self._new_biases(group))
                )
        return members

    def _cut_per_layer_group(
        self, mode: str, values: Any, members: list[ScoredGroup]
    ) -> tuple[dict[str, float], list[int]]:
        """``ratios`` / ``thresholds``: per layer group its threshold, per member the channels below it."""
        checked = self._check_group_values(mode, values)
        thresholds: dict[str, float] = {}
        raw = [0] * len(members)
        for lg_name in self.layer_groups:
            index = [i for i, m in enumerate(members) if m.layer_group == lg_name]
            lg_members = [members[i] for i in index]
            if lg_name not in checked or not lg_members:
                pooled = [float(m.score.min()) for m in lg_members if len(m.score)]
                thresholds[lg_name] = min(pooled, default=0.0)
                continue
            if mode == "ratios":
                thresholds[lg_name], counts = quantile_cut(lg_members, checked[lg_name])
            else:
                thresholds[lg_name] = checked[lg_name]
                counts = [int((m.score < checked[lg_name]).sum()) for m in lg_members]
            for i, count in zip(index, counts, strict=True):
                raw[i] = count
        return thresholds, raw

    def _check_group_values(self, mode: str, values: Any) -> dict[str, float]:
        if not isinstance(values, Mapping):
            raise OptionTypeError(
                f"GroupPruner.plan({mode}=...) takes a mapping of layer group -> value, got "
                f"{type(values).__name__} {values!r:.40}; for every layer group: {mode}="
                f"dict.fromkeys(pruner.layer_groups, {values!r:.20}) (layer groups: {list(self.layer_groups)})"
            )
        checked: dict[str, float] = {}
        for name, value in values.items():
            if name not in self.layer_groups:
                raise LayerNotFoundError(
                    f"{mode}: unknown layer group {name!r}; valid layer groups: {sorted(self.layer_groups)}"
                )
            value = float(value)
            if math.isnan(value):
                raise InvalidOptionError(f"{mode}[{name!r}] is NaN")
            if mode == "ratios" and not 0.0 <= value < 1.0:
                raise InvalidOptionError(f"ratios[{name!r}] must be in [0, 1), got {value}")
            checked[name] = value
        return checked

    def _solve(self, members: list[ScoredGroup], cost: CostModel, request: _BudgetRequest) -> BudgetSolution:
        """The budget modes, solved by :func:`~grouppruner.pruning.budget.solve_budget` on this pruner's rules."""
        mode, target, latency, bias = request.mode, request.target, request.latency, request.bias
        weights = None
        if request.latency_weight > 0:
            assert latency is not None
            weights = latency_weights(members, latency, request.latency_weight)
        if bias:
            factors = [bias.get(m.layer_group, 1.0) for m in members]
            weights = [w * f for w, f in zip(weights or [1.0] * len(members), factors, strict=True)]
        if mode == "target_latency":
            assert latency is not None
            predictor = latency
            total = latency({})

            def cost_of(gone: list[int]) -> float:
                return predictor(removed_channels(members, gone))

        else:
            column = 0 if mode == "target_params" else 1
            total = cost.params if column == 0 else cost.macs

            def cost_of(gone: list[int]) -> float:
                return float(predict_cost(cost, members, gone)[column])

        rules = f"min_channels={self.min_channels}" + ("" if self.round_to is None else f", round_to={self.round_to}")
        return solve_budget(
            members,
            list(self.layer_groups),
            cost_of=cost_of,
            total=total,
            target=target,
            round_to=self.round_to,
            request=f"{mode}={target:g}",
            rules=rules,
            strict=request.strict,
            weights=weights,
            miss_level=request.miss_level,
        )

    def _check_bias(self, bias: Mapping[str, float] | None) -> dict[str, float]:
        if bias is None:
            return {}
        if not isinstance(bias, Mapping):
            raise OptionTypeError(
                f"layer_group_bias takes a mapping of layer group -> factor, got {type(bias).__name__}"
            )
        checked = {}
        for name, value in bias.items():
            if name not in self.layer_groups:
                raise LayerNotFoundError(
                    f"layer_group_bias: unknown layer group {name!r}; valid layer groups: {sorted(self.layer_groups)}"
                )
            factor = float(value)
            if not (factor > 0 and math.isfinite(factor)):
                raise InvalidOptionError(f"layer_group_bias[{name!r}] must be a finite number > 0, got {value!r}")
            checked[name] = factor
        return checked

    def _removed_quantiles(self, members: list[ScoredGroup], gone: list[int]) -> dict[str, float]:
        """Per layer group the score at its removed fraction (as the ``ratios`` mode reports its threshold)."""
        thresholds = {}
        for lg in self.layer_groups:
            here = [(m, g) for m, g in zip(members, gone, strict=True) if m.layer_group == lg and len(m.score)]
            pooled = np.sort(np.concatenate([m.score for m, _ in here])) if here else np.zeros(0)
            removed = sum(g for _, g in here)
            thresholds[lg] = float(pooled[min(removed, len(pooled) - 1)]) if len(pooled) else 0.0
        return thresholds

    def _latency_predictor(self, latency_model: LatencyModel | None) -> LatencyFn:
        if latency_model is None:
            if self._latency_model is None:
                logger.info("GroupPruner: measuring a latency model for this device (pass latency_model= to reuse one)")
                self._latency_model = LatencyModel.measure(
                    self.model, self.example_inputs, forward_fn=self.forward_fn, runtime=self.runtime
                )
            latency_model = self._latency_model
        elif latency_model.key.runtime != self.runtime.name:
            raise LatencyCacheError(
                f"GroupPruner: the latency model was measured in {latency_model.key.runtime!r}, the pruner plans for "
                f"{self.runtime.name!r}; measure it with LatencyModel.measure(..., runtime={self.runtime.name!r})"
            )
        return latency_model.predictor(self.model)

    def _new_biases(self, group: ChannelGroup) -> tuple[str, ...]:
        """Consumers of ``group`` that gain a bias when any of its channels is removed (beta folding)."""
        return tuple(
            ref.name
            for ref in group.layers
            if ref.dim == "in"
            and is_fold_consumer(self.model.get_submodule(ref.name))
            and fold_target(self.model, ref.name, self._successor_bn) == "new_bias"
        )

    def _make_plan(
        self,
        mode: str,
        target: float | None,
        members: list[ScoredGroup],
        thresholds: dict[str, float],
        gone: list[int],
        cost: CostModel,
    ) -> PruningPlan:
        params_after, macs_after = predict_cost(cost, members, gone)
        # the highest-scoring channels stay, ties by index
        kept = {
            m.group.name: sorted(int(i) for i in np.argsort(-m.score, kind="stable")[: m.group.size - g])
            for m, g in zip(members, gone, strict=True)
        }
        layer_plans = [
            LayerGroupPlan(
                name=lg,
                threshold=float(thresholds[lg]),
                channels_before=sum(m.group.size for m in members if m.layer_group == lg),
                channels_after=sum(len(kept[m.group.name]) for m in members if m.layer_group == lg),
                channel_groups=[m.group.name for m in members if m.layer_group == lg],
            )
            for lg in self.layer_groups
        ]
        group_plans = [
            ChannelGroupPlan(
                name=m.group.name,
                size=m.group.size,
                kept=kept[m.group.name],
                score=self.importance.kind(self.model, m.group),
            )
            for m in members
        ]
        return PruningPlan(
            fingerprint=model_fingerprint(self.model),
            mode=mode,
            target=target,
            importance=self.importance.name,
            coupling=self.importance.coupling,
            min_channels=self.min_channels,
            round_to=self.round_to,
            layer_groups=layer_plans,
            channel_groups=group_plans,
            params_before=cost.params,
            params_after=params_after,
            macs_before=cost.macs,
            macs_after=macs_after,
            add_bias=added_biases(members, gone),
            input_shapes=_input_shapes(self.example_inputs),
            weights_digest=scored_weights_digest(self.model, [m.group for m in members]),
            runtime=self.runtime.name,
        )

    # ------------------------------------------------------------------ applying

    def apply(self, plan: PruningPlan, *, fold: bool = True, allow_other_weights: bool = False) -> nn.Module:
        """Remove the planned channels in place (after beta folding) and return the model.

        The plan is kept on the model (:func:`applied_plans`) for :func:`grouppruner.checkpoint.save_pruned`.
        Parameters of pruned layers are new tensors afterwards: rebuild optimizers (:func:`rebuild_optimizer`).

        Args:
            plan: a plan made for this model in its current state.
            fold: fold the constant output of removed channels into their consumers (see
                :mod:`grouppruner.pruning.folding`); ``False`` only drops them, like torch-pruning.
            allow_other_weights: apply a plan made on another instance of this architecture (or on this model
                before it was trained further): its channel choice was made from other scores. Off by default,
                so that a plan never silently lands on weights it was not made from.

        Returns:
            ``graph.model``, pruned.

        Raises:
            ValueError: the plan was made for another architecture (or for this model before it was pruned), or
                from other weights and ``allow_other_weights`` is False.
        """
        removals = _apply_plan(
            self.graph,
            plan,
            self.example_inputs,
            self._successor_bn,
            self.forward_fn,
            fold=fold,
            check=not allow_other_weights,
        )
        logger.info(
            "pruned %d channel groups: params %d -> %d, MACs %d -> %d",
            sum(1 for _, r in removals if r),
            plan.params_before,
            plan.params_after,
            plan.macs_before,
            plan.macs_after,
        )
        return self.model


def _fraction(mode: str, value: Any) -> float:
    target = float(value)
    if not 0.0 < target <= 1.0 or math.isnan(target):
        raise InvalidOptionError(f"{mode} must be a fraction in (0, 1], got {target}")
    return target
