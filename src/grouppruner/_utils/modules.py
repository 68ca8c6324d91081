"""Module facts every stage shares: what a depthwise convolution is, and snapshots to undo structural changes."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["ModuleSnapshot", "is_depthwise"]


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one filter per channel (``groups == in_channels == out_channels > 1``): output channel
    ``c`` reads input channel ``c`` only, so its inputs and outputs shrink together."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


class ModuleSnapshot:
    """Shallow copies of every module's attributes, taken at construction: enough to undo channel removal.

    Channel removal and bias creation replace parameters / buffers and set width attributes; they never write
    into the old tensors, so restoring each module's attribute dict (with its parameter / buffer / child dicts and
    lists copied) puts the model back exactly, without the cost of a deep copy.

    Args:
        model: the model whose current structure :meth:`restore` brings back.
    """

    def __init__(self, model: nn.Module) -> None:
        self._saved: list[tuple[nn.Module, dict[str, Any]]] = [
            (module, {k: (v.copy() if isinstance(v, dict | list) else v) for k, v in module.__dict__.items()})
            for module in model.modules()
        ]

    def restore(self) -> None:
        """Give every module back the attributes it had when the snapshot was taken."""
        for module, attributes in self._saved:
            module.__dict__.clear()
            module.__dict__.update(attributes)
