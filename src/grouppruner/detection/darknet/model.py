"""The ``nn.Module`` a darknet cfg describes: :class:`DarknetModel`, one submodule per cfg layer.

``model.layers[i]`` is darknet's layer ``i`` (the ``i``-th section after ``[net]``), so cfg indices, module names
(``layers.12.conv``, ``layers.12.bn``) and the order of the weights file agree. The model follows the contract
of the built-in :class:`~grouppruner.detection.YOLOv4`, so the rest of the library runs on it unchanged:

- ``forward`` returns the raw head maps (the inputs of the ``[yolo]`` layers, logits before any sigmoid), one per
  ``[yolo]`` layer, ordered by increasing stride, each ``(N, A * (5 + C), H / s, W / s)``;
- ``anchors`` ``(S, A, 2)`` (from each ``[yolo]``'s ``mask`` and ``anchors``), ``strides``, ``num_classes``;
- ``feature_info`` / ``distill_layers``: the maps feeding the head convs (the inputs of the ``[yolo]`` layers'
  convolutions), with their channels and strides;
- ``predict`` decodes with each ``[yolo]`` layer's own ``new_coords`` / ``scale_x_y``
  (:class:`~grouppruner.detection.decode.BoxCoding`).

``forward`` uses plain torch ops (``torch.cat``, ``torch.chunk``, ``+``) so that ChannelGraph traces every
coupling. Build it with :func:`~grouppruner.detection.darknet.from_darknet`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._utils.errors import DataError, InvalidOptionError
from ..decode import BoxCoding, detect
from ..models.detector import Detector
from ..models.features import FeatureInfo
from .cfg import Section

__all__ = [
    "ConvLayer",
    "DarknetModel",
    "MaxPoolLayer",
    "RouteLayer",
    "ShortcutLayer",
    "UpsampleLayer",
    "YoloLayer",
]

#: darknet's BatchNorm epsilon (cuDNN path and OpenCV's importer).
BN_EPS = 1e-5


def _activation(name: str, section: Section) -> nn.Module:
    if name == "linear":
        return nn.Identity()
    if name == "leaky":
        return nn.LeakyReLU(0.1)
    if name == "mish":
        return nn.Mish()
    if name == "logistic":
        return nn.Sigmoid()
    if name == "swish":
        return nn.SiLU()
    raise DataError(
        f"{section.where('activation')}: [{section.name}] activation={name} is not supported; "
        "supported: linear, leaky, mish, logistic, swish"
    )


class ConvLayer(nn.Module):
    """``[convolutional]``: ``conv`` (bias only without BatchNorm), optional ``bn``, ``act``.

    A head conv (the input of a ``[yolo]`` layer) returns logits: its ``logistic`` activation, which darknet's
    ``new_coords=1`` layers rely on, is applied by the decoding instead (``act`` is then ``Identity``).

    Shape:
        (N, C_in, H, W) -> (N, filters, (H + 2 p - k) / s + 1, (W + 2 p - k) / s + 1), ``p = k // 2`` with
        ``pad=1``.
    """

    def __init__(
        self,
        in_channels: int,
        filters: int,
        size: int,
        stride: int,
        padding: int,
        groups: int,
        bn: bool,
        act: nn.Module,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, filters, size, stride, padding, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS) if bn else None
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, filters, H', W')."""
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        out: Tensor = self.act(x)
        return out


class RouteLayer(nn.Module):
    """``[route]``: concatenation of earlier layers' outputs, or of chunk ``group_id`` of each (``groups``).

    Attributes:
        sources: absolute layer indices, in concatenation order.
        groups, group_id: each input is cut into ``groups`` equal channel chunks and chunk ``group_id`` is taken.
    """

    def __init__(self, sources: Sequence[int], groups: int, group_id: int) -> None:
        super().__init__()
        self.sources = tuple(sources)
        self.groups = groups
        self.group_id = group_id

    def forward(self, inputs: list[Tensor]) -> Tensor:
        """[(N, C_i, H, W)] -> (N, sum C_i / groups, H, W)."""
        if self.groups > 1:
            inputs = [torch.chunk(x, self.groups, dim=1)[self.group_id] for x in inputs]
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)


