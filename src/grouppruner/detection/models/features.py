"""What a backbone, neck or model says about its feature maps: :class:`FeatureInfo`, one per map.

Each part of the detector lists the maps it exposes in ``feature_info`` (as timm models do). The numbers that
other parts need are read from there instead of being repeated: a backbone's ``out_channels`` (the neck's
inputs), the neck's ``out_channels`` (the heads' inputs), the model's head ``strides`` and its
``distill_layers``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FeatureInfo", "output_channels", "output_strides"]


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map: the module that outputs it, its channel count and its stride.

    Describes the model as built: pruning thins the module's channels without updating its entry.

    Attributes:
        module: name of the module whose output is the map, relative to the part that lists it
            (``"stage3"`` in a backbone, ``"backbone.stage3"`` in :attr:`YOLOv4.feature_info`); a name for
            ``model.get_submodule`` and for forward hooks.
        channels: channels C of the map (N, C, H / stride, W / stride).
        stride: input pixels per map cell, i.e. the map is (N, C, H / stride, W / stride) for an (N, 3, H, W)
            input.
    """

    module: str
    channels: int
    stride: int

    def under(self, prefix: str) -> FeatureInfo:
        """The same map named from a parent module: ``module`` becomes ``f"{prefix}.{module}"``."""
        return dataclasses.replace(self, module=f"{prefix}.{self.module}")


def output_channels(feature_info: Sequence[FeatureInfo]) -> tuple[int, int, int]:
    """Channels of the three maps (strides 8, 16, 32) a backbone or neck returns: its last three entries."""
    c3, c4, c5 = (info.channels for info in feature_info[-3:])
    return c3, c4, c5


def output_strides(feature_info: Sequence[FeatureInfo]) -> tuple[int, int, int]:
    """Strides of the three maps a backbone or neck returns: its last three entries, ``(8, 16, 32)``."""
    s3, s4, s5 = (info.stride for info in feature_info[-3:])
    return s3, s4, s5
