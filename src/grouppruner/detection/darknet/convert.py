"""Darknet in and out: :func:`from_darknet` builds a :class:`DarknetModel` from a cfg (and weights),
:func:`to_darknet` writes a (pruned) one back as a cfg and a weights file that darknet, OpenCV DNN and the
other cfg parsers read.

Pruning changes channel counts only, never the layer list, so the written cfg is the original with every
``[convolutional]`` ``filters=`` (and ``groups=`` of depthwise convolutions) set to the pruned widths; routes and
shortcuts keep their indices and stay consistent. Constants that pruning folded into a following layer are kept
in darknet's form: into the BatchNorm's running mean, or into the bias of a convolution without BatchNorm.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..._utils.errors import OptionTypeError, UsageError
from ..._utils.io import atomic_write
from .cfg import Section, format_cfg, parse_cfg
from .model import ConvLayer, DarknetModel, RouteLayer
from .weights import WeightsHeader, read_weights, write_weights

__all__ = ["from_darknet", "to_darknet"]

logger = logging.getLogger(__name__)


def from_darknet(cfg: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None) -> DarknetModel:
    """Build the detector a darknet cfg describes, optionally with its trained weights.

    Args:
        cfg: a darknet ``.cfg`` file (sections ``[net]``, ``[convolutional]``, ``[route]``, ``[shortcut]``,
            ``[maxpool]``, ``[upsample]``, ``[yolo]``).
        weights: its ``.weights`` file; ``None`` keeps PyTorch's initialisation.

    Returns:
        The model in train mode, mapping ``(N, channels, H, W)`` to one raw head map
        ``(N, A * (5 + C), H / s, W / s)`` per ``[yolo]`` layer (by increasing stride ``s``); see
        :class:`DarknetModel`. The file's header (version, images seen) is not kept on the model: read it with
        :func:`~grouppruner.detection.darknet.read_header` and give it to :func:`to_darknet`.

    Raises:
        FileNotFoundError: a file does not exist.
        DataError: the cfg is not a darknet cfg or uses an unknown section or key (file, line and key named), its
            layers do not fit together, or the weights file does not fit the cfg.
    """
    model = DarknetModel(parse_cfg(cfg))
    if weights is not None:
        read_weights(model, weights)
    return model


def to_darknet(
    model: nn.Module,
    cfg_path: str | os.PathLike[str],
    weights_path: str | os.PathLike[str],
    *,
    fold_batchnorm: bool = False,
    header: WeightsHeader | None = None,
) -> None:
    """Write a model built by :func:`from_darknet`, pruned or not, as a darknet cfg and weights file.

    Both files are written atomically. ``from_darknet(cfg_path, weights_path)`` gives back a model with the same
    outputs (to float rounding).

    Args:
        model: a :class:`DarknetModel` from :func:`from_darknet`, e.g. after
            :meth:`GroupPruner.apply <grouppruner.pruning.GroupPruner.apply>`.
        cfg_path: the cfg to write.
        weights_path: the weights file to write.
        fold_batchnorm: fold every BatchNorm into its convolution (``batch_normalize=0`` with a bias: fewer
            values and no BatchNorm at inference); default: darknet's own BatchNorm form, which can be trained on.
        header: the weights file's header, e.g. ``read_header`` of the file the model was read from, so that
            darknet goes on counting the images seen; default version 0.2.5, 0 images seen.

    Raises:
        OptionTypeError: ``model`` is not a :class:`DarknetModel` (e.g. the built-in ``yolov4()``).
        UsageError: the pruned widths cannot be written as a cfg (a ``[route] groups=`` input whose channels no
            longer split evenly).
    """
    if not isinstance(model, DarknetModel):
        raise OptionTypeError(
            f"to_darknet: the model must be a DarknetModel built by from_darknet, got {type(model).__name__}; "
            "only a model imported from a cfg can be written back as one"
        )
    sections = _pruned_cfg(model, fold_batchnorm)
    export = DarknetModel(sections)  # the layers exactly as the written cfg describes them
    with torch.no_grad():
        for index, layer in enumerate(model.layers):
            if isinstance(layer, ConvLayer):
                target = export.layers[index]
                assert isinstance(target, ConvLayer)
                _copy_conv(layer, target, fold_batchnorm)
    with atomic_write(cfg_path) as file:
        file.write(format_cfg(sections).encode())
    write_weights(export, weights_path, header=header or WeightsHeader())
    logger.info("wrote %s and %s", Path(cfg_path), Path(weights_path))


def _pruned_cfg(model: DarknetModel, fold_batchnorm: bool) -> list[Section]:
    sections = [Section(s.name, dict(s.options), s.line, dict(s.key_lines), s.source) for s in model.cfg]
    for index, layer in enumerate(model.layers):
        section = sections[index + 1]
        if isinstance(layer, ConvLayer):
            conv = layer.conv
            section.options["filters"] = str(conv.out_channels)
            if conv.groups != 1 or "groups" in section.options:
                section.options["groups"] = str(conv.groups)
            if fold_batchnorm and layer.bn is not None:
                section.options["batch_normalize"] = "0"
        elif isinstance(layer, RouteLayer) and layer.groups > 1:
            for source in layer.sources:
                channels = _out_channels(model, source)
                if channels % layer.groups:
                    raise UsageError(
                        f"to_darknet: pruning left layer {source} with {channels} channels, which [route] groups="
                        f"{layer.groups} at {section.where('groups')} cannot split evenly"
                    )
    return sections


def _out_channels(model: DarknetModel, index: int) -> int:
    """Output channels of layer ``index`` as the (pruned) model computes them."""
    layer = model.layers[index]
    if isinstance(layer, ConvLayer):
        return int(layer.conv.out_channels)
    if isinstance(layer, RouteLayer):
        return sum(_out_channels(model, j) // layer.groups for j in layer.sources)
    return _out_channels(model, index - 1)  # shortcut, maxpool, upsample keep their input's channels


def _copy_conv(source: ConvLayer, target: ConvLayer, fold_batchnorm: bool) -> None:
    conv, bn = source.conv, source.bn
    weight = conv.weight.detach().clone()
    bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(weight.shape[0])
    if bn is not None:
        assert bn.running_mean is not None and bn.running_var is not None
        # A conv bias in front of a BatchNorm (pruning folds a removed channel's constant there) shifts what the
        # BatchNorm subtracts: darknet's form has no such bias, so it moves into the running mean.
        mean = bn.running_mean.detach() - bias
        if fold_batchnorm:
            scale = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = bn.bias.detach() - mean * scale
        else:
            assert target.bn is not None and target.bn.running_mean is not None and target.bn.running_var is not None
            target.bn.weight.copy_(bn.weight)
            target.bn.bias.copy_(bn.bias)
            target.bn.running_mean.copy_(mean)
            target.bn.running_var.copy_(bn.running_var)
    target.conv.weight.copy_(weight)
    if target.conv.bias is not None:
        target.conv.bias.copy_(bias)
