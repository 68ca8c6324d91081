"""grouppruner: structured compression of CNN object detectors.

The method's four steps, one package each, in the order the data flows:

- :mod:`grouppruner.graph` -- which channels must be pruned together (``ChannelGraph``, ``ChannelGroup``) and
  the partition into layer groups;
- :mod:`grouppruner.sparsity` -- scheduled L1 on BatchNorm scales (``BNSparsity`` and its schedules);
- :mod:`grouppruner.pruning` -- group channel pruning (``GroupPruner``, ``PruningPlan``, ``Importance``), saved
  with :mod:`grouppruner.checkpoint` (``save_pruned``, ``load_pruned``);
- :mod:`grouppruner.distill` -- spatial-attention distillation (``spatial_attention``, ``AttentionDistiller``).

:mod:`grouppruner.profile` measures parameters, MACs, size and latency; :mod:`grouppruner.latency` is the
measured latency model behind ``plan(target_latency=...)``; :mod:`grouppruner.export` gives the deployment form
(BatchNorm folded, ONNX); :mod:`grouppruner.plot` (extra ``plot``)
draws gamma histograms; :mod:`grouppruner.detection` (extra ``detection``) is the reference YOLOv4. Every error
raised on purpose derives from :class:`GroupPrunerError`.
"""

from __future__ import annotations

from ._utils.moved import moved_names

__version__ = "0.1.0"

from . import checkpoint, distill, export, graph, latency, profile, pruning, sparsity
from ._utils.errors import (
    DataError,
    GroupPrunerError,
    InvalidOptionError,
    MissingExtraError,
    ModelChangedError,
    NonFiniteError,
    OptionTypeError,
    UsageError,
)
from .checkpoint import CheckpointError, load_pruned, save_pruned
from .distill import AttentionDistiller, spatial_attention
from .graph import ChannelGraph, ChannelGroup, GraphError, LayerRef
from .pruning import (
    BNScaleImportance,
    GroupPruner,
    Importance,
    PlanSearch,
    PruningPlan,
    applied_plans,
    rebuild_optimizer,
)
from .sparsity import BNSparsity

__all__ = [
    "AttentionDistiller",
    "BNScaleImportance",
    "BNSparsity",
    "ChannelGraph",
    "ChannelGroup",
    "CheckpointError",
    "DataError",
    "GraphError",
    "GroupPruner",
    "GroupPrunerError",
    "Importance",
    "InvalidOptionError",
    "LayerRef",
    "MissingExtraError",
    "ModelChangedError",
    "NonFiniteError",
    "OptionTypeError",
    "PlanSearch",
    "PruningPlan",
    "UsageError",
    "__version__",
    "applied_plans",
    "checkpoint",
    "distill",
    "export",
    "graph",
    "latency",
    "load_pruned",
    "profile",
    "pruning",
    "rebuild_optimizer",
    "save_pruned",
    "sparsity",
    "spatial_attention",
]

# The importance classes all end in "Importance" now; the old names work for one more release.
__getattr__ = moved_names(
    __name__,
    {old: f"grouppruner.pruning.importance:{old}Importance" for old in ("BNScale", "NormScale", "FilterMagnitude")},
)
