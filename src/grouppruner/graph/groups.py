"""What a channel group is: the public records :class:`ChannelGroup` and :class:`LayerRef`.

A channel group is a set of channels that must be removed together (the output channels of a root layer and every
channel coupled to them through residual adds, concatenations, splits and grouped convolutions). The graph
(:mod:`.channel_graph`) builds them; the layer-group partition (:mod:`.layer_groups`), the sparsity regularizer and
the pruner consume them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ChannelGroup", "LayerRef", "LayerRole", "layer_role", "min_units"]

LayerRole: TypeAlias = Literal["batchnorm", "norm", "conv", "linear", "parameter", "other"]
"""What a member layer is to the pruner, decided by type (subclasses included), never by class name."""

_OTHER_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def layer_role(module: nn.Module | None) -> LayerRole:
    """The :data:`LayerRole` of ``module`` (``None``: a bare channel-indexed parameter).

    ``class MyNorm(nn.BatchNorm2d)`` is a ``"batchnorm"``, so its gamma scores and is regularized like any other.
    """
    if module is None:
        return "parameter"
    if isinstance(module, _BatchNorm):
        return "batchnorm"
    if isinstance(module, _OTHER_NORMS):
        return "norm"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return "other"


@dataclass(frozen=True)
class LayerRef:
    """One layer that loses channels when its channel group does.

    Attributes:
        name: Qualified module name in the model, e.g. ``"backbone.stage3.0.conv"``.
        kind: Module class name, e.g. ``"Conv2d"``, ``"BatchNorm2d"``, ``"Linear"``.
        dim: Which dimension of this layer loses the group's channels: ``"out"`` (output channels of a conv
            ``weight[out, in, kH, kW]``, output features of a Linear, the features of a BatchNorm) or ``"in"``.
        indices: Group channel ``i`` is channel ``indices[i]`` of that dimension; ``len(indices)`` equals the
            group's size. A layer may appear several times in one group (e.g. once per half of a ``chunk(2)``).
        role: what the layer is, by type (:func:`layer_role`): ``"batchnorm"`` for every ``_BatchNorm``
            subclass, ``"norm"`` for GroupNorm / LayerNorm / InstanceNorm, ``"conv"``, ``"linear"``,
            ``"parameter"`` (a bare channel-indexed parameter) or ``"other"``. ``kind`` is for display only.
    """

    name: str
    kind: str
    dim: Literal["out", "in"]
    indices: tuple[int, ...]
    role: LayerRole = "other"


@dataclass(frozen=True)
class ChannelGroup:
    """A set of channels that must be removed together.

    Attributes:
        name: Qualified name of the root layer (the Conv / Linear producing the channels).
        size: Number of channels in the group (current, after any removal).
        layers: Every layer that loses channels when the group does, the root's output first.
        stride: Spatial stride of the group's feature map relative to the input (``input H / feature H``),
            ``None`` when the root output is not a 4-D ``(N, C, H, W)`` map.
        prunable: Whether channels may be removed.
        reason: Why the group is not prunable (``None`` when it is).
    """

    name: str
    size: int
    layers: tuple[LayerRef, ...]
    stride: int | None
    prunable: bool
    reason: str | None

    @property
    def bns(self) -> tuple[LayerRef, ...]:
        """The BatchNorm members; ``|weight[ref.indices[i]]|`` (gamma) scores group channel ``i``."""
        return tuple(ref for ref in self.layers if ref.role == "batchnorm")

    @property
    def bn_names(self) -> tuple[str, ...]:
        """Qualified names of the BatchNorm members, each once, in order."""
        return tuple(dict.fromkeys(ref.name for ref in self.bns))


def min_units(group: ChannelGroup, min_channels: int) -> int:
    """``min_channels`` in group channels: the fewest group channels that leave every member layer that wide.

    A group channel may stand for several layer channels: in a grouped conv (ResNeXt, RegNet) it is the same
    position in each of the conv's groups, so a layer listed ``m`` times in the group keeps ``m`` layer channels
    per group channel. The minimum applies to the width of every member layer: ``ceil(min_channels / m)`` group
    channels for the member listed the fewest times (after ``a, b = x.chunk(2); a + b`` the sum has one channel
    per group channel).
    """
    per_layer: dict[tuple[str, str], int] = {}
    for ref in group.layers:
        per_layer[(ref.name, ref.dim)] = per_layer.get((ref.name, ref.dim), 0) + 1
    return math.ceil(min_channels / min(per_layer.values(), default=1))
