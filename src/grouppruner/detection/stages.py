"""Deprecated alias of :mod:`grouppruner.recipe.stages`, where this module moved; removed in the next release."""

from .._utils.moved import moved_module

__getattr__ = moved_module(__name__, "grouppruner.recipe.stages")
