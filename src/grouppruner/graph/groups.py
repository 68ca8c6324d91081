"""What a channel group is: the public records :class:`ChannelGroup` and :class:`LayerRef`.

A channel group is a set of channels that must be removed together (the output channels of a root layer and every
channel coupled to them through residual adds, concatenations, splits and grouped convolutions). The graph
(:mod:`.channel_graph`) builds them; the layer-group partition (:mod:`.layer_groups`), the sparsity regularizer and
the pruner consume them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ChannelGroup", "LayerRef", "LayerRole", "layer_role"]

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