class ShortcutLayer(nn.Module):
    """``[shortcut]``: the previous layer's output plus layer ``source``'s, then ``act``.

    Shape:
        (N, C, H, W), (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, source: int, act: nn.Module) -> None:
        super().__init__()
        self.source = source
        self.act = act

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        """x + other, activated."""
        out: Tensor = self.act(x + other)
        return out


class MaxPoolLayer(nn.Module):
    """``[maxpool]`` as darknet computes it: ``padding`` (default ``size - 1``) cells in total, ``padding // 2``
    before, windows every ``stride``; padded cells never win.

    Shape:
        (N, C, H, W) -> (N, C, (H + padding - size) / stride + 1, same for W).
    """

    def __init__(self, size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.size, self.stride, self.padding = size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H', W')."""
        before = self.padding // 2
        height, width = x.shape[2], x.shape[3]
        out_h = (height + self.padding - self.size) // self.stride + 1
        out_w = (width + self.padding - self.size) // self.stride + 1
        after_h = max(0, (out_h - 1) * self.stride + self.size - height - before)
        after_w = max(0, (out_w - 1) * self.stride + self.size - width - before)
        if before == after_h == after_w and 2 * before <= self.size:
            return F.max_pool2d(x, self.size, self.stride, before)  # symmetric, e.g. the SPP pools
        if before or after_h or after_w:
            x = F.pad(x, (before, after_w, before, after_h), value=-math.inf)
        return F.max_pool2d(x, self.size, self.stride)


class UpsampleLayer(nn.Module):
    """``[upsample]``: nearest-neighbour upsampling by ``stride``. Shape: (N, C, H, W) -> (N, C, sH, sW)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, stride * H, stride * W)."""
        return F.interpolate(x, scale_factor=float(self.stride), mode="nearest")


class YoloLayer(nn.Module):
    """``[yolo]``: marks its input (the previous layer's output) as a head map; computes nothing.

    Attributes:
        anchors: ``(A, 2)`` anchor (w, h) in input pixels picked by ``mask``.
        coding: how the map encodes boxes (``new_coords``, ``scale_x_y``).
        stride: input pixels per cell of the map.
    """

    anchors: Tensor

    def __init__(self, anchors: Tensor, coding: BoxCoding, stride: int) -> None:
        super().__init__()
        self.register_buffer("anchors", anchors)
        self.coding = coding
        self.stride = stride


@dataclass(frozen=True)
class _Shape:
    channels: int
    stride: int


