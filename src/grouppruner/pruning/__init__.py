"""Step 3, group channel pruning: per-layer-group thresholds on channel scores, budgets, beta folding, removal.

Typical use after sparse training::

    graph = gp.ChannelGraph(model, torch.zeros(1, 3, 416, 416))
    pruner = gp.GroupPruner(graph, min_channels=8, round_to=8)
    plan = pruner.plan(target_params=0.35)      # or ratios={...}, thresholds={...}, target_macs=...
    table = plan.summary()                      # per layer group: threshold, channels before -> after
    pruner.apply(plan)                          # model is now physically smaller
    optimizer = gp.pruning.rebuild_optimizer(optimizer, model)

Scores: each channel group (channels that must go together, from :class:`grouppruner.graph.ChannelGraph`) gets one score
per channel from an :class:`Importance`. The default, :class:`AutoImportance`, uses ``|gamma|`` where the group has a
BatchNorm (:class:`BNScaleImportance`: every BatchNorm of the group gives a row, combined by its ``coupling``), else its
GroupNorm / LayerNorm scale (:class:`NormScaleImportance`), else the normalised L2 norm of its producers' filters
(:class:`FilterMagnitudeImportance`); see :mod:`.importance`. A channel is removed when its score is below its layer
group's threshold, unless ``min_channels`` (a hard per-group, hence per-layer, minimum) or ``round_to`` keep it; the
channels kept are always the highest-scoring ones.


Modules, in the order the data flows: :mod:`.importance` (scores), :mod:`.budget` (cost prediction and budget
solving), :mod:`.pruner` (:class:`GroupPruner`), :mod:`.plan` (:class:`PruningPlan`), :mod:`.folding` (beta
folding), :mod:`.apply` (removal through the graph) and :mod:`.optimizer` (:func:`rebuild_optimizer`);
:mod:`.search` (:class:`PlanSearch`) chooses a budget's plan by measured accuracy, with :mod:`.calibrate`
(:func:`recalibrate_batchnorm`). Next step:
:mod:`grouppruner.distill` recovers the pruned model's accuracy; :mod:`grouppruner.checkpoint` saves it.
"""

from __future__ import annotations

from .._utils.moved import moved_names
from .apply import apply_structure
from .calibrate import recalibrate_batchnorm
from .channels import teacher_channels
from .importance import (
    AutoImportance,
    BNScaleImportance,
    Coupling,
    CustomImportance,
    FilterMagnitudeImportance,
    Importance,
    NormScaleImportance,
    ScoreFn,
)
from .optimizer import rebuild_optimizer
from .plan import (
    ChannelGroupPlan,
    LayerGroupPlan,
    PruningPlan,
    applied_plans,
    model_fingerprint,
    pop_plans,
    record_plan,
    scored_weights_digest,
    weights_digest,
)
from .pruner import GroupPruner
from .search import CANDIDATE_KINDS, Candidate, CandidateRecord, PlanSearch, SearchResult

__all__ = [
    "CANDIDATE_KINDS",
    "AutoImportance",
    "BNScaleImportance",
    "Candidate",
    "CandidateRecord",
    "ChannelGroupPlan",
    "Coupling",
    "CustomImportance",
    "FilterMagnitudeImportance",
    "GroupPruner",
    "Importance",
    "LayerGroupPlan",
    "NormScaleImportance",
    "PlanSearch",
    "PruningPlan",
    "ScoreFn",
    "SearchResult",
    "applied_plans",
    "apply_structure",
    "model_fingerprint",
    "pop_plans",
    "rebuild_optimizer",
    "recalibrate_batchnorm",
    "record_plan",
    "scored_weights_digest",
    "teacher_channels",
    "weights_digest",
]

# The importance classes all end in "Importance" now; the old names work for one more release.
__getattr__ = moved_names(
    __name__,
    {old: f"grouppruner.pruning.importance:{old}Importance" for old in ("BNScale", "NormScale", "FilterMagnitude")},
)
