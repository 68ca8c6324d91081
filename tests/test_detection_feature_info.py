"""YOLOv4 ``feature_info``: each entry names a real module whose output has the stated channels and stride, and
``out_channels``, ``strides`` and ``distill_layers`` are read from it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import grouppruner.detection
from grouppruner.detection import FeatureInfo, yolov4
from grouppruner.detection.models.backbones import CSPDarknet53, MobileNetV2

SMALL = {"width": 0.25, "depth": 0.34}
SIZE = 128
BACKBONES = ["cspdarknet53", "mobilenetv2"]
DISTILL_LAYERS = [
    "backbone.stage1",
    "backbone.stage2",
    "backbone.stage3",
    "backbone.stage4",
    "backbone.stage5",
    "neck.spp",
    "neck.pan_out8",
    "neck.pan_out16",
    "neck.pan_out32",
]

# Small models gain nothing from a second intra-op thread.
pytestmark = pytest.mark.usefixtures("one_thread")


def hooked_shapes(model: nn.Module, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Output shape of each named module on one (1, 3, SIZE, SIZE) image."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda module, inputs, output, name=name: shapes.__setitem__(name, tuple(output.shape))
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, SIZE, SIZE))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def expected_shape(info: FeatureInfo) -> tuple[int, int, int, int]:
    return (1, info.channels, SIZE // info.stride, SIZE // info.stride)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_model_feature_info_matches_hooked_outputs(backbone: str) -> None:
    model = yolov4(3, backbone=backbone, **SMALL)
    names = [info.module for info in model.feature_info]
    shapes = hooked_shapes(model, names)
    assert shapes == {info.module: expected_shape(info) for info in model.feature_info}


@pytest.mark.parametrize("backbone_cls", [CSPDarknet53, MobileNetV2])
def test_backbone_feature_info_matches_stage_outputs(backbone_cls: type[CSPDarknet53 | MobileNetV2]) -> None:
    backbone = backbone_cls(**SMALL)
    info = backbone.feature_info
    assert [i.module for i in info] == [f"stage{k}" for k in range(1, 6)]
    assert [i.stride for i in info] == [2, 4, 8, 16, 32]
    shapes = hooked_shapes(backbone, [i.module for i in info])
    assert shapes == {i.module: expected_shape(i) for i in info}
    # forward returns the last three stages, and out_channels counts their channels
    with torch.no_grad():
        outputs = backbone(torch.zeros(1, 3, SIZE, SIZE))
    assert [tuple(o.shape) for o in outputs] == [expected_shape(i) for i in info[-3:]]
    assert backbone.out_channels == tuple(i.channels for i in info[-3:])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_derived_attributes(backbone: str) -> None:
    model = yolov4(3, backbone=backbone, **SMALL)
    assert model.distill_layers == [info.module for info in model.feature_info] == DISTILL_LAYERS
    assert model.feature_info[:5] == tuple(info.under("backbone") for info in model.backbone.feature_info)
    assert model.feature_info[5:] == tuple(info.under("neck") for info in model.neck.feature_info)
    neck_outputs = model.feature_info[-3:]
    assert model.strides == tuple(info.stride for info in neck_outputs) == (8, 16, 32)
    assert model.neck.out_channels == tuple(info.channels for info in neck_outputs)
    # the neck's inputs are the backbone's outputs, the heads' inputs the neck's outputs
    assert model.neck.lateral8.conv.in_channels == model.backbone.out_channels[0]
    assert model.neck.lateral16.conv.in_channels == model.backbone.out_channels[1]
    assert model.neck.spp.pre[0].conv.in_channels == model.backbone.out_channels[2]
    heads = (model.head.p3, model.head.p4, model.head.p5)
    assert tuple(head.in_channels for head in heads) == model.neck.out_channels


@pytest.mark.parametrize(
    ("backbone", "stage_channels"),
    [("cspdarknet53", [64, 128, 256, 512, 1024]), ("mobilenetv2", [16, 24, 32, 96, 320])],
)
def test_full_width_channels(backbone: str, stage_channels: list[int]) -> None:
    model = yolov4(20, backbone=backbone)
    assert [info.channels for info in model.feature_info] == [*stage_channels, 512, 256, 512, 1024]
    assert [info.stride for info in model.feature_info] == [2, 4, 8, 16, 32, 32, 8, 16, 32]


def test_feature_info_is_frozen_and_exported() -> None:
    info = FeatureInfo("stage3", channels=256, stride=8)
    assert info.under("backbone") == FeatureInfo("backbone.stage3", channels=256, stride=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.channels = 128  # type: ignore[misc]
    assert "FeatureInfo" in grouppruner.detection.__all__
