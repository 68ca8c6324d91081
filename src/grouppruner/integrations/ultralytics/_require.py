"""The one place that imports Ultralytics for the integration, with the error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..._utils.errors import MissingExtraError

__all__ = ["require_ultralytics"]

_INSTALL = 'pip install "grouppruner[ultralytics]"'


def require_ultralytics() -> ModuleType:
    """The ``ultralytics`` package, imported on first use.

    Raises:
        MissingExtraError: Ultralytics is not installed (the message gives the install line).
    """
    try:
        return importlib.import_module("ultralytics")
    except ImportError as error:
        raise MissingExtraError(
            f"grouppruner.integrations.ultralytics needs the Ultralytics package, which is not installed ({error}); "
            f"install it with: {_INSTALL} (Ultralytics is AGPL-3.0)"
        ) from error
