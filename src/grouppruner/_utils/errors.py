"""The exception family: every error grouppruner raises on purpose derives from :class:`GroupPrunerError`.

Each class also derives from the built-in exception a caller would expect (``ValueError`` for bad values,
``KeyError`` for an unknown name, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DataError",
    "DistillerStateError",
    "GraphError",
    "GroupPrunerError",
    "InternalError",
    "InvalidOptionError",
    "LayerNotFoundError",
    "LayerOutputError",
    "ModelChangedError",
    "NonFiniteError",
    "OptionTypeError",
    "UsageError",
]


class GroupPrunerError(Exception):
    """Base class of the errors grouppruner raises on purpose; the message names the layer, module or file."""


class InvalidOptionError(GroupPrunerError, ValueError):
    """An argument or option has a value out of range, or values that contradict each other."""


class OptionTypeError(GroupPrunerError, TypeError):
    """An argument has the wrong type (e.g. a float where a mapping of layer groups is expected)."""


class UsageError(GroupPrunerError, RuntimeError):
    """An object was used out of order (e.g. ``step()`` before ``backward()``, on still-scaled gradients)."""


class ModelChangedError(GroupPrunerError, ValueError):
    """The model changed under an object built for it (e.g. pruned after its ``BNSparsity`` was built)."""


class InternalError(GroupPrunerError, RuntimeError):
    """A consistency guard inside grouppruner failed (e.g. the plan and its solver disagree): a bug to report,
    raised instead of returning a wrong result."""


class DataError(GroupPrunerError, ValueError):
    """A file's content is not what it must be (a data set, a config, a cfg, a weights file); the message names
    the file and, where it can, the line or the record."""


class GraphError(GroupPrunerError, ValueError):
    """The model uses something ChannelGraph cannot map; the message names the module and the op."""


class NonFiniteError(GroupPrunerError, ValueError):
    """A tensor that must be finite (a BatchNorm scale or its gradient, a hooked feature map, an importance
    score) holds NaN or Inf; the message names the layer or the channel group."""


class CheckpointError(GroupPrunerError, ValueError):
    """A checkpoint that is not a grouppruner checkpoint, is damaged, or belongs to another architecture."""


class LayerNotFoundError(GroupPrunerError, KeyError):
    """A requested layer name does not exist in the model; the message lists close matches."""

    def __str__(self) -> str:
        # KeyError would print the repr of the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class LayerOutputError(GroupPrunerError, TypeError):
    """A hooked layer produced something other than one (N, C, H, W) tensor, or ran twice in one forward."""


class DistillerStateError(GroupPrunerError, RuntimeError):
    """The distiller was used out of order (``loss()`` before a forward, use after ``remove()``)."""


class MissingExtraError(GroupPrunerError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it
    (``pip install "grouppruner[ultralytics]"``)."""
