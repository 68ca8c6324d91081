"""The compression application: the paper's recipe (dense -> sparse -> pruned -> recovered) run on the reference
detector kit (:mod:`grouppruner.detection`), resumable, data-parallel, with a report.

- :func:`run_recipe` runs (or resumes) it in a run folder; :class:`RecipeConfig` holds its options
  (:mod:`.config`); :class:`RecipeRun` is one run, whose stages (:mod:`.stages`) are functions of a
  :class:`StageRun`;
- :mod:`.distributed`: data-parallel training under ``torchrun`` with the one-process result;
- :mod:`.darknet`: what the recipe needs of a darknet cfg; :mod:`.report`: a Markdown report of a run folder.

Needs the ``detection`` extra. The run folder itself (lock, results, file records) is
:mod:`grouppruner.run_folder`, shared with the integrations.
"""

from __future__ import annotations

from .config import STAGE_OF_OPTION, STAGES, RecipeConfig, first_changed_stage, load_recipe_config
from .run import RecipeRun, StageResult, run_recipe
from .stages import StageRun, distilled_layers, load_weights, sparse_optimizer

__all__ = [
    "STAGES",
    "STAGE_OF_OPTION",
    "RecipeConfig",
    "RecipeRun",
    "StageResult",
    "StageRun",
    "distilled_layers",
    "first_changed_stage",
    "load_recipe_config",
    "load_weights",
    "run_recipe",
    "sparse_optimizer",
]
