"""Foreground masks from ground-truth boxes, for foreground-weighted attention distillation.

:func:`box_foreground` gives :meth:`grouppruner.AttentionDistiller.loss` a ``mask`` callable that maps the boxes onto
each distilled layer's grid, whatever its stride: ``distiller.loss(mask=box_foreground(boxes, images.shape[-2:]))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._utils.errors import InvalidOptionError

__all__ = ["box_foreground", "boxes_to_grid_mask", "grid_stride"]


def boxes_to_grid_mask(
    boxes: Sequence[Tensor],
    grid_size: tuple[int, int],
    stride: float | tuple[float, float],
) -> Tensor:
    """Foreground mask of ground-truth boxes on a feature grid.

    Cell ``(i, j)`` (row ``i``, column ``j``) covers input pixels ``y in [i*sy, (i+1)*sy)``,
    ``x in [j*sx, (j+1)*sx)``; it is foreground when it overlaps a box with positive area, so even a box smaller
    than a cell marks at least one cell.

    Args:
        boxes: ``N`` tensors of shape ``(M_i, 4)``, ``x1, y1, x2, y2`` in input pixels (``M_i`` may be 0).
        grid_size: ``(H, W)`` of the feature grid (rows, columns).
        stride: input pixels per cell, one number or ``(sy, sx)``.

    Returns:
        ``(N, H, W)`` float mask with values in ``{0, 1}``.

    Raises:
        ValueError: a box tensor is not ``(M, 4)`` or the stride is not positive.
    """
    height, width = grid_size
    sy, sx = (stride, stride) if isinstance(stride, int | float) else stride
    if sy <= 0 or sx <= 0:
        raise InvalidOptionError(f"stride must be positive, got {stride!r}")
    masks = []
    for index, image_boxes in enumerate(boxes):
        if image_boxes.dim() != 2 or image_boxes.shape[-1] != 4:
            raise InvalidOptionError(f"boxes[{index}] must have shape (M, 4) xyxy, got {tuple(image_boxes.shape)}")
        b = image_boxes.detach().float()
        rows = torch.arange(height, device=b.device, dtype=torch.float32)
        cols = torch.arange(width, device=b.device, dtype=torch.float32)
        # Strict inequalities: a box edge lying exactly on a cell border does not claim the next cell.
        in_rows = (b[:, 1, None] < (rows + 1) * sy) & (b[:, 3, None] > rows * sy)  # (M, H)
        in_cols = (b[:, 0, None] < (cols + 1) * sx) & (b[:, 2, None] > cols * sx)  # (M, W)
        cover = (in_rows[:, :, None] & in_cols[:, None, :]).any(dim=0)  # (H, W)
        masks.append(cover.float())
    if not masks:
        raise InvalidOptionError("boxes is empty: expected one (M, 4) tensor per image")
    return torch.stack(masks)


def grid_stride(input_len: int, grid_len: int) -> float:
    """Input pixels per cell along one axis: the integer stride when the grid matches one, else the ratio.

    With ``input_len=321`` and a stride-8 network the grid has 41 (ceil) or 40 (floor) cells; both give 8.
    """
    ratio = input_len / grid_len
    nominal = round(ratio)
    if nominal >= 1 and grid_len in (math.ceil(input_len / nominal), input_len // nominal):
        return float(nominal)
    return ratio


def box_foreground(boxes: Sequence[Tensor], input_size: Sequence[int]) -> Callable[[tuple[int, int]], Tensor]:
    """A ``mask`` callable for :meth:`~grouppruner.AttentionDistiller.loss` from ground-truth boxes.

    Args:
        boxes: ``N`` tensors of shape ``(M_i, 4)``, ``x1, y1, x2, y2`` in input pixels.
        input_size: ``(H, W)`` of the network input the boxes refer to, e.g. ``images.shape[-2:]``.

    Returns:
        ``grid (H', W') -> (N, H', W')`` foreground mask on that grid, the stride per axis being
        :func:`grid_stride` of the input and grid sizes.

    Raises:
        ValueError: ``input_size`` is not two positive sizes.
    """
    height, width = (int(v) for v in input_size)
    if height <= 0 or width <= 0:
        raise InvalidOptionError(f"input_size must be two positive sizes (H, W), got {tuple(input_size)}")

    def mask(grid: tuple[int, int]) -> Tensor:
        stride = (grid_stride(height, grid[0]), grid_stride(width, grid[1]))
        return boxes_to_grid_mask(boxes, grid, stride)

    return mask
