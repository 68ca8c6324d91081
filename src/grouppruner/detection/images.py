"""Images into model inputs: letterboxing (resize keeping the aspect ratio, pad to a square) and colour jitter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._utils.errors import InvalidOptionError

__all__ = ["PAD_VALUE", "Letterbox", "hsv_jitter", "image_to_tensor", "letterbox_image", "letterbox_params"]

#: Grey used for the letterbox padding (the value YOLO implementations use, 114 / 255).
PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How an image of ``width x height`` pixels was placed in the model input.

    The image is resized by ``(scale_x, scale_y)`` (equal up to rounding of the new size, so the aspect ratio is
    kept) and pasted at offset ``(pad_x, pad_y)`` of a grey canvas of the input size.
    """

    width: int
    height: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    new_width: int
    new_height: int

    def apply(self, boxes: Tensor) -> Tensor:
        """Map boxes from original image pixels to input pixels.

        Args:
            boxes: float ``(M, 4)`` xyxy in original image pixels.

        Returns:
            float ``(M, 4)`` xyxy in input pixels.
        """
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        offset = boxes.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        return boxes * scale + offset

    def invert(self, boxes: Tensor) -> Tensor:
        """Map boxes from input pixels back to original image pixels, clipped to the image.

        Args:
            boxes: float ``(K, 4)`` xyxy in input pixels (e.g. detections of ``model.predict``).

        Returns:
            float ``(K, 4)`` xyxy in original image pixels.
        """
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        offset = boxes.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        out = (boxes - offset) / scale
        limit = boxes.new_tensor([self.width, self.height, self.width, self.height])
        return torch.minimum(out.clamp(min=0), limit)


def _as_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise InvalidOptionError(f"image_size must be a positive int or (height, width) of ints, got {image_size!r}")
    return size[0], size[1]


def letterbox_params(width: int, height: int, image_size: int | tuple[int, int]) -> Letterbox:
    """Compute the letterbox placement of a ``width x height`` image in an input of ``image_size``.

    Args:
        width: Original image width in pixels.
        height: Original image height in pixels.
        image_size: Input size, an int (square) or ``(height, width)``.

    Returns:
        The :class:`Letterbox` (scale keeps the aspect ratio; the padding is split evenly, the odd pixel going
        to the right / bottom).
    """
    in_h, in_w = _as_hw(image_size)
    if width <= 0 or height <= 0:
        raise InvalidOptionError(f"image size must be positive, got {width}x{height}")
    scale = min(in_w / width, in_h / height)
    new_w = max(1, min(in_w, round(width * scale)))
    new_h = max(1, min(in_h, round(height * scale)))
    return Letterbox(
        width=width,
        height=height,
        scale_x=new_w / width,
        scale_y=new_h / height,
        pad_x=(in_w - new_w) // 2,
        pad_y=(in_h - new_h) // 2,
        new_width=new_w,
        new_height=new_h,
    )


def letterbox_image(image: Any, image_size: int | tuple[int, int]) -> tuple[Any, Letterbox]:
    """Resize a PIL image keeping its aspect ratio and pad it with grey to ``image_size``.

    Args:
        image: An RGB ``PIL.Image.Image`` of any size.
        image_size: Input size, an int (square) or ``(height, width)``.

    Returns:
        ``(canvas, letterbox)``: the padded RGB PIL image of the input size and its :class:`Letterbox`.
    """
    from PIL import Image

    in_h, in_w = _as_hw(image_size)
    params = letterbox_params(image.width, image.height, (in_h, in_w))
    if (params.new_width, params.new_height) != (image.width, image.height):
        image = image.resize((params.new_width, params.new_height), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (in_w, in_h), (PAD_VALUE, PAD_VALUE, PAD_VALUE))
    canvas.paste(image, (params.pad_x, params.pad_y))
    return canvas, params


def image_to_tensor(image: Any) -> Tensor:
    """Convert an RGB PIL image to a float tensor ``(3, H, W)`` in ``[0, 1]``."""
    array = np.array(image, dtype=np.uint8, copy=True)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def hsv_jitter(image: Any, gains: Sequence[float]) -> Any:
    """Multiply hue, saturation and value of a PIL image by ``gains`` (hue wraps around).

    Args:
        image: RGB ``PIL.Image.Image``.
        gains: three positive multipliers ``(hue, saturation, value)``.

    Returns:
        The jittered RGB PIL image (same size).
    """
    from PIL import Image

    hsv = np.array(image.convert("HSV"), dtype=np.uint8)
    base = np.arange(256, dtype=np.float64)
    # Lookup tables keep the cost per image at three integer gathers.
    lut_h = ((base * gains[0]) % 256).astype(np.uint8)
    lut_s = np.clip(base * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(base * gains[2], 0, 255).astype(np.uint8)
    out = np.stack([lut_h[hsv[..., 0]], lut_s[hsv[..., 1]], lut_v[hsv[..., 2]]], axis=-1)
    return Image.fromarray(out, "HSV").convert("RGB")
