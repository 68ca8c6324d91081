"""Names that moved to another module: they keep working for one release, with a ``DeprecationWarning``."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved_module", "moved_names"]


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that finds the names in ``moved`` at their new place and warns once per access.

    Args:
        module: ``__name__`` of the module the names used to live in.
        moved: old name -> ``"new.module:new_name"``, or ``"new.module"`` alone for a name that kept its name.

    Returns:
        The function to assign to the old module's ``__getattr__`` (PEP 562).
    """

    def __getattr__(name: str) -> Any:
        target = moved.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")  # PEP 562 asks for this type
        new_module, _, new_name = target.partition(":")
        where = f"{new_module}.{new_name or name}"
        warnings.warn(
            f"{module}.{name} moved to {where}; the old name is removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new_module), new_name or name)

    return __getattr__


def moved_module(module: str, new_module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a module that moved as a whole: every public name is found in ``new_module``.

    Args:
        module: ``__name__`` of the old module (left as a file of a few lines, so that old imports still work).
        new_module: where its names live now.
    """

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")  # PEP 562 asks for this type
        warnings.warn(
            f"{module} moved to {new_module}; the old module is removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new_module), name)

    return __getattr__
