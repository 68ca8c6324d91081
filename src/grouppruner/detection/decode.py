"""Decoding of YOLOv4 head maps into boxes, and class-aware NMS in pure torch.

Box parameterisation (Scaled-YOLOv4, darknet ``new_coords=1``): with ``p = sigmoid(raw)`` at grid cell
``(gx, gy)`` of a map with stride ``s`` and anchor ``(aw, ah)`` in input pixels,

* centre ``= (2 p_xy - 0.5 + (gx, gy)) * s`` (a centre may lie half a cell outside its cell),
* size ``= (2 p_wh)^2 * (aw, ah)`` (at most 4x the anchor; bounded, so training from scratch is stable),
* score of class ``c`` ``= p_obj * p_c``.

:class:`grouppruner.detection.YoloLoss` trains exactly this parameterisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._utils.calls import eval_mode
from .._utils.errors import InvalidOptionError

__all__ = ["DEFAULT_ANCHORS", "BoxCoding", "batched_nms", "box_cells", "box_iou", "decode", "detect", "split_head_map"]

#: Anchors of ``yolov4.cfg`` in input pixels, (3 scales, 3 anchors, (w, h)) for strides 8, 16, 32.
DEFAULT_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((12.0, 16.0), (19.0, 36.0), (40.0, 28.0)),
    ((36.0, 75.0), (76.0, 55.0), (72.0, 146.0)),
    ((142.0, 110.0), (192.0, 243.0), (459.0, 401.0)),
)


@dataclass(frozen=True)
class BoxCoding:
    """How one head map encodes boxes: darknet's ``[yolo]`` options ``new_coords`` and ``scale_x_y``.

    With ``p = sigmoid(raw)``: centre ``= (scale_x_y * p_xy - (scale_x_y - 1) / 2 + (gx, gy)) * s``; size
    ``= (2 p_wh)^2 * anchor`` when ``new_coords`` (the default, this library's parameterisation), else
    ``exp(raw_wh) * anchor`` (darknet's classic coordinates, as in ``yolov4.cfg``).

    Attributes:
        new_coords: bounded sizes ``(2 p)^2`` instead of ``exp``.
        scale_x_y: the centre's scale; 2.0 lets a centre lie half a cell outside its cell.
    """

    new_coords: bool = True
    scale_x_y: float = 2.0


def box_cells(raw: Tensor, anchor_wh: Tensor, coding: BoxCoding = BoxCoding()) -> Tensor:
    """Decode raw box predictions into ``(cx, cy, w, h)`` in grid cells, the centre relative to its cell.

    Args:
        raw: (P, >= 4) raw predictions (tx, ty, tw, th first).
        anchor_wh: (P, 2) anchor sizes in cells.
        coding: the map's :class:`BoxCoding`.

    Returns:
        (P, 4); with the classic coding the size exponent is capped at 4 (55x the anchor) so training stays finite.
    """
    shift = (coding.scale_x_y - 1) / 2
    xy = raw[:, :2].sigmoid() * coding.scale_x_y - shift
    wh = (raw[:, 2:4].sigmoid() * 2) ** 2 if coding.new_coords else raw[:, 2:4].clamp(max=4.0).exp()
    return torch.cat([xy, wh * anchor_wh], dim=1)


def split_head_map(output: Tensor, num_anchors: int = 3) -> Tensor:
    """Reshape a raw head map so that the last dimension holds one anchor's prediction.

    Args:
        output: (N, A * (5 + C), H, W) raw head map.
        num_anchors: A.

    Returns:
        (N, A, H, W, 5 + C) view-permuted tensor (channels: tx, ty, tw, th, objectness, C class logits).
    """
    n, ch, h, w = output.shape
    if ch % num_anchors or ch // num_anchors < 6:
        raise InvalidOptionError(
            f"head map with {ch} channels cannot hold {num_anchors} anchors x (5 + num_classes) predictions"
        )
    return output.view(n, num_anchors, ch // num_anchors, h, w).permute(0, 1, 3, 4, 2)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: (M, 4) xyxy.
        boxes2: (K, 4) xyxy.

    Returns:
        (M, K) IoU; 0 where both boxes are empty.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def decode(
    outputs: Sequence[Tensor],
    anchors: Tensor | None = None,
    strides: Sequence[int] = (8, 16, 32),
    *,
    conf: float = 0.001,
    max_candidates: int = 10000,
    coding: Sequence[BoxCoding] | None = None,
) -> list[dict[str, Tensor]]:
    """Turn raw head maps into scored boxes per image (before NMS).

    Each anchor position yields one candidate with its best class; candidates scoring below ``conf`` are
    dropped and at most ``max_candidates`` (highest scores) are kept per image. Boxes are clipped to the input
    image (``H = H_i * stride_i``).

    Args:
        outputs: raw head maps ``[(N, A * (5 + C), H_i, W_i)]``, one per stride.
        anchors: (num_scales, A, 2) anchor (w, h) in input pixels, e.g. ``model.anchors``; default
            :data:`DEFAULT_ANCHORS` (those of ``yolov4.cfg``).
        strides: stride of each map in input pixels.
        conf: minimum score ``objectness * class probability``.
        max_candidates: per-image cap on candidates, applied after the ``conf`` filter.
        coding: the :class:`BoxCoding` of each map (default: ``BoxCoding()`` for all, the parameterisation
            above); darknet detectors imported with classic ``[yolo]`` layers pass theirs.

    Returns:
        N dicts with ``"boxes"`` (K, 4) xyxy in input pixels, ``"scores"`` (K,) and ``"labels"`` (K,) int64,
        sorted by decreasing score.
    """
    if anchors is None:
        anchors = torch.tensor(DEFAULT_ANCHORS)
    if len(outputs) != len(strides) or anchors.shape[0] != len(strides):
        raise InvalidOptionError(
            f"decode: got {len(outputs)} head maps, {anchors.shape[0]} anchor sets and {len(strides)} strides"
        )
    codings = list(coding) if coding is not None else [BoxCoding()] * len(strides)
    if len(codings) != len(strides):
        raise InvalidOptionError(f"decode: got {len(codings)} box codings for {len(strides)} head maps")
    num_anchors = anchors.shape[1]
    image_h = outputs[0].shape[2] * strides[0]
    image_w = outputs[0].shape[3] * strides[0]
    per_scale = []
    for output, anchor, stride, code in zip(outputs, anchors, strides, codings, strict=True):
        raw = split_head_map(output.detach(), num_anchors).float()
        p = raw.sigmoid()
        _, _, h, w, _ = p.shape
        gy, gx = torch.meshgrid(
            torch.arange(h, device=p.device, dtype=p.dtype),
            torch.arange(w, device=p.device, dtype=p.dtype),
            indexing="ij",
        )
        shift = (code.scale_x_y - 1) / 2
        cx = (p[..., 0] * code.scale_x_y - shift + gx) * stride
        cy = (p[..., 1] * code.scale_x_y - shift + gy) * stride
        anchor = anchor.to(p.device, p.dtype).view(1, num_anchors, 1, 1, 2)
        wh = ((p[..., 2:4] * 2) ** 2 if code.new_coords else raw[..., 2:4].exp()) * anchor
        boxes = torch.stack(
            [cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], dim=-1
        )
        cls_score, labels = p[..., 5:].max(dim=-1)
        scores = p[..., 4] * cls_score
        n = p.shape[0]
        per_scale.append((boxes.reshape(n, -1, 4), scores.reshape(n, -1), labels.reshape(n, -1)))
    all_boxes = torch.cat([b for b, _, _ in per_scale], dim=1)
    all_scores = torch.cat([s for _, s, _ in per_scale], dim=1)
    all_labels = torch.cat([lab for _, _, lab in per_scale], dim=1)
    limits = torch.tensor([image_w, image_h, image_w, image_h], device=all_boxes.device, dtype=all_boxes.dtype)
    all_boxes = torch.minimum(all_boxes.clamp(min=0), limits)
    results = []
    for boxes, scores, labels in zip(all_boxes, all_scores, all_labels, strict=True):
        keep = scores >= conf
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = scores.argsort(descending=True, stable=True)[:max_candidates]
        results.append({"boxes": boxes[order], "scores": scores[order], "labels": labels[order].long()})
    return results


def _greedy_nms(boxes: Tensor, iou: float, block: int) -> Tensor:
    """Class-agnostic greedy NMS of (K, 4) boxes already sorted by decreasing score -> (K,) kept mask."""
    k = boxes.shape[0]
    removed = torch.zeros(k, dtype=torch.bool, device=boxes.device)
    kept = torch.zeros(k, dtype=torch.bool, device=boxes.device)
    for start in range(0, k, block):
        end = min(start + block, k)
        # suppressor[j, i]: earlier box j would suppress later box i of this block.
        suppressor = (box_iou(boxes[start:end], boxes[start:end]) > iou).triu(diagonal=1).float()
        candidate = ~removed[start:end]
        block_kept = candidate.clone()
        # Greedy NMS inside the block is the unique solution of "kept_i = candidate_i and no kept j < i
        # suppresses i" (a triangular system); iterating it from "all candidates kept" reaches that solution
        # after at most (longest suppression chain) steps, so stopping at the first fixed point is exact.
        while True:
            suppressed = (block_kept.float() @ suppressor) > 0
            updated = candidate & ~suppressed
            if torch.equal(updated, block_kept):
                break
            block_kept = updated
        kept[start:end] = block_kept
        if end < k and bool(block_kept.any()):
            later = box_iou(boxes[start:end][block_kept], boxes[end:]) > iou
            removed[end:] |= later.any(dim=0)
    return kept


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, *, block: int = 256) -> Tensor:
    """Greedy class-aware non-maximum suppression (exact, pure torch, memory O(block x K)).

    Visiting boxes by decreasing score (ties: lower index first), a box is kept unless a kept box of the same
    label overlaps it with IoU > ``iou``. Each label is processed separately, so the work is about
    ``sum_c K_c^2`` box pairs rather than ``K^2``.

    Args:
        boxes: (K, 4) xyxy.
        scores: (K,) scores.
        labels: (K,) integer class labels; boxes of different labels never suppress each other.
        iou: IoU threshold in [0, 1].
        block: boxes processed per vectorised block (memory/speed trade-off only; the result is the same).

    Returns:
        (K',) int64 indices into ``boxes`` of the kept boxes, by decreasing score.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise InvalidOptionError(f"batched_nms: boxes must have shape (K, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1] or labels.shape != boxes.shape[:1]:
        raise InvalidOptionError(
            f"batched_nms: scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must have shape "
            f"({boxes.shape[0]},)"
        )
    order = scores.argsort(descending=True, stable=True)
    sorted_labels = labels[order]
    keep = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for label in torch.unique(sorted_labels):
        members = order[sorted_labels == label]  # this label's boxes, by decreasing score
        keep[members[_greedy_nms(boxes[members].float(), iou, block)]] = True
    return order[keep[order]]


def detect(
    model: nn.Module,
    images: Tensor,
    anchors: Tensor,
    strides: Sequence[int],
    *,
    conf: float,
    iou: float,
    max_det: int,
    coding: Sequence[BoxCoding] | None = None,
) -> list[dict[str, Tensor]]:
    """The detections of a detector whose forward returns raw head maps: eval-mode forward, decoding, class-aware
    NMS (the one implementation behind ``YOLOv4.predict`` and ``DarknetModel.predict``).

    Args:
        model: the detector; it runs in eval mode and gets its own train / eval flags back.
        images: (N, 3, H, W) float in [0, 1].
        anchors: (num_scales, A, 2) anchor (w, h) in input pixels.
        strides: the stride of each head map.
        conf: minimum score (objectness x class probability).
        iou: NMS IoU threshold (boxes of different classes never suppress each other).
        max_det: at most this many detections per image, highest scores first.
        coding: :class:`BoxCoding` per head map (``None``: YOLOv4's).

    Returns:
        N dicts with ``"boxes"`` (K, 4) xyxy in input pixels, ``"scores"`` (K,) and ``"labels"`` (K,) int64,
        sorted by decreasing score.
    """
    with eval_mode(model):
        outputs = model(images)
    results = []
    for det in decode(outputs, anchors, strides, conf=conf, coding=coding):
        keep = batched_nms(det["boxes"], det["scores"], det["labels"], iou)[:max_det]
        results.append({key: value[keep] for key, value in det.items()})
    return results
