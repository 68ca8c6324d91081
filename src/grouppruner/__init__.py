"""grouppruner: structured compression of CNN object detectors.

The four stages, each in its own module:

- :mod:`grouppruner.graph` -- which channels must be pruned together (``ChannelGraph``, ``ChannelGroup``);
- :mod:`grouppruner.sparsity` -- scheduled L1 on BatchNorm scales (``BNSparsity``);
- :mod:`grouppruner.pruning` -- group channel pruning (``GroupPruner``, ``PruningPlan``);
- :mod:`grouppruner.distill` -- spatial-attention distillation (``AttentionDistiller``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> defining module. Resolved on first access so that `import grouppruner` stays cheap.
_EXPORTS = {
    "ChannelGraph": "graph",
    "ChannelGroup": "graph",
    "BNSparsity": "sparsity",
    "GroupPruner": "pruning",
    "PruningPlan": "pruning",
    "spatial_attention": "distill",
    "AttentionDistiller": "distill",
    "save_pruned": "checkpoint",
    "load_pruned": "checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'grouppruner' has no attribute {name!r}")
