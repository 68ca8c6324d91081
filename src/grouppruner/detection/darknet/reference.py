"""``yolov4.cfg`` and the built-in :func:`~grouppruner.detection.yolov4` are the same network: the mapping.

The built-in model names its convolutions by role (``backbone.stage3.blocks.0.conv1``, ``neck.pan_out8``,
``head.p3``); the cfg numbers them. :func:`yolov4_state_dict` lists the built-in model's convolutions in cfg
order (backbone stem and CSP stages, SPP, the top-down path, then the bottom-up path with each head right
after its neck output, as in the cfg) and copies the darknet model's tensors onto those names.
"""

from __future__ import annotations

from torch import Tensor

from ..._utils.errors import InvalidOptionError
from ..models.backbones import _CSP_STAGES
from .model import ConvLayer, DarknetModel

__all__ = ["yolov4_conv_names", "yolov4_state_dict"]


def yolov4_conv_names() -> list[str]:
    """The convolution modules of ``yolov4(num_classes)`` (width and depth 1) in ``yolov4.cfg`` layer order.

    Entries ending in a head name (``head.p3``) are plain ``nn.Conv2d`` with bias; the others are
    ``ConvBNAct`` (``.conv`` and ``.bn``).
    """
    names = ["backbone.stem"]
    for number, spec in enumerate(_CSP_STAGES, start=1):
        stage = f"backbone.stage{number}"
        names += [f"{stage}.downsample", f"{stage}.split_short", f"{stage}.split_main"]
        for block in range(spec.num_blocks):
            names += [f"{stage}.blocks.{block}.conv1", f"{stage}.blocks.{block}.conv2"]
        names += [f"{stage}.main_out", f"{stage}.fuse"]
    names += [f"neck.spp.pre.{i}" for i in range(3)] + [f"neck.spp.post.{i}" for i in range(3)]
    names += ["neck.reduce32", "neck.lateral16", *(f"neck.fpn16.{i}" for i in range(5))]
    names += ["neck.reduce16", "neck.lateral8", *(f"neck.fpn8.{i}" for i in range(5))]
    names += ["neck.pan_out8", "head.p3", "neck.down8", *(f"neck.pan16.{i}" for i in range(5))]
    names += ["neck.pan_out16", "head.p4", "neck.down16", *(f"neck.pan32.{i}" for i in range(5))]
    names += ["neck.pan_out32", "head.p5"]
    return names


def yolov4_state_dict(model: DarknetModel) -> dict[str, Tensor]:
    """The ``state_dict`` of ``yolov4(model.num_classes)`` holding the weights of a ``yolov4.cfg`` model.

    Args:
        model: ``from_darknet("yolov4.cfg", ...)`` (any class count).

    Returns:
        A ``state_dict`` for ``yolov4(model.num_classes).load_state_dict`` (anchors included); the two models
        then give the same outputs.

    Raises:
        ValueError: ``model`` does not have yolov4.cfg's convolutions.
    """
    convs = [layer for layer in model.layers if isinstance(layer, ConvLayer)]
    names = yolov4_conv_names()
    if len(convs) != len(names):
        raise InvalidOptionError(f"yolov4_state_dict: the model has {len(convs)} convolutions, yolov4.cfg {len(names)}")
    state: dict[str, Tensor] = {"anchors": model.anchors.detach().clone()}
    for name, layer in zip(names, convs, strict=True):
        if name.startswith("head."):
            state.update({f"{name}.{key}": value for key, value in layer.conv.state_dict().items()})
            continue
        if layer.bn is None:
            raise InvalidOptionError(f"yolov4_state_dict: {name} needs a BatchNorm, the cfg's convolution has none")
        state.update({f"{name}.conv.{key}": value for key, value in layer.conv.state_dict().items()})
        state.update({f"{name}.bn.{key}": value for key, value in layer.bn.state_dict().items()})
    return state
