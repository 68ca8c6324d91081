"""Darknet ``.weights`` files, read and written as darknet's own ``load_weights`` / ``save_weights`` do.

Layout (little-endian): a header of three int32 (major, minor, revision), then ``seen`` (images trained on) as
uint64 when ``major * 10 + minor >= 2``, else uint32; then float32 values, per ``[convolutional]`` layer in
layer order:

- with ``batch_normalize=1``: beta (``filters``), gamma, running mean, running variance, then the weights
  ``(filters, C_in / groups, size, size)``;
- without: the bias (``filters``), then the weights.

The file length must match the cfg exactly: a short file names the layer where it ran out, a long one the
number of bytes left over.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..._utils.errors import DataError
from ..._utils.io import atomic_write
from .model import ConvLayer, DarknetModel

__all__ = [
    "KNOWN_MAJOR_VERSIONS",
    "WeightsHeader",
    "conv_tensors",
    "read_header",
    "read_weights",
    "weights_floats",
    "write_weights",
]

logger = logging.getLogger(__name__)

#: Header major versions darknet has written (0: every published model; 1 is read by darknet the same way).
KNOWN_MAJOR_VERSIONS = (0, 1)


@dataclass(frozen=True)
class WeightsHeader:
    """The header of a ``.weights`` file.

    Attributes:
        major, minor, revision: the format version (AlexeyAB's darknet writes 0, 2, 5).
        seen: images the model was trained on.
    """

    major: int = 0
    minor: int = 2
    revision: int = 5
    seen: int = 0

    @property
    def seen_bytes(self) -> int:
        """Width of ``seen``: 8 bytes when ``major * 10 + minor >= 2``, else 4."""
        return 8 if self.major * 10 + self.minor >= 2 else 4

    @property
    def size(self) -> int:
        """Header length in bytes (20 or 16)."""
        return 12 + self.seen_bytes


def conv_tensors(layer: ConvLayer) -> list[Tensor]:
    """The tensors of one convolution in file order (beta, gamma, mean, variance, weights; or bias, weights).

    Args:
        layer: a :class:`~grouppruner.detection.darknet.model.ConvLayer` (with BatchNorm and no conv bias, or
            with a conv bias and no BatchNorm).
    """
    conv, bn = layer.conv, layer.bn
    if bn is not None:
        assert bn.running_mean is not None and bn.running_var is not None
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]
    assert conv.bias is not None
    return [conv.bias, conv.weight]


def weights_floats(model: DarknetModel) -> int:
    """Number of float32 values the model's weights file holds (without the header)."""
    return sum(t.numel() for layer in model.layers if isinstance(layer, ConvLayer) for t in conv_tensors(layer))


def read_header(path: str | os.PathLike[str]) -> WeightsHeader:
    """The header of a darknet ``.weights`` file (version and images seen), without reading its values.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file is shorter than its header or has an unknown major version.
    """
    path = Path(path)
    with open(path, "rb") as file:
        return _read_header(path, file.read(20))


def _read_header(path: Path, data: bytes) -> WeightsHeader:
    if len(data) < 12:
        raise DataError(f"{path}: not a darknet weights file: {len(data)} bytes, shorter than its header")
    major, minor, revision = struct.unpack_from("<iii", data)
    if major not in KNOWN_MAJOR_VERSIONS:
        raise DataError(
            f"{path}: unknown darknet weights major version {major} (header {major}.{minor}.{revision}); "
            f"known: {', '.join(map(str, KNOWN_MAJOR_VERSIONS))}"
        )
    header = WeightsHeader(major, minor, revision)
    if len(data) < header.size:
        raise DataError(f"{path}: not a darknet weights file: {len(data)} bytes, shorter than its header")
    (seen,) = struct.unpack_from("<Q" if header.seen_bytes == 8 else "<I", data, 12)
    return WeightsHeader(major, minor, revision, int(seen))


def read_weights(model: DarknetModel, path: str | os.PathLike[str]) -> WeightsHeader:
    """Load a darknet ``.weights`` file into ``model`` (in place).

    Args:
        model: built from the cfg the file belongs to.
        path: the weights file.

    Returns:
        The file's header.

    Raises:
        FileNotFoundError: no such file.
        DataError: a header with an unknown major version; a file too short (names the layer, its cfg line and
            how many values it needs) or too long (names the bytes left over) for the cfg; the model is
            unchanged then.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: darknet weights not found")
    data = path.read_bytes()
    header = _read_header(path, data)
    available = (len(data) - header.size) // 4
    needed = weights_floats(model)
    if available < needed or (len(data) - header.size) % 4:
        offset = 0
        for index, layer in enumerate(model.layers):
            if isinstance(layer, ConvLayer):
                count = sum(t.numel() for t in conv_tensors(layer))
                if offset + count > available:
                    section = model.cfg[index + 1]
                    raise DataError(
                        f"{path}: too short for the cfg: it ran out in layer {index} ([convolutional] at "
                        f"{section.where()}), which needs values {offset}..{offset + count} of the {needed} the cfg "
                        f"needs; the file holds {available} (is it the weights of another cfg?)"
                    )
                offset += count
        raise DataError(f"{path}: {(len(data) - header.size) % 4} stray bytes after the last float32")
    if available > needed:
        extra = len(data) - header.size - 4 * needed
        raise DataError(
            f"{path}: {extra} bytes left over after the last layer: the cfg needs {needed} values "
            f"({header.size + 4 * needed} bytes), the file holds {available} (is it the weights of another cfg?)"
        )
    values = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=needed, offset=header.size).astype(np.float32))
    offset = 0
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, ConvLayer):
                for tensor in conv_tensors(layer):
                    tensor.copy_(values[offset : offset + tensor.numel()].view_as(tensor))
                    offset += tensor.numel()
    logger.info("read %d values from %s (header %d.%d.%d)", needed, path, header.major, header.minor, header.revision)
    return header


def write_weights(model: DarknetModel, path: str | os.PathLike[str], *, header: WeightsHeader | None = None) -> None:
    """Write ``model``'s convolutions as a darknet ``.weights`` file, atomically.

    Every :class:`~grouppruner.detection.darknet.model.ConvLayer` must be in darknet's form: BatchNorm without a
    conv bias, or a conv bias without BatchNorm (:func:`~grouppruner.detection.darknet.to_darknet` brings a
    pruned model into that form first).

    Args:
        model: the model.
        path: destination file.
        header: the header to write (default ``WeightsHeader()``: 0.2.5, seen 0).
    """
    header = header or WeightsHeader()
    if header.major not in KNOWN_MAJOR_VERSIONS:
        raise DataError(f"write_weights: unknown major version {header.major}")
    parts = [struct.pack("<iii", header.major, header.minor, header.revision)]
    parts.append(struct.pack("<Q" if header.seen_bytes == 8 else "<I", header.seen))
    for layer in model.layers:
        if isinstance(layer, ConvLayer):
            parts.extend(
                t.detach().cpu().float().contiguous().numpy().astype("<f4").tobytes() for t in conv_tensors(layer)
            )
    with atomic_write(path) as file:
        for part in parts:
            file.write(part)
