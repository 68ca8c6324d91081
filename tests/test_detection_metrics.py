"""voc_eval against hand-computed VOC average precisions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grouppruner.detection import voc_eval
from grouppruner.detection.metrics import average_precision


def _det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _gt(boxes: list[list[float]], labels: list[int], difficult: list[bool] | None = None) -> dict[str, torch.Tensor]:
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return out


A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 40.0, 40.0]
C = [50.0, 0.0, 60.0, 30.0]


def test_duplicate_is_false_positive_all_point_and_11_point() -> None:
    # Sorted: A (TP), A again (duplicate -> FP), B (TP). Recall .5 .5 1, precision 1 .5 2/3.
    dets = [_det([A, [0.5, 0.0, 10.5, 10.0], B], [0.9, 0.8, 0.7], [0, 0, 0])]
    gts = [_gt([A, B], [0, 0])]
    res = voc_eval(dets, gts)
    # All points: 0.5 * 1 + 0.5 * max(2/3) = 5/6.
    assert res["ap"] == {0: pytest.approx(5 / 6)}
    assert res["map"] == pytest.approx(5 / 6)
    assert res["recall"][0] == pytest.approx(1.0) and res["num_gt"] == {0: 2}
    # 11 points: t = 0 .. 0.5 -> 1, t = 0.6 .. 1.0 -> 2/3.
    res07 = voc_eval(dets, gts, use_07_metric=True)
    assert res07["map"] == pytest.approx((6 * 1.0 + 5 * (2 / 3)) / 11)


def test_difficult_objects_are_ignored() -> None:
    # GT: A normal, B difficult, C normal. Detections: on B (ignored), on A (TP). Recall 1/2 at precision 1.
    gts = [_gt([A, B, C], [0, 0, 0], [False, True, False])]
    dets = [_det([B, A], [0.9, 0.8], [0, 0])]
    res = voc_eval(dets, gts)
    assert res["ap"][0] == pytest.approx(0.5) and res["num_gt"] == {0: 2}
    # The same boxes without the difficult flag: B counts, 2 of 3 found at precision 1.
    res_plain = voc_eval(dets, [_gt([A, B, C], [0, 0, 0])])
    assert res_plain["ap"][0] == pytest.approx(2 / 3)
    # An undetected difficult object does not cost recall.
    assert voc_eval([_det([A], [0.5], [0])], [_gt([A, B], [0, 0], [False, True])])["map"] == pytest.approx(1.0)
    # Two detections on one difficult box are both ignored, not a duplicate FP.
    res_dd = voc_eval([_det([B, B, A], [0.9, 0.8, 0.1], [0, 0, 0])], [_gt([A, B], [0, 0], [False, True])])
    assert res_dd["map"] == pytest.approx(1.0)
    # A difficult box is ignored only when matched (IoU > iou): a weak overlap with it (IoU 0.25) is a FP.
    res_weak = voc_eval([_det([[20.0, 20.0, 30.0, 30.0], A], [0.9, 0.8], [0, 0])], [_gt([A, B], [0, 0], [False, True])])
    assert res_weak["map"] == pytest.approx(0.5)


def test_no_detections_and_absent_class() -> None:
    gts = [_gt([A], [0]), _gt([B], [1])]
    res = voc_eval([_det([], [], []), _det([], [], [])], gts)
    assert res["ap"] == {0: 0.0, 1: 0.0} and res["map"] == 0.0
    # Class 2 has detections but no ground truth: excluded from the mean, reported as absent.
    dets = [_det([A, C], [0.9, 0.95], [0, 2]), _det([], [], [])]
    res = voc_eval(dets, gts)
    assert set(res["ap"]) == {0, 1} and res["absent"] == [2]
    assert res["map"] == pytest.approx((1.0 + 0.0) / 2)
    # A class whose only ground truth is difficult is absent too.
    res = voc_eval([_det([A], [0.5], [0])], [_gt([A, B], [0, 3], [False, True])])
    assert res["ap"] == {0: pytest.approx(1.0)} and res["absent"] == [3]
    # No ground truth at all: mAP undefined.
    assert math.isnan(voc_eval([_det([A], [0.5], [0])], [_gt([], [])])["map"])


def test_matching_is_global_by_score_and_iou_is_strict() -> None:
    # Image 0: a low-score FP; image 1: a high-score TP. Global order TP, FP -> AP 1 although image 0 comes first.
    dets = [_det([B], [0.2], [0]), _det([A], [0.9], [0])]
    gts = [_gt([C], [0]), _gt([A], [0])]
    res = voc_eval(dets, gts)
    # Recall 0.5 after the TP (precision 1), the FP adds no recall: AP = 0.5.
    assert res["ap"][0] == pytest.approx(0.5)
    # Reversed scores: FP first, then TP at precision 1/2 -> AP 0.25.
    dets_rev = [_det([B], [0.9], [0]), _det([A], [0.2], [0])]
    assert voc_eval(dets_rev, gts)["ap"][0] == pytest.approx(0.25)
    # IoU exactly 0.5 is not a match; 100/190 is.
    gt = [_gt([[0.0, 0.0, 10.0, 10.0]], [0])]
    assert voc_eval([_det([[0.0, 0.0, 10.0, 20.0]], [1.0], [0])], gt)["map"] == 0.0
    assert voc_eval([_det([[0.0, 0.0, 10.0, 19.0]], [1.0], [0])], gt)["map"] == pytest.approx(1.0)
    assert voc_eval([_det([[0.0, 0.0, 10.0, 19.0]], [1.0], [0])], gt, iou=0.6)["map"] == 0.0
    # A detection of the wrong class is a false positive of its own class, not a match.
    res = voc_eval([_det([A], [1.0], [1])], [_gt([A, B], [0, 1])])
    assert res["ap"] == {0: 0.0, 1: 0.0}


def test_average_precision_curves() -> None:
    # A perfect ranking has AP 1 under both interpolations; a curve with a dip is interpolated upwards.
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0]), use_07_metric=True) == pytest.approx(1.0)
    rec = np.array([0.25, 0.25, 0.5, 0.75])
    prec = np.array([1.0, 0.5, 2 / 3, 0.75])
    assert average_precision(rec, prec) == pytest.approx(0.25 * 1.0 + 0.5 * 0.75)
    # 11-point: t in {0, .1, .2} -> 1; {.3, .4, .5, .6, .7} -> .75; {.8, .9, 1} -> 0.
    assert average_precision(rec, prec, use_07_metric=True) == pytest.approx((3 * 1.0 + 5 * 0.75) / 11)
    assert average_precision(np.array([]), np.array([])) == 0.0


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="1 detection entries for 2"):
        voc_eval([_det([A], [0.5], [0])], [_gt([A], [0]), _gt([A], [0])])
    with pytest.raises(ValueError, match="labels outside"):
        voc_eval([_det([A], [0.5], [5])], [_gt([A], [0])], num_classes=3)
    with pytest.raises(ValueError, match="non-finite"):
        voc_eval([_det([A], [float("nan")], [0])], [_gt([A], [0])])
    with pytest.raises(ValueError, match="2 boxes, 1 labels"):
        voc_eval([_det([], [], [])], [{"boxes": torch.zeros(2, 4), "labels": torch.zeros(1, dtype=torch.int64)}])


def test_malformed_entries_are_clear_errors() -> None:
    gt = [_gt([A], [0])]
    # Boxes of 5 numbers per row used to be reshaped silently into rows of 4.
    wrong = _det([A], [0.5], [0])
    wrong["boxes"] = torch.zeros(4, 5)
    wrong["scores"], wrong["labels"] = torch.zeros(4), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"detections 0 'boxes' must have shape \(K, 4\), got \(4, 5\)"):
        voc_eval([wrong], gt)
    flat = _gt([A], [0])
    flat["boxes"] = torch.tensor(A)  # (4,) instead of (1, 4)
    with pytest.raises(ValueError, match=r"annotation 0 'boxes' must have shape \(K, 4\), got \(4,\)"):
        voc_eval([_det([A], [0.5], [0])], [flat])
    no_scores = {"boxes": torch.tensor([A]), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match=r"detections 0 has no 'scores' entry \(it has \['boxes', 'labels'\]\)"):
        voc_eval([no_scores], gt)
    float_labels = _det([A], [0.5], [0])
    float_labels["labels"] = torch.tensor([0.7])
    with pytest.raises(ValueError, match=r"detections 0 'labels' must be integer class indices, got dtype float32"):
        voc_eval([float_labels], gt)
    with pytest.raises(ValueError, match="annotation 0 'labels' must be integer"):
        voc_eval([_det([A], [0.5], [0])], [{"boxes": torch.tensor([A]), "labels": torch.tensor([1.0])}])
