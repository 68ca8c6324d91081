"""PASCAL VOC detection metric: per-class average precision and mAP.

The protocol of the VOC devkit (``VOCevaldet`` / ``voc_eval.py``), on continuous pixel coordinates:

- per class, all detections of the data set are sorted by descending score (stable for ties) and matched
  greedily: each one goes to the ground-truth box of that class in its image with the largest IoU;
- IoU ``> iou`` (strictly, as in the devkit) with a not-yet-matched box -> true positive; with an already matched
  box (a duplicate) or IoU ``<= iou`` -> false positive;
- when the best-overlapping box is ``difficult`` and the IoU is ``> iou``, the detection is ignored (neither TP
  nor FP), and difficult boxes do not count in the number of positives;
- AP is the area under the interpolated precision/recall curve: all points (VOC 2010+, the default) or the
  11 recall points 0, 0.1, ..., 1 (VOC 2007, ``use_07_metric=True``).

Unlike the devkit, IoU uses continuous coordinates (no ``+1`` on widths), the convention of the whole package.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from .._utils.errors import InvalidOptionError

logger = logging.getLogger(__name__)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (K, 4) against ``b`` (M, 4), xyxy."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def average_precision(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool = False) -> float:
    """Area under a precision/recall curve, VOC style.

    Args:
        recall: ``(K,)`` cumulative recall after each detection (non-decreasing).
        precision: ``(K,)`` cumulative precision after each detection.
        use_07_metric: 11-point interpolation (VOC 2007) instead of all points.

    Returns:
        The AP in ``[0, 1]`` (0 for an empty curve).
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.size == 0:
        return 0.0
    if use_07_metric:
        total = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            above = precision[recall >= t]
            total += float(above.max()) if above.size else 0.0
        return total / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # Precision envelope: the best precision at any recall at least as large.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _field(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(entry, Mapping):
        raise InvalidOptionError(f"voc_eval: {where} must be a dict, got {type(entry).__name__}")
    if key not in entry:
        raise InvalidOptionError(f"voc_eval: {where} has no {key!r} entry (it has {sorted(entry)})")
    return entry[key]


def _numpy(value: Any, shape_tail: tuple[int, ...], dtype: Any, where: str) -> np.ndarray:
    """``value`` as an array of shape ``(K, *shape_tail)``; a wrong shape or a non-integer label is an error.

    An empty value of any shape is accepted as ``K = 0``. ``dtype`` integer (labels) refuses float / bool input
    instead of truncating it; ``dtype`` bool (difficult flags) accepts bool or 0/1 integers.
    """
    array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if array.size == 0:
        return np.zeros((0, *shape_tail), dtype=dtype)
    expected = "(K, " + ", ".join(map(str, shape_tail)) + ")" if shape_tail else "(K,)"
    if array.ndim != 1 + len(shape_tail) or tuple(array.shape[1:]) != shape_tail:
        raise InvalidOptionError(f"voc_eval: {where} must have shape {expected}, got {tuple(array.shape)}")
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(array.dtype, np.integer):
        raise InvalidOptionError(
            f"voc_eval: {where} must be integer class indices, got dtype {array.dtype} "
            "(cast with .long() if they are indices)"
        )
    if np.issubdtype(dtype, np.bool_) and not (array.dtype == np.bool_ or np.isin(array, (0, 1)).all()):
        raise InvalidOptionError(f"voc_eval: {where} must be booleans, got dtype {array.dtype}")
    if np.issubdtype(dtype, np.floating) and not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise InvalidOptionError(f"voc_eval: {where} must be numbers, got dtype {array.dtype}")
    return array.astype(dtype, copy=False)


