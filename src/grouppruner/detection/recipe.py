"""Deprecated alias: the recipe moved to :mod:`grouppruner.recipe`; removed in the next release."""

from .._utils.moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(("RecipeRun", "StageResult", "run_recipe"), "grouppruner.recipe.run"),
        **dict.fromkeys(
            ("GAMMA_THRESHOLD", "STAGES", "STAGE_OF_OPTION", "RecipeConfig", "first_changed_stage"),
            "grouppruner.recipe.config",
        ),
        **dict.fromkeys(("load_weights", "sparse_optimizer"), "grouppruner.recipe.stages"),
        "weights_digest": "grouppruner.pruning",
    },
)
