"""The pruning plan: what :class:`grouppruner.pruning.GroupPruner` will remove, as plain JSON-serializable data.

A plan is made for one model: its architecture (:func:`model_fingerprint`) and its weights, the BatchNorm scales
the scores came from (:func:`scored_weights_digest`); it records, per layer group, the threshold
and the channel counts, per channel group the kept channel indices, and the predicted parameters and MACs before
and after. Applied plans are kept on the model (:func:`applied_plans`) so that
:func:`grouppruner.checkpoint.save_pruned` can store the structure next to the weights.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from .._utils.digest import model_fingerprint, weights_digest
from .._utils.errors import DataError
from .._utils.wrappers import unwrap

if TYPE_CHECKING:  # the graph package (torch-pruning tracing) is not needed to read or write plans
    from ..graph import ChannelGroup

__all__ = [
    "PLANS_ATTRIBUTE",
    "PLAN_MODES",
    "ChannelGroupPlan",
    "LayerGroupPlan",
    "PruningPlan",
    "applied_plans",
    "model_fingerprint",
    "pop_plans",
    "record_plan",
    "scored_weights_digest",
    "weights_digest",
]

PLANS_ATTRIBUTE = "_grouppruner_plans"
"""Where the applied plans live: an instance attribute of the pruned model (of the model inside a DDP /
DataParallel / ``torch.compile`` wrapper), a plain list of :class:`PruningPlan`. Being neither a parameter, a
buffer nor a submodule, it stays out of ``state_dict()`` (``save_pruned`` writes it as JSON metadata instead) and
is carried along by ``copy.deepcopy``; it is the only state grouppruner keeps on a model."""


def scored_weights_digest(model: nn.Module, groups: Iterable[ChannelGroup]) -> str:
    """A short hash of the weights the scores of ``groups`` depend on: the identity of one trained instance.

    Two models of the same architecture share a :func:`model_fingerprint`; their BatchNorm scales (gamma), which
    the default importance ranks, tell them apart. Hashed per channel group: the ``weight`` of every BatchNorm
    member, or, for a group without one (a custom importance), the root layer's ``weight``
    (:func:`weights_digest` of those tensors).

    Args:
        model: the model the groups belong to.
        groups: the channel groups of a plan.

    Returns:
        16 hex characters; changes when any of those weights changes (another instance, or more training).
    """
    names = {name for group in groups for name in ([ref.name for ref in group.bns] or [group.name])}
    return weights_digest(model, only=[f"{name}.weight" for name in names])


@dataclass
class LayerGroupPlan:
    """One layer group of the plan.

    Attributes:
        name: layer-group name (e.g. ``"backbone/s16"``, see :meth:`grouppruner.graph.ChannelGraph.layer_groups`).
        threshold: channels whose (coupled) score is below this value are removed, unless ``min_channels`` or
            ``round_to`` keep them. In the ``ratios`` and target modes, channels whose score equals it may go
            too: ties at the threshold are split evenly over the channel groups (see
            :func:`grouppruner.pruning.budget.removal_order`); in the ``thresholds`` mode they all stay.
        channels_before: channels of all its channel groups before pruning.
        channels_after: channels kept.
        channel_groups: names of its channel groups.
    """

    name: str
    threshold: float
    channels_before: int
    channels_after: int
    channel_groups: list[str]


@dataclass
class ChannelGroupPlan:
    """One channel group of the plan.

    Attributes:
        name: channel-group name (its root layer).
        size: channels before pruning.
        kept: sorted group-local indices (0 .. size-1) of the channels that stay.
        score: which score ranked its channels (``"bn_l1"``, ``"norm_l1"``, ``"filter_l2"``, ... see
            :meth:`grouppruner.pruning.Importance.kind`); empty in plans saved before it was recorded.
    """

    name: str
    size: int
    kept: list[int]
    score: str = ""

    @property
    def removed(self) -> list[int]:
        """Sorted group-local indices of the channels that go."""
        keep = set(self.kept)
        return [i for i in range(self.size) if i not in keep]


PLAN_MODES: tuple[str, ...] = ("ratios", "thresholds", "target_params", "target_macs", "target_latency")
"""The modes of :meth:`GroupPruner.plan`, one keyword each; a saved plan must name one of them."""

TARGET_MODES: tuple[str, ...] = PLAN_MODES[2:]
"""The budget modes: a fraction of the current cost to keep."""


@dataclass
class PruningPlan:
    """What to prune, for one model. Plain data: ``to_json()`` / ``from_json()`` round-trip exactly.

    Attributes:
        fingerprint: :func:`model_fingerprint` of the model the plan was made for.
        mode: one of :data:`PLAN_MODES`: ``"ratios"``, ``"thresholds"``, ``"target_params"``,
            ``"target_macs"`` or ``"target_latency"`` (the keyword of :meth:`GroupPruner.plan` that made it).
        target: the requested fraction for the target modes, else ``None``.
        importance: ``"bn_l1"`` or the name of the custom importance callable.
        coupling: ``"mean"``, ``"max"`` or ``"vote"``.
        min_channels: per-layer minimum used.
        round_to: channel multiple used, or ``None``.
        layer_groups: per layer group threshold and channel counts.
        channel_groups: per channel group the kept indices (every planned group, pruned or not).
        params_before: parameters of the model before (predicted by the cost model, equal to the real count).
        params_after: predicted parameters after applying the plan.
        macs_before: conv + linear MACs for the example inputs before.
        macs_after: predicted MACs after.
        add_bias: layers that receive a new bias parameter through beta folding.
        input_shapes: shapes of the example inputs (used to re-trace the model in ``load_pruned``).
        weights_digest: :func:`scored_weights_digest` of the model's scored weights when the plan was made;
            :meth:`~grouppruner.pruning.GroupPruner.apply` refuses a model whose weights differ, unless
            ``allow_other_weights=True``. ``None`` in plans written before this field existed (not checked).
    """

    fingerprint: str
    mode: str
    target: float | None
    importance: str
    coupling: str
    min_channels: int
    round_to: int | None
    layer_groups: list[LayerGroupPlan]
    channel_groups: list[ChannelGroupPlan]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    add_bias: list[str] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)
    weights_digest: str | None = None

    @property
    def params_ratio(self) -> float:
        """Predicted parameters after / before."""
        return self.params_after / max(self.params_before, 1)

    @property
    def macs_ratio(self) -> float:
        """Predicted MACs after / before."""
        return self.macs_after / max(self.macs_before, 1)

    def to_dict(self) -> dict[str, Any]:
        """The plan as nested dicts / lists of str, int and float."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        """Rebuild a plan from :meth:`to_dict` output.

        Every field is type-checked (a hand-edited file must fail here with the field named, not later with an
        AttributeError deep in the pruning code). ``weights_digest`` may be absent (plans written before it).

        Raises:
            ValueError: when fields are missing, unknown or of the wrong type / range (the message names the field).
        """
        if not isinstance(data, dict):
            raise DataError(f"not a valid PruningPlan: expected an object, got {type(data).__name__}")
        try:
            values = dict(data)
            _check_plan_fields(values)
            values["layer_groups"] = [LayerGroupPlan(**g) for g in data["layer_groups"]]
            values["channel_groups"] = [ChannelGroupPlan(**g) for g in data["channel_groups"]]
            return cls(**values)
        except (KeyError, TypeError) as error:
            raise DataError(f"not a valid PruningPlan: {error}") from error

    def to_json(self, **kwargs: Any) -> str:
        """Strict JSON text (no NaN / Infinity); keyword arguments go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        """Rebuild a plan from :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"PruningPlan JSON cannot be parsed: {error}") from error
        if not isinstance(data, dict):
            raise DataError("PruningPlan JSON must be an object")
        return cls.from_dict(data)

    def summary(self) -> str:
        """A text table: per layer group threshold, channels before -> after, then predicted totals."""
        header = f"{'layer group':<24} {'threshold':>11} {'channels':>17} {'kept':>7}"
        lines = [f"PruningPlan ({self.mode}" + (f"={self.target:g}" if self.target is not None else "") + ")"]
        lines += [header, "-" * len(header)]
        for group in self.layer_groups:
            kept = group.channels_after / max(group.channels_before, 1)
            counts = f"{group.channels_before} -> {group.channels_after}"
            lines.append(f"{group.name:<24} {group.threshold:>11.4g} {counts:>17} {kept:>7.1%}")
        lines.append("-" * len(header))
        by_score: dict[str, list[str]] = {}
        for cg in self.channel_groups:
            by_score.setdefault(cg.score or self.importance, []).append(cg.name)
        for score, names in by_score.items():
            shown = ", ".join(names[:4]) + (f", ... ({len(names)} groups)" if len(names) > 4 else "")
            lines.append(f"scored by {score}: {shown}")
        lines.append(
            f"params {self.params_before:,} -> {self.params_after:,} ({self.params_ratio:.1%}); "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.1%})"
        )
        return "\n".join(lines)


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_plan_fields(data: dict[str, Any]) -> None:
    """Raise ValueError naming the first field of a plan dict (and its nested records) of the wrong type."""
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "fingerprint": (lambda v: isinstance(v, str), "a string"),
        "mode": (lambda v: v in PLAN_MODES, f"one of {list(PLAN_MODES)}"),
        "target": (lambda v: v is None or _is_number(v), "null or a number"),
        "importance": (lambda v: isinstance(v, str), "a string"),
        "coupling": (lambda v: isinstance(v, str), "a string"),
        "min_channels": (lambda v: _is_int(v, 1), "an integer >= 1"),
        "round_to": (lambda v: v is None or _is_int(v, 1), "null or an integer >= 1"),
        "layer_groups": (lambda v: isinstance(v, list) and all(isinstance(g, dict) for g in v), "a list of objects"),
        "channel_groups": (lambda v: isinstance(v, list) and all(isinstance(g, dict) for g in v), "a list of objects"),
        "params_before": (_is_int, "an integer >= 0"),
        "params_after": (_is_int, "an integer >= 0"),
        "macs_before": (_is_int, "an integer >= 0"),
        "macs_after": (_is_int, "an integer >= 0"),
        "add_bias": (_is_str_list, "a list of strings"),
        "input_shapes": (
            lambda v: isinstance(v, list) and all(isinstance(s, list) and all(_is_int(d, 1) for d in s) for s in v),
            "a list of lists of integers >= 1",
        ),
        "weights_digest": (lambda v: v is None or isinstance(v, str), "null or a string"),
    }
    _check_fields("PruningPlan", data, checks)
    for index, group in enumerate(data["layer_groups"]):
        _check_fields(
            f"layer_groups[{index}]",
            group,
            {
                "name": (lambda v: isinstance(v, str), "a string"),
                "threshold": (_is_number, "a number"),
                "channels_before": (_is_int, "an integer >= 0"),
                "channels_after": (_is_int, "an integer >= 0"),
                "channel_groups": (_is_str_list, "a list of strings"),
            },
        )
    for index, group in enumerate(data["channel_groups"]):
        where = f"channel_groups[{index}]"
        _check_fields(
            where,
            group,
            {
                "name": (lambda v: isinstance(v, str), "a string"),
                "size": (lambda v: _is_int(v, 1), "an integer >= 1"),
                "kept": (lambda v: isinstance(v, list) and all(_is_int(i) for i in v), "a list of integers >= 0"),
            },
        )
        kept, size = group["kept"], group["size"]
        if any(b <= a for a, b in itertools.pairwise(kept)) or (kept and kept[-1] >= size):
            raise DataError(f"{where}.kept must be increasing indices below size={size}")


def _check_fields(where: str, data: dict[str, Any], checks: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    for name, (ok, expected) in checks.items():
        if name in data and not ok(data[name]):
            raise DataError(f"{where}.{name} must be {expected}, got {data[name]!r:.80}")


def applied_plans(model: nn.Module) -> list[PruningPlan]:
    """The plans applied to ``model`` so far, oldest first (empty for a model that was never pruned).

    Args:
        model: a model pruned by :meth:`grouppruner.pruning.GroupPruner.apply` or restored by ``load_pruned``
            (or a wrapper of it).

    Returns:
        A new list; the plans themselves are shared. They are kept on the model as :data:`PLANS_ATTRIBUTE`.
    """
    return list(unwrap(model).__dict__.get(PLANS_ATTRIBUTE, []))


def record_plan(model: nn.Module, plan: PruningPlan) -> None:
    """Append ``plan`` to the plans kept on ``model`` (:data:`PLANS_ATTRIBUTE`; used by ``apply`` and
    ``load_pruned``)."""
    unwrap(model).__dict__.setdefault(PLANS_ATTRIBUTE, []).append(plan)


def pop_plans(model: nn.Module) -> list[PruningPlan]:
    """Remove the plans kept on ``model`` (:data:`PLANS_ATTRIBUTE`) and return them, oldest first.

    For frameworks that pickle the whole module (Ultralytics checkpoints): a module without grouppruner objects
    in its ``__dict__`` unpickles where grouppruner is not installed; keep the plans elsewhere (as
    :meth:`PruningPlan.to_dict` JSON) and put them back with :func:`record_plan`.
    """
    plans: list[PruningPlan] = unwrap(model).__dict__.pop(PLANS_ATTRIBUTE, [])
    return plans
