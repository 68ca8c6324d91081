"""Deprecated alias: the recipe's options moved to :mod:`grouppruner.recipe.config` (reading them from a file to
:mod:`grouppruner.recipe.config_file`); removed in the next release."""

from .._utils.moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(
            ("ANCHORS", "CHOICES", "GAMMA_THRESHOLD", "STAGES", "STAGE_OF_OPTION", "RecipeConfig", "check_option"),
            "grouppruner.recipe.config",
        ),
        **dict.fromkeys(("first_changed_stage", "stage_fingerprint"), "grouppruner.recipe.config"),
        **dict.fromkeys(
            ("config_reference", "load_recipe_config", "recipe_config_fields"), "grouppruner.recipe.config_file"
        ),
    },
)
