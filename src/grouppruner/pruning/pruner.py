"""The pruner: :class:`GroupPruner` plans (per-layer-group thresholds, budgets) and applies group channel pruning.

Scores come from an importance (:mod:`.importance`); budgets are solved by :mod:`.budget`; plans are
:mod:`.plan` records; applying folds removed channels (:mod:`.folding`) and removes them (:mod:`.apply`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph import ChannelGraph, ChannelGroup
from ..graph.groups import min_units
from ..graph.removal import PARAMETER
from ..latency import LatencyModel
from ..profile import record_positions
from .apply import apply_structure, check_plan
from .budget import TOLERANCE as _TOLERANCE
from .budget import CostModel, check_reached, kept_count, removal_order, solve_cut
from .folding import fold_removed_channels, fold_target, is_fold_consumer
from .importance import Coupling, Importance, ScoreFn, as_importance
from .optimizer import remember_parameter_names
from .plan import ChannelGroupPlan, LayerGroupPlan, PruningPlan, model_fingerprint, weights_digest

__all__ = ["GroupPruner"]

logger = logging.getLogger(__name__)


def _input_shapes(example_inputs: Any) -> list[list[int]]:
    if isinstance(example_inputs, torch.Tensor):
        return [list(example_inputs.shape)]
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in example_inputs):
        return [list(x.shape) for x in example_inputs]
    return []


class GroupPruner:
    """Plans and applies group channel pruning on the model of a :class:`~grouppruner.graph.ChannelGraph`.

    Args:
        graph: the channel graph of the model to prune (it is pruned in place through the graph).
        layer_groups: layer-group name -> channel groups (objects or names); defaults to
            ``graph.layer_groups()``. Channel groups in no layer group are never pruned.
        importance: an :class:`~grouppruner.pruning.Importance`, its name, or a callable
            ``importance(model, group)`` returning (size,) or (L, size) scores. Default ``"auto"``
            (:class:`~grouppruner.pruning.AutoImportance`): |gamma| where the group has a BatchNorm, else its
            GroupNorm / LayerNorm scale, else the per-layer-normalised L2 norm of its producers' filters; the plan
            records per group which score was used. ``"bn_l1"`` (:class:`~grouppruner.pruning.BNScale`) leaves
            groups without a BatchNorm alone; ``"norm_l1"``, ``"filter_l1"``, ``"filter_l2"`` name the others.
        min_channels: every layer keeps at least this many channels (or all of them if it has fewer); in a
            grouped conv, where one group channel is one channel per conv group, the minimum counts layer
            channels. Never violated.
        round_to: if given, kept channel counts are multiples of it (a group smaller than that keeps all).
        coupling: how the per-layer scores of a channel group combine: ``"mean"`` (default), ``"max"`` or
            ``"vote"``; for an :class:`~grouppruner.pruning.Importance` object, set it on the object instead.
        example_inputs: inputs for the cost model and the folding probe; defaults to ``graph.example_inputs``.
        forward_fn: ``forward_fn(model, example_inputs)``; defaults to ``graph.forward_fn`` if set.

    Raises:
        ValueError: bad option values, unknown or non-prunable channel groups, a channel group listed twice.
        TypeError: ``importance`` is neither an Importance, ``"bn_l1"`` nor callable.
    """

    def __init__(
        self,
        graph: ChannelGraph,
        *,
        layer_groups: Mapping[str, Sequence[ChannelGroup | str]] | None = None,
        importance: Importance | str | ScoreFn = "auto",
        min_channels: int = 8,
        round_to: int | None = None,
        coupling: Coupling | None = None,
        example_inputs: Any = None,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        self.importance = as_importance(importance, coupling)
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
            raise ValueError(f"GroupPruner: min_channels must be an int >= 1, got {min_channels!r}")
        if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
            raise ValueError(f"GroupPruner: round_to must be None or an int >= 1, got {round_to!r}")
        self.graph = graph
        self.model: nn.Module = graph.model
        self.min_channels = min_channels
        self.round_to = round_to
        self.example_inputs = example_inputs if example_inputs is not None else getattr(graph, "example_inputs", None)
        if self.example_inputs is None:
            raise ValueError("GroupPruner: the graph has no example_inputs; pass example_inputs=")
        self.forward_fn = forward_fn if forward_fn is not None else getattr(graph, "forward_fn", None)
        self.layer_groups = self._resolve_layer_groups(layer_groups)
        self._latency_model: LatencyModel | None = None  # measured on the first latency plan without one
        self._positions, self._successor_bn = record_positions(
            self.model, self.example_inputs, forward_fn=self.forward_fn
        )

    def _resolve_layer_groups(
        self, layer_groups: Mapping[str, Sequence[ChannelGroup | str]] | None
    ) -> dict[str, list[str]]:
        source = self.graph.layer_groups() if layer_groups is None else layer_groups
        resolved: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        for lg_name, members in source.items():
            names = []
            for member in members:
                cg_name = member if isinstance(member, str) else member.name
                try:
                    group = self.graph.group(cg_name)
                except KeyError as error:
                    raise ValueError(f"layer group {lg_name!r}: unknown channel group {cg_name!r}") from error
                if not group.prunable:
                    raise ValueError(
                        f"layer group {lg_name!r}: channel group {cg_name!r} is not prunable ({group.reason})"
                    )
                if cg_name in owner:
                    raise ValueError(
                        f"channel group {cg_name!r} is in two layer groups: {owner[cg_name]!r} and {lg_name!r}"
                    )
                owner[cg_name] = lg_name
                names.append(cg_name)
            resolved[str(lg_name)] = names
        return resolved

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
            if ref.kind == PARAMETER:  # a bare layer-scale parameter: the graph's own removal checks its width
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
                raise ValueError(
                    f"channel group {group.name!r}: layer {ref.name!r} ({ref.dim}) has {width} channels but the "
                    f"graph maps channel indices up to {max(ref.indices)}; the ChannelGraph is inconsistent"
                )

    def _min_units(self, group: ChannelGroup) -> int:
        """``min_channels`` in group channels (see :func:`~grouppruner.graph.groups.min_units`)."""
        return min_units(group, self.min_channels)

    def _kept(self, score: np.ndarray, raw: int, group: ChannelGroup) -> list[int]:
        """Group-local indices to keep: the ``raw`` best channels, adjusted by min_channels / round_to."""
        count = kept_count(raw, len(score), self._min_units(group), self.round_to)
        order = np.argsort(-score, kind="stable")  # highest scores first, ties by index
        return sorted(int(i) for i in order[:count])

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
        strict: bool = False,
    ) -> PruningPlan:
        """Decide which channels to remove. Exactly one mode must be given.

        Args:
            ratios: layer group -> fraction p in [0, 1); the group's threshold is the p-quantile of its channel
                scores (the authors' rule): its ``floor(p * n)`` lowest-scoring channels go (ties ranked by
                position, so p is honoured even when scores tie). Layer groups not listed are not pruned.
            thresholds: layer group -> absolute threshold on the scores. Layer groups not listed are not pruned.
            target_params: fraction of the current parameter count to keep, in (0, 1]; thresholds are solved
                (see :mod:`grouppruner.budget` for how the budget is shared between layer groups) so that the
                predicted count lands within 1 % of the target; tied scores are split one channel at a time,
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
            strict: target modes only. When channel steps are too coarse for any plan to land within 1 % of the
                target (a small model, a large ``round_to``), the plan closest to the target is returned and a
                warning logs the value reached; ``strict=True`` raises instead.

        Returns:
            The plan; nothing is changed on the model.

        Raises:
            ValueError: zero or several modes, a ratio outside [0, 1), a target outside (0, 1], a target more than
                1 % below what ``min_channels`` / ``round_to`` allow (the message gives the smallest reachable
                value), with ``strict`` a target that no plan meets within 1 % (channel steps too coarse: the
                message gives the closest value), NaN values.
            KeyError: an unknown layer-group name (the message lists the valid ones).
        """
        modes = {
            "ratios": ratios,
            "thresholds": thresholds,
            "target_params": target_params,
            "target_macs": target_macs,
            "target_latency": target_latency,
        }
        given = [name for name, value in modes.items() if value is not None]
        if len(given) != 1:
            raise ValueError(f"GroupPruner.plan needs exactly one of {list(modes)}, got {given or 'none'}")
        mode = given[0]
        scored: dict[str, list[tuple[ChannelGroup, np.ndarray]]] = {}
        for lg_name, cg_names in self.layer_groups.items():
            scored[lg_name] = []
            for cg_name in cg_names:
                group = self.graph.group(cg_name)
                self._check_refs(group)
                score = self.scores(group)
                if score is None:
                    logger.info("channel group %s is not scored by %s; it is not pruned", cg_name, self.importance)
                    continue
                scored[lg_name].append((group, score))
        cost = CostModel(self.model, self._positions)
        if math.isnan(latency_weight) or latency_weight < 0:
            raise ValueError(f"latency_weight must be >= 0, got {latency_weight}")
        if latency_weight > 0 and mode in ("ratios", "thresholds"):
            raise ValueError(f"latency_weight applies to the target modes, not to {mode}")
        latency = None
        if mode == "target_latency" or latency_weight > 0:
            latency = self._latency_predictor(latency_model)

        if mode in ("ratios", "thresholds"):
            values = self._check_group_values(mode, ratios if mode == "ratios" else thresholds)
            group_thresholds: dict[str, float] = {}
            kept: dict[str, list[int]] = {}
            for lg_name, members in scored.items():
                pooled = np.concatenate([s for _, s in members]) if members else np.zeros(0)
                ordered = np.sort(pooled)
                if lg_name not in values or len(pooled) == 0:
                    group_thresholds[lg_name] = float(ordered[0]) if len(pooled) else 0.0
                    kept.update({g.name: self._kept(s, len(s), g) for g, s in members})
                elif mode == "ratios":
                    # The lowest floor(p * n) channels go, ties spread evenly over the channel groups
                    # (budget.removal_order), so p is honoured even when all scores tie.
                    cut = math.floor(values[lg_name] * len(pooled))
                    group_thresholds[lg_name] = float(ordered[cut])
                    gone = np.bincount(_removal_owners([s for _, s in members])[:cut], minlength=len(members))
                    for (group, score), count in zip(members, gone, strict=True):
                        kept[group.name] = self._kept(score, len(score) - int(count), group)
                else:
                    group_thresholds[lg_name] = values[lg_name]
                    kept.update({g.name: self._kept(s, int((s >= values[lg_name]).sum()), g) for g, s in members})
            target = expected = None
        else:
            target = float(modes[mode])  # type: ignore[arg-type]
            if not 0.0 < target <= 1.0 or math.isnan(target):
                raise ValueError(f"{mode} must be a fraction in (0, 1], got {target}")
            group_thresholds, kept, expected = self._solve(scored, cost, mode, target, latency, latency_weight, strict)

        plan = self._make_plan(mode, target, scored, group_thresholds, kept, cost)
        if target is not None:
            # The contract of the target modes, checked on the numbers the plan reports: a guard against any
            # disagreement between the solver and the plan, never a silent miss.
            if mode == "target_latency":
                assert latency is not None
                reached = latency(self._removed(scored, kept)) / latency({})
            else:
                reached = plan.params_ratio if mode == "target_params" else plan.macs_ratio
            # Outside the tolerance only as the closest plan that the solver accepted (strict=False) predicted.
            accepted = not strict and expected is not None and math.isclose(reached, expected, rel_tol=1e-9)
            if abs(reached - target) > _TOLERANCE * target and not accepted:
                raise ValueError(
                    f"{mode}={target:g}: the plan reaches {reached:.4f}, more than {_TOLERANCE:.0%} away from the "
                    "target; choose another target or a smaller round_to"
                )
        return plan

    def _check_group_values(self, mode: str, values: Mapping[str, float] | None) -> dict[str, float]:
        assert values is not None
        checked: dict[str, float] = {}
        for name, value in values.items():
            if name not in self.layer_groups:
                raise KeyError(f"{mode}: unknown layer group {name!r}; valid layer groups: {sorted(self.layer_groups)}")
            value = float(value)
            if math.isnan(value):
                raise ValueError(f"{mode}[{name!r}] is NaN")
            if mode == "ratios" and not 0.0 <= value < 1.0:
                raise ValueError(f"ratios[{name!r}] must be in [0, 1), got {value}")
            checked[name] = value
        return checked

    def _solve(
        self,
        scored: dict[str, list[tuple[ChannelGroup, np.ndarray]]],
        cost: CostModel,
        mode: str,
        target: float,
        latency: Callable[[Mapping[tuple[str, str], int]], float] | None = None,
        latency_weight: float = 0.0,
        strict: bool = False,
    ) -> tuple[dict[str, float], dict[str, list[int]], float]:
        """Per-layer-group thresholds, kept channels and the fraction reached for a budget (see :mod:`.budget`).

        Channels are ranked by their score normalised by the largest score of their layer group (ties spread
        evenly by :func:`~grouppruner.budget.removal_order`); the removed channels are the prefix of this ranking
        whose predicted cost is closest to the goal, found by bisection over prefix lengths.
        """
        members = [(lg, group, score) for lg, pairs in scored.items() for group, score in pairs]
        scale = {
            lg: max((float(s.max()) for _, s in pairs if len(s)), default=1.0) or 1.0 for lg, pairs in scored.items()
        }
        normalised = [score / scale[lg] for lg, _, score in members]
        refs = [[(ref.name, ref.dim) for ref in group.layers] for _, group, _ in members]
        if latency_weight > 0:
            assert latency is not None
            normalised = _latency_weighted(normalised, members, refs, latency, latency_weight)
        column = {"target_params": 0, "target_macs": 1}.get(mode)  # None: the latency model is the cost
        if column is None:
            assert latency is not None
            total = latency({})
        else:
            total = cost.params if column == 0 else cost.macs
        goal = target * total
        order = removal_order(normalised)
        owners = np.repeat(np.arange(len(members)), [len(s) for s in normalised])[order]
        channels = len(order)

        biases = [self._new_biases(group) for _, group, _ in members]
        minima = [self._min_units(group) for _, group, _ in members]
        scales = [_parameter_refs(group) for _, group, _ in members]

        def evaluate(prefix: float) -> float:
            removed: dict[tuple[str, str], int] = {}
            new_bias: set[str] = set()
            bare = 0
            counts = np.bincount(owners[: int(prefix)], minlength=len(members))
            for (_, group, _), keys, bias, minimum, n_bare, count in zip(
                members, refs, biases, minima, scales, counts, strict=True
            ):
                gone = group.size - kept_count(group.size - int(count), group.size, minimum, self.round_to)
                if gone:
                    new_bias.update(bias)
                    bare += gone * n_bare
                    for key in keys:
                        removed[key] = removed.get(key, 0) + gone
            if column is None:
                assert latency is not None
                return latency(removed)
            predicted = cost.predict(removed, sorted(new_bias))
            return float(predicted[0] - bare if column == 0 else predicted[1])

        prefix_cut, reached = solve_cut(evaluate, np.arange(channels + 1, dtype=np.float64), goal)
        prefix = int(prefix_cut)
        rules = f"min_channels={self.min_channels}" + ("" if self.round_to is None else f", round_to={self.round_to}")
        fraction = check_reached(mode, target, reached, total, lambda: evaluate(channels), rules, strict=strict)
        pooled = np.concatenate(normalised) if normalised else np.zeros(0)
        # Channels scoring below lam go; channels tied at lam are split by the tie order.
        end = float(np.nextafter(pooled.max(initial=1.0), np.inf))
        lam = float(pooled[order[prefix]]) if prefix < channels else end
        counts = np.bincount(owners[:prefix], minlength=len(members))
        kept = {
            group.name: self._kept(score, group.size - int(count), group)
            for (_, group, score), count in zip(members, counts, strict=True)
        }
        return {lg: lam * scale[lg] for lg in scored}, kept, fraction

    def _latency_predictor(
        self, latency_model: LatencyModel | None
    ) -> Callable[[Mapping[tuple[str, str], int]], float]:
        if latency_model is None:
            if self._latency_model is None:
                logger.info("GroupPruner: measuring a latency model for this device (pass latency_model= to reuse one)")
                self._latency_model = LatencyModel.measure(self.model, self.example_inputs, forward_fn=self.forward_fn)
            latency_model = self._latency_model
        return latency_model.predictor(self.model)

    def _removed(
        self, scored: dict[str, list[tuple[ChannelGroup, np.ndarray]]], kept: dict[str, list[int]]
    ) -> dict[tuple[str, str], int]:
        """Channels removed per ``(module name, dim)`` by keeping ``kept`` (the cost models' input)."""
        removed: dict[tuple[str, str], int] = {}
        for members in scored.values():
            for group, _ in members:
                gone = group.size - len(kept[group.name])
                for ref in group.layers if gone else ():
                    removed[(ref.name, ref.dim)] = removed.get((ref.name, ref.dim), 0) + gone
        return removed

    def _new_biases(self, group: ChannelGroup) -> list[str]:
        """Consumers of ``group`` that gain a bias when any of its channels is removed (beta folding)."""
        return [
            ref.name
            for ref in group.layers
            if ref.dim == "in"
            and is_fold_consumer(self.model.get_submodule(ref.name))
            and fold_target(self.model, ref.name, self._successor_bn) == "new_bias"
        ]

    def _make_plan(
        self,
        mode: str,
        target: float | None,
        scored: dict[str, list[tuple[ChannelGroup, np.ndarray]]],
        thresholds: dict[str, float],
        kept: dict[str, list[int]],
        cost: CostModel,
    ) -> PruningPlan:
        removed: dict[tuple[str, str], int] = {}
        new_bias: set[str] = set()
        bare = 0  # entries of bare layer-scale parameters, which the cost model of modules does not see
        for members in scored.values():
            for group, _ in members:
                gone = group.size - len(kept[group.name])
                if not gone:
                    continue
                bare += gone * _parameter_refs(group)
                for ref in group.layers:
                    removed[(ref.name, ref.dim)] = removed.get((ref.name, ref.dim), 0) + gone
                new_bias.update(self._new_biases(group))
        add_bias = sorted(new_bias)
        params_after, macs_after = cost.predict(removed, add_bias)
        params_after -= bare
        layer_plans = [
            LayerGroupPlan(
                name=lg,
                threshold=float(thresholds[lg]),
                channels_before=sum(g.size for g, _ in members),
                channels_after=sum(len(kept[g.name]) for g, _ in members),
                channel_groups=[g.name for g, _ in members],
            )
            for lg, members in scored.items()
        ]
        group_plans = [
            ChannelGroupPlan(name=g.name, size=g.size, kept=kept[g.name], score=self.importance.kind(self.model, g))
            for members in scored.values()
            for g, _ in members
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
            add_bias=add_bias,
            input_shapes=_input_shapes(self.example_inputs),
            weights_digest=weights_digest(self.model, [g for members in scored.values() for g, _ in members]),
        )

    # ------------------------------------------------------------------ applying

    def apply(self, plan: PruningPlan, *, fold: bool = True, allow_other_weights: bool = False) -> nn.Module:
        """Remove the planned channels in place (after beta folding) and return the model.

        The plan is kept on the model (:func:`applied_plans`) for :func:`grouppruner.checkpoint.save_pruned`.
        Parameters of pruned layers are new tensors afterwards: rebuild optimizers (:func:`rebuild_optimizer`).

        Args:
            plan: a plan made for this model in its current state.
            fold: fold the constant output of removed channels into their consumers (see
                :mod:`grouppruner.folding`); ``False`` only drops them, like torch-pruning.
            allow_other_weights: apply a plan made on another instance of this architecture (or on this model
                before it was trained further): its channel choice was made from other scores. Off by default,
                so that a plan never silently lands on weights it was not made from.

        Returns:
            ``graph.model``, pruned.

        Raises:
            ValueError: the plan was made for another architecture (or for this model before it was pruned), or
                from other weights and ``allow_other_weights`` is False.
        """
        removals = check_plan(self.graph, plan, check_weights=not allow_other_weights)
        if fold:
            added = fold_removed_channels(
                self.model,
                removals,
                self.example_inputs,
                successor_bn=self._successor_bn,
                forward_fn=self.forward_fn,
                max_stride=max((g.stride for g in self.graph.channel_groups if g.stride), default=None),
            )
            if sorted(added) != sorted(plan.add_bias):
                raise RuntimeError(f"beta folding added biases to {added}, the plan expected {plan.add_bias}")
        remember_parameter_names(self.model)
        apply_structure(self.graph, plan, removals=removals, add_bias=not fold)
        logger.info(
            "pruned %d channel groups: params %d -> %d, MACs %d -> %d",
            sum(1 for _, r in removals if r),
            plan.params_before,
            plan.params_after,
            plan.macs_before,
            plan.macs_after,
        )
        return self.model


def _parameter_refs(group: ChannelGroup) -> int:
    """Number of bare-parameter entries one group channel stands for (layer scale, implicit add / multiply)."""
    return sum(ref.kind == PARAMETER for ref in group.layers)


def _removal_owners(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Group index of every channel in :func:`~grouppruner.budget.removal_order`, shape (sum(size_i),)."""
    owner = np.repeat(np.arange(len(scores)), [len(s) for s in scores])
    return np.asarray(owner[removal_order(scores)])


def _latency_weighted(
    normalised: list[np.ndarray],
    members: Sequence[tuple[str, ChannelGroup, np.ndarray]],
    refs: Sequence[Sequence[tuple[str, str]]],
    latency: Callable[[Mapping[tuple[str, str], int]], float],
    weight: float,
) -> list[np.ndarray]:
    """Normalised scores divided by ``(saving_i / mean saving) ** weight`` per channel group.

    ``saving_i``: predicted seconds saved per channel when half of channel group ``i`` goes (half, not one, so that
    the saving reflects the group's slope rather than one step of a fitted intercept).
    """
    dense = latency({})
    savings = []
    for (_, group, _), keys in zip(members, refs, strict=True):
        half = max(group.size // 2, 1)
        savings.append(max(dense - latency({key: half for key in keys}), 0.0) / half)
    positive = [s for s in savings if s > 0]
    floor = min(positive) if positive else 1.0  # a group whose removal saves nothing measurable ranks as the cheapest
    mean = float(np.mean([max(s, floor) for s in savings])) if savings else 1.0
    return [score / (max(s, floor) / mean) ** weight for score, s in zip(normalised, savings, strict=True)]
