"""Deprecated alias of :mod:`grouppruner.run_folder`, where this module moved; removed in the next release."""

from .._utils.moved import moved_module

__getattr__ = moved_module(__name__, "grouppruner.run_folder")