class DarknetModel(Detector):
    """A detector built layer for layer from a darknet cfg (see the module docstring).

    Args:
        sections: the parsed cfg (:func:`~grouppruner.detection.darknet.parse_cfg`), ``[net]`` first.

    Attributes:
        cfg: the sections it was built from (kept for :func:`~grouppruner.detection.darknet.to_darknet`).
        layers: one module per layer after ``[net]``.
        num_classes: C of the ``[yolo]`` layers (all must agree).
        anchors: buffer ``(S, A, 2)``, per head map in ``forward``'s order.
        strides: stride of each head map, increasing.
        coding: :class:`~grouppruner.detection.decode.BoxCoding` per head map.
        head_layers: the ``[yolo]`` layer index of each head map.
        feature_info: the maps feeding the head convs (module ``layers.<i>``, channels, stride), in head order.
        distill_layers: the module names of ``feature_info``.
        input_size: ``(height, width)`` of ``[net]``.

    Raises:
        DataError: the layers do not fit together (a route to a layer that does not exist or comes later, a
            shortcut between different shapes, a ``[yolo]`` layer that does not follow a convolution of
            ``A * (5 + classes)`` filters, ``[yolo]`` layers with different classes or anchor counts); the message
            names the file, the line and the key.

    Shape:
        (N, channels, H, W), H and W multiples of the largest stride -> ``[(N, A * (5 + C), H / s, W / s)]`` for
        ``s`` in ``strides``.
    """

    anchors: Tensor

    def __init__(self, sections: Sequence[Section]) -> None:
        super().__init__()
        self.cfg = [Section(s.name, dict(s.options), s.line, dict(s.key_lines), s.source) for s in sections]
        net = self.cfg[0]
        self.input_size = (net.get_int("height", 416), net.get_int("width", 416))
        self.in_channels = net.get_int("channels", 3)
        shapes: list[_Shape] = []
        layers: list[nn.Module] = []
        current = _Shape(self.in_channels, 1)
        for index, section in enumerate(self.cfg[1:]):
            layer, current = self._build(index, section, current, shapes)
            layers.append(layer)
            shapes.append(current)
        self.layers = nn.ModuleList(layers)
        self._shapes = shapes
        self._setup_heads()
        # outputs that later layers read; the others are dropped as soon as the next layer ran
        self._kept = {j for layer in layers for j in _sources(layer)}

    def _build(self, index: int, section: Section, current: _Shape, shapes: list[_Shape]) -> tuple[nn.Module, _Shape]:
        kind = section.name
        if kind == "convolutional":
            size = section.get_int("size", 1)
            stride = section.get_int("stride", 1)
            padding = size // 2 if section.get_int("pad", 0) else section.get_int("padding", 0)
            groups = section.get_int("groups", 1)
            filters = section.get_int("filters", 1)
            if min(size, stride, groups, filters) < 1 or padding < 0:
                raise DataError(f"{section.where()}: [convolutional] size, stride, groups, filters must be positive")
            if current.channels % groups or filters % groups:
                raise DataError(
                    f"{section.where('groups')}: [convolutional] groups={groups} does not divide its "
                    f"{current.channels} input channels and {filters} filters"
                )
            act_name = section.options.get("activation", "logistic")
            head = index + 1 < len(self.cfg) - 1 and self.cfg[index + 2].name == "yolo" and act_name == "logistic"
            act = nn.Identity() if head else _activation(act_name, section)
            bn = bool(section.get_int("batch_normalize", 0))
            conv = ConvLayer(current.channels, filters, size, stride, padding, groups, bn, act)
            return conv, _Shape(filters, current.stride * stride)
        if kind == "route":
            refs = section.get_ints("layers")
            if not 1 <= len(refs) <= 4:
                raise DataError(f"{section.where('layers')}: [route] takes 1 to 4 layers, got {len(refs)}")
            sources = [self._source(index, ref, section, "layers") for ref in refs]
            groups = section.get_int("groups", 1)
            group_id = section.get_int("group_id", 0)
            if groups < 1 or not 0 <= group_id < groups:
                raise DataError(f"{section.where('group_id')}: [route] needs 0 <= group_id < groups, got {group_id}")
            inputs = [shapes[j] for j in sources]
            if len({s.stride for s in inputs}) > 1:
                raise DataError(
                    f"{section.where('layers')}: [route] joins maps of strides {[s.stride for s in inputs]}"
                )
            if any(s.channels % groups for s in inputs):
                raise DataError(
                    f"{section.where('groups')}: [route] groups={groups} does not divide its inputs' channels"
                )
            return RouteLayer(sources, groups, group_id), _Shape(
                sum(s.channels // groups for s in inputs), inputs[0].stride
            )
        if kind == "shortcut":
            refs = section.get_ints("from")
            if len(refs) != 1:
                raise DataError(f"{section.where('from')}: [shortcut] from= takes one layer, got {len(refs)}")
            source = self._source(index, refs[0], section, "from")
            if shapes[source] != current:
                raise DataError(
                    f"{section.where('from')}: [shortcut] adds layer {source} ({shapes[source].channels} channels, "
                    f"stride {shapes[source].stride}) to layer {index - 1} ({current.channels}, {current.stride})"
                )
            return ShortcutLayer(source, _activation(section.options.get("activation", "linear"), section)), current
        if kind == "maxpool":
            stride = section.get_int("stride", 1)
            size = section.get_int("size", stride)
            padding = section.get_int("padding", size - 1)
            if size < 1 or stride < 1 or padding < 0:
                raise DataError(f"{section.where()}: [maxpool] size and stride must be positive")
            return MaxPoolLayer(size, stride, padding), _Shape(current.channels, current.stride * stride)
        if kind == "upsample":
            stride = section.get_int("stride", 2)
            if stride < 1 or current.stride % stride:
                raise DataError(f"{section.where('stride')}: [upsample] stride={stride} below the input resolution")
            return UpsampleLayer(stride), _Shape(current.channels, current.stride // stride)
        if kind == "yolo":
            return self._yolo(index, section, current), current
        raise DataError(f"{section.where()}: [{kind}] cannot be a layer")

    def _source(self, index: int, ref: int, section: Section, key: str) -> int:
        """An absolute index from a route / shortcut reference (negative: relative to layer ``index``)."""
        absolute = index + ref if ref < 0 else ref
        if not 0 <= absolute < index:
            raise DataError(
                f"{section.where(key)}: [{section.name}] {key}={ref} refers to layer {absolute}, which does not exist "
                f"before this layer {index} (layers 0..{index - 1})"
            )
        if self.cfg[absolute + 1].name == "yolo":
            raise DataError(
                f"{section.where(key)}: [{section.name}] {key}={ref} reads the output of [yolo] layer {absolute}"
            )
        return absolute

    def _yolo(self, index: int, section: Section, current: _Shape) -> YoloLayer:
        classes = section.get_int("classes", 20)
        values = section.get_floats("anchors")
        if len(values) % 2:
            raise DataError(
                f"{section.where('anchors')}: [yolo] anchors must be (w, h) pairs, got {len(values)} numbers"
            )
        pairs = torch.tensor(values, dtype=torch.float32).view(-1, 2)
        mask = section.get_ints("mask") if "mask" in section.options else list(range(pairs.shape[0]))
        if not mask or any(not 0 <= m < pairs.shape[0] for m in mask):
            raise DataError(
                f"{section.where('mask')}: [yolo] mask={mask} picks anchors outside 0..{pairs.shape[0] - 1}"
            )
        if index == 0 or self.cfg[index].name != "convolutional":
            raise DataError(f"{section.where()}: [yolo] must follow a [convolutional] layer (its head conv)")
        expected = len(mask) * (5 + classes)
        if current.channels != expected:
            raise DataError(
                f"{section.where('classes')}: [yolo] with {len(mask)} anchors and classes={classes} needs "
                f"filters={expected} in the [convolutional] before it, which has {current.channels}"
            )
        head = self.cfg[index]
        new_coords = bool(section.get_int("new_coords", 0))
        if new_coords and head.options.get("activation") != "logistic":
            raise DataError(f"{head.where('activation')}: a head conv of a new_coords=1 [yolo] must be logistic")
        if not new_coords and head.options.get("activation", "logistic") != "linear":
            raise DataError(f"{head.where('activation')}: a head conv of a classic [yolo] layer must be linear")
        coding = BoxCoding(new_coords=new_coords, scale_x_y=section.get_float("scale_x_y", 1.0))
        return YoloLayer(pairs[mask].clone(), coding, current.stride)

    def _setup_heads(self) -> None:
        yolo = [i for i, layer in enumerate(self.layers) if isinstance(layer, YoloLayer)]
        if not yolo:
            raise DataError(f"{self.cfg[0].source}: the cfg has no [yolo] layer, so it is not a detector")
        sections = [self.cfg[i + 1] for i in yolo]
        classes = {s.get_int("classes", 20) for s in sections}
        if len(classes) > 1:
            raise DataError(f"{sections[0].where('classes')}: [yolo] layers disagree on classes: {sorted(classes)}")
        counts = {len(self._yolo_layer(i).anchors) for i in yolo}
        if len(counts) > 1:
            raise DataError(f"{sections[0].where('mask')}: [yolo] layers use different anchor counts {sorted(counts)}")
        order = sorted(yolo, key=lambda i: self._yolo_layer(i).stride)  # stable: cfg order among equal strides
        self.head_layers: tuple[int, ...] = tuple(order)
        self.num_classes = classes.pop()
        self.register_buffer("anchors", torch.stack([self._yolo_layer(i).anchors for i in order]))
        self.strides: tuple[int, ...] = tuple(self._yolo_layer(i).stride for i in order)
        self.coding: tuple[BoxCoding, ...] = tuple(self._yolo_layer(i).coding for i in order)
        features = []
        for i in order:
            feeding = i - 2  # the head conv (layer i - 1) reads the layer before it
            if feeding < 0:
                raise DataError(f"{self.cfg[i + 1].where()}: [yolo] layer {i} has no feature map before its head conv")
            shape = self._shapes[feeding]
            features.append(FeatureInfo(f"layers.{feeding}", shape.channels, shape.stride))
        self.feature_info: tuple[FeatureInfo, ...] = tuple(features)
        self.distill_layers: list[str] = [info.module for info in self.feature_info]

    def _yolo_layer(self, index: int) -> YoloLayer:
        layer = self.layers[index]
        assert isinstance(layer, YoloLayer)
        return layer

    def forward(self, x: Tensor) -> list[Tensor]:
        """Raw head maps.

        Args:
            x: images (N, channels, H, W), H and W multiples of ``max(strides)``.

        Returns:
            One ``(N, A * (5 + C), H / s, W / s)`` map per ``[yolo]`` layer, ordered by ``strides``.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InvalidOptionError(
                f"DarknetModel: expected images (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        outputs: dict[int, Tensor] = {}
        heads: dict[int, Tensor] = {}
        for index, layer in enumerate(self.layers):
            if isinstance(layer, RouteLayer):
                x = layer([outputs[j] for j in layer.sources])
            elif isinstance(layer, ShortcutLayer):
                x = layer(x, outputs[layer.source])
            elif isinstance(layer, YoloLayer):
                heads[index] = x
            else:
                x = layer(x)
            if index in self._kept:
                outputs[index] = x
        return [heads[i] for i in self.head_layers]

    @torch.no_grad()
    def predict(
        self, images: Tensor, *, conf: float = 0.25, iou: float = 0.45, max_det: int = 300
    ) -> list[dict[str, Tensor]]:
        """Detect objects as :meth:`YOLOv4.predict <grouppruner.detection.YOLOv4.predict>` does, decoding each
        head map with its ``[yolo]`` layer's ``new_coords`` / ``scale_x_y``.

        Args:
            images: (N, 3, H, W) float in [0, 1].
            conf: minimum score (objectness x class probability).
            iou: class-aware NMS IoU threshold.
            max_det: at most this many detections per image.

        Returns:
            N dicts with ``"boxes"`` (K, 4) xyxy in input pixels, ``"scores"`` (K,), ``"labels"`` (K,) int64.
        """
        return detect(self, images, self.anchors, self.strides, conf=conf, iou=iou, max_det=max_det, coding=self.coding)


def _sources(layer: nn.Module) -> tuple[int, ...]:
    if isinstance(layer, RouteLayer):
        return layer.sources
    if isinstance(layer, ShortcutLayer):
        return (layer.source,)
    return ()
