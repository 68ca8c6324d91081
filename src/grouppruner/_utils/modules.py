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
    """The attributes of every module, taken at construction: enough to undo channel removal.

    Channel removal and bias creation replace parameters / buffers and set width attributes; they never write
    into the old tensors, so putting back each module's attributes (and the contents of its parameter / buffer /
    child / hook dicts and lists) restores the model exactly, without the cost of a deep copy. The dict and list
    objects themselves are kept: a hook handle made before the snapshot still removes its hook after a restore.

    Args:
        model: the model whose current structure :meth:`restore` brings back.
    """

    def __init__(self, model: nn.Module) -> None:
        # (module, attributes, container contents); empty containers (most hook dicts) are only cleared on restore
        self._saved: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]] = []
        for module in model.modules():
            attributes = dict(module.__dict__)
            contents = {k: v.copy() for k, v in attributes.items() if isinstance(v, dict | list) and v}
            self._saved.append((module, attributes, contents))

    def restore(self) -> None:
        """Give every module back the attributes it had when the snapshot was taken."""
        for module, attributes, contents in self._saved:
            module.__dict__.clear()
            module.__dict__.update(attributes)
            for key, value in attributes.items():
                if isinstance(value, dict):
                    if key in contents or value:
                        value.clear()
                        value.update(contents.get(key, {}))
                elif isinstance(value, list) and (key in contents or value):
                    value[:] = contents.get(key, [])
