"""Deprecated alias: the recipe's darknet specifics moved to :mod:`grouppruner.recipe.darknet`, ``data_classes`` to
:mod:`grouppruner.detection.data`; removed in the next release."""

from ..._utils.moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(
            ("check_recipe_cfg", "export_stage", "load_darknet", "recipe_loss"), "grouppruner.recipe.darknet"
        ),
        "data_classes": "grouppruner.detection.data",
    },
)