def voc_eval(
    detections: Sequence[Mapping[str, Tensor]],
    annotations: Sequence[Mapping[str, Tensor]],
    *,
    iou: float = 0.5,
    use_07_metric: bool = False,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """VOC average precision per class and their mean.

    Args:
        detections: One dict per image: ``"boxes"`` float ``(K, 4)`` xyxy, ``"scores"`` float ``(K,)``,
            ``"labels"`` int ``(K,)`` (the output format of ``model.predict``).
        annotations: One dict per image, same order and coordinates: ``"boxes"`` float ``(M, 4)`` xyxy,
            ``"labels"`` int ``(M,)``, optional ``"difficult"`` bool ``(M,)`` (all ``False`` if absent).
        iou: Matching threshold (a detection matches when IoU is strictly greater).
        use_07_metric: 11-point AP (VOC 2007 test) instead of the all-point area.
        num_classes: If given, labels must lie in ``[0, num_classes)``; otherwise classes are those seen.

    Returns:
        A dict with:

        - ``"map"``: mean of the per-class APs over the classes that have at least one non-difficult
            ground-truth box (classes absent from the ground truth are excluded from the mean, as in the devkit
            where their AP is undefined; their detections are simply unused). ``nan`` when no class has ground
            truth.
        - ``"ap"``: ``{class_index: AP}`` for those classes (a class with no detections has AP 0).
        - ``"recall"``: ``{class_index: recall at the lowest score}`` for the same classes.
        - ``"num_gt"``: ``{class_index: number of non-difficult ground-truth boxes}`` for the same classes.
        - ``"absent"``: sorted class indices that have detections or difficult-only ground truth but no
            non-difficult ground truth.

    Raises:
        ValueError: different numbers of images, a missing ``boxes`` / ``scores`` / ``labels`` entry, boxes not of
            shape ``(K, 4)``, labels that are not integers, mismatched per-image lengths, labels out of range,
            non-finite scores or boxes (the message names the image index and the entry).
    """
    if len(detections) != len(annotations):
        raise InvalidOptionError(
            f"voc_eval: {len(detections)} detection entries for {len(annotations)} annotated images"
        )
    if not 0.0 <= iou < 1.0:
        raise InvalidOptionError(f"voc_eval: iou must be in [0, 1), got {iou}")

    # Per class: detections (image, score, box) and per-image ground truth.
    det_img: dict[int, list[np.ndarray]] = {}
    det_score: dict[int, list[np.ndarray]] = {}
    det_box: dict[int, list[np.ndarray]] = {}
    gt: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    num_gt: dict[int, int] = {}
    seen: set[int] = set()

    def check_labels(labels: np.ndarray, where: str) -> None:
        if labels.size and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
            bound = "num_classes" if num_classes is None else num_classes
            raise InvalidOptionError(
                f"voc_eval: {where} has labels outside [0, {bound}): {sorted(set(labels.tolist()))}"
            )

    for i, (det, ann) in enumerate(zip(detections, annotations, strict=True)):
        where = f"annotation {i}"
        g_boxes = _numpy(_field(ann, "boxes", where), (4,), np.float64, f"{where} 'boxes'")
        g_labels = _numpy(_field(ann, "labels", where), (), np.int64, f"{where} 'labels'")
        raw_difficult = ann.get("difficult")
        g_diff = (
            np.zeros(len(g_labels), dtype=bool)
            if raw_difficult is None
            else _numpy(raw_difficult, (), np.bool_, f"{where} 'difficult'")
        )
        if not (len(g_boxes) == len(g_labels) == len(g_diff)):
            raise InvalidOptionError(
                f"voc_eval: annotation {i} has {len(g_boxes)} boxes, {len(g_labels)} labels, "
                f"{len(g_diff)} difficult flags"
            )
        if not np.isfinite(g_boxes).all():
            raise InvalidOptionError(f"voc_eval: annotation {i} has non-finite boxes")
        check_labels(g_labels, f"annotation {i}")
        gt.append((g_boxes, g_labels, g_diff))
        for c in np.unique(g_labels).tolist():
            seen.add(int(c))
            num_gt[int(c)] = num_gt.get(int(c), 0) + int(((g_labels == c) & ~g_diff).sum())

        where = f"detections {i}"
        d_boxes = _numpy(_field(det, "boxes", where), (4,), np.float64, f"{where} 'boxes'")
        d_scores = _numpy(_field(det, "scores", where), (), np.float64, f"{where} 'scores'")
        d_labels = _numpy(_field(det, "labels", where), (), np.int64, f"{where} 'labels'")
        if not (len(d_boxes) == len(d_scores) == len(d_labels)):
            raise InvalidOptionError(
                f"voc_eval: detections {i} has {len(d_boxes)} boxes, {len(d_scores)} scores, {len(d_labels)} labels"
            )
        if not (np.isfinite(d_boxes).all() and np.isfinite(d_scores).all()):
            raise InvalidOptionError(f"voc_eval: detections {i} has non-finite boxes or scores")
        check_labels(d_labels, f"detections {i}")
        for c in np.unique(d_labels).tolist():
            keep = d_labels == c
            seen.add(int(c))
            det_img.setdefault(int(c), []).append(np.full(int(keep.sum()), i, dtype=np.int64))
            det_score.setdefault(int(c), []).append(d_scores[keep])
            det_box.setdefault(int(c), []).append(d_boxes[keep])

    ap: dict[int, float] = {}
    recall_at_end: dict[int, float] = {}
    evaluated = sorted(c for c in seen if num_gt.get(c, 0) > 0)
    for c in evaluated:
        if c not in det_score:
            ap[c] = 0.0
            recall_at_end[c] = 0.0
            continue
        images = np.concatenate(det_img[c])
        scores = np.concatenate(det_score[c])
        boxes = np.concatenate(det_box[c])
        order = np.argsort(-scores, kind="stable")
        images, boxes = images[order], boxes[order]
        # Per image: the class's GT boxes, their difficult flags and whether each was matched already.
        per_image: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for k, (img, box) in enumerate(zip(images.tolist(), boxes, strict=True)):
            if img not in per_image:
                g_boxes, g_labels, g_diff = gt[img]
                mine = g_labels == c
                per_image[img] = (g_boxes[mine], g_diff[mine], np.zeros(int(mine.sum()), dtype=bool))
            g_boxes, g_diff, used = per_image[img]
            if len(g_boxes) == 0:
                fp[k] = 1
                continue
            overlaps = _iou_matrix(box[None], g_boxes)[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] > iou:
                if g_diff[best]:
                    continue
                if not used[best]:
                    tp[k] = 1
                    used[best] = True
                else:
                    fp[k] = 1
            else:
                fp[k] = 1
        tp_cum = np.cumsum(tp)
        fp_cum = np.cumsum(fp)
        recall = tp_cum / num_gt[c]
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        ap[c] = average_precision(recall, precision, use_07_metric=use_07_metric)
        recall_at_end[c] = float(recall[-1]) if recall.size else 0.0

    absent = sorted(c for c in seen if num_gt.get(c, 0) == 0)
    if ap:
        mean_ap = float(np.mean(list(ap.values())))
    else:
        logger.warning("voc_eval: no class has non-difficult ground truth; mAP is undefined (nan)")
        mean_ap = math.nan
    return {
        "map": mean_ap,
        "ap": ap,
        "recall": recall_at_end,
        "num_gt": {c: num_gt[c] for c in evaluated},
        "absent": absent,
    }
