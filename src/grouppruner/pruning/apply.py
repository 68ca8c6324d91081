"""Applying a plan: check it against the graph, then remove the planned channels through the graph.

:class:`~grouppruner.pruning.GroupPruner.apply` folds the removed channels' constant outputs first
(:mod:`.folding`); :func:`apply_structure` alone reproduces a saved plan's architecture
(:func:`grouppruner.checkpoint.load_pruned`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._utils.errors import InternalError, ModelChangedError
from ..graph import ChannelGraph, ChannelGroup
from .folding import fold_removed_channels
from .optimizer import remember_parameter_names
from .plan import PruningPlan, model_fingerprint, record_plan, scored_weights_digest

__all__ = ["apply_structure", "check_plan"]


def check_plan(
    graph: ChannelGraph, plan: PruningPlan, *, check_weights: bool = False
) -> list[tuple[ChannelGroup, list[int]]]:
    """Check that ``plan`` fits the graph's model and return ``(group, removed indices)`` per planned group.

    Args:
        graph: channel graph of the model to prune.
        plan: the plan.
        check_weights: also require the model's scored weights to be those the plan was made from (its
            ``weights_digest``; plans without one are not checked). Off when replaying a saved plan on a
            freshly built model (``load_pruned``), whose weights are loaded afterwards.

    Raises:
        ValueError: another architecture, a channel group missing or of another size, or other weights.
    """
    fingerprint = model_fingerprint(graph.model)
    if plan.fingerprint != fingerprint:
        raise ModelChangedError(
            f"the plan was made for a model with fingerprint {plan.fingerprint}, this model has {fingerprint} "
            "(another architecture, or a model that was changed after planning)"
        )
    removals = []
    for entry in plan.channel_groups:
        try:
            group = graph.group(entry.name)
        except KeyError as error:
            raise ModelChangedError(f"the plan names channel group {entry.name!r}, which this graph lacks") from error
        if group.size != entry.size:
            raise ModelChangedError(
                f"channel group {entry.name!r} has {group.size} channels, the plan expects {entry.size}"
            )
        removals.append((group, entry.removed))
    if check_weights and plan.weights_digest is not None:
        digest = scored_weights_digest(graph.model, [group for group, _ in removals])
        if digest != plan.weights_digest:
            raise ModelChangedError(
                f"the plan was made from other weights (weights digest {plan.weights_digest}, this "
                f"{type(graph.model).__name__} has {digest}): the same architecture, but another trained instance, "
                "or this one was trained after planning, so the plan's choice of channels does not reflect these "
                "scores. Plan again on this model, or pass allow_other_weights=True to apply it anyway"
            )
    return removals


def apply_structure(
    graph: ChannelGraph,
    plan: PruningPlan,
    *,
    removals: Sequence[tuple[ChannelGroup, Sequence[int]]] | None = None,
    add_bias: bool = True,
) -> None:
    """Apply the structural part of ``plan`` (new biases, channel removal) without folding; records the plan.

    This is what ``load_pruned`` replays on a freshly built model before loading the pruned weights.

    Args:
        graph: channel graph of the model the plan was made for.
        plan: the plan.
        removals: precomputed ``(group, removed indices)`` pairs (checked against the plan when ``None``).
        add_bias: create the zero biases listed in ``plan.add_bias`` (folding creates them itself).
    """
    if removals is None:
        removals = check_plan(graph, plan)
    if add_bias:
        for name in plan.add_bias:
            module = graph.model.get_submodule(name)
            weight = module.weight
            assert isinstance(weight, torch.Tensor)
            module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    for group, removed in removals:
        if removed:
            graph.remove_channels(group.name, list(removed))
    record_plan(graph.model, plan)


def _apply_plan(
    graph: ChannelGraph,
    plan: PruningPlan,
    example_inputs: Any,
    successor_bn: Mapping[str, str],
    forward_fn: Callable[[nn.Module, Any], Any] | None,
    *,
    fold: bool,
    check: bool,
) -> list[tuple[ChannelGroup, list[int]]]:
    """Fold (optionally) and remove the planned channels of ``graph.model`` in place; returns the removals."""
    model = graph.model
    removals = check_plan(graph, plan, check_weights=check)
    if fold:
        added = fold_removed_channels(
            model,
            removals,
            example_inputs,
            successor_bn=dict(successor_bn),
            forward_fn=forward_fn,
            max_stride=max((g.stride for g in graph.channel_groups if g.stride), default=None),
        )
        if sorted(added) != sorted(plan.add_bias):
            raise InternalError(f"beta folding added biases to {added}, the plan expected {plan.add_bias}")
    remember_parameter_names(model)
    apply_structure(graph, plan, removals=removals, add_bias=not fold)
    return removals
