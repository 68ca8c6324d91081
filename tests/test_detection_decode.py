"""Decoding of head maps and class-aware NMS (against a brute-force reference)."""

import math

import pytest
import torch

from grouppruner.detection.decode import DEFAULT_ANCHORS, batched_nms, box_iou, decode, split_head_map

ANCHORS = torch.tensor([[[10.0, 20.0], [20.0, 10.0], [16.0, 16.0]]] * 3) * torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1)


# Tiny models gain nothing from a second intra-op thread.
pytestmark = pytest.mark.usefixtures("one_thread")


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> list[int]:
    """Textbook greedy NMS, one pair at a time, in plain Python."""

    def pair_iou(a: list[float], b: list[float]) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(int(labels[i]) != int(labels[j]) or pair_iou(boxes[i].tolist(), boxes[j].tolist()) <= iou for j in kept):
            kept.append(i)
    return kept


def random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return torch.cat([xy, xy + wh], dim=1), scores, labels


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_batched_nms_matches_bruteforce(seed, iou):
    boxes, scores, labels = random_boxes(150, seed)
    expected = reference_nms(boxes, scores, labels, iou)
    assert batched_nms(boxes, scores, labels, iou).tolist() == expected
    # block size only changes how the work is split, never the result
    assert batched_nms(boxes, scores, labels, iou, block=7).tolist() == expected


def test_batched_nms_long_suppression_chain():
    # box i overlaps only its neighbours (IoU 0.25): greedy keeps every second box along the chain
    boxes = torch.tensor([[6.0 * i, 0.0, 6.0 * i + 10, 10.0] for i in range(40)])
    scores = torch.linspace(1.0, 0.1, 40)
    labels = torch.zeros(40, dtype=torch.long)
    expected = list(range(0, 40, 2))
    assert reference_nms(boxes, scores, labels, 0.2) == expected
    assert batched_nms(boxes, scores, labels, 0.2).tolist() == expected
    assert batched_nms(boxes, scores, labels, 0.2, block=16).tolist() == expected


def test_batched_nms_ties_and_duplicates():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3 + [[0.0, 0, 10, 10]])
    scores = torch.tensor([0.5, 0.9, 0.9, 0.2])
    labels = torch.tensor([0, 0, 0, 1])
    # equal scores: lower index first; other class survives
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [1, 3]


def test_batched_nms_class_aware_and_empty():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11]])
    scores = torch.tensor([0.9, 0.8])
    assert batched_nms(boxes, scores, torch.tensor([0, 0]), 0.5).tolist() == [0]
    assert batched_nms(boxes, scores, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_batched_nms_rejects_bad_shapes():
    with pytest.raises(ValueError, match="boxes"):
        batched_nms(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="scores"):
        batched_nms(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3, dtype=torch.long), 0.5)


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [0.0, 0, 2, 2], [5.0, 5, 6, 6], [0.0, 0, 0, 0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0, 0.0]]))


def test_split_head_map_layout():
    out = torch.arange(2 * 3 * 7 * 4 * 5, dtype=torch.float32).view(2, 21, 4, 5)
    p = split_head_map(out)
    assert p.shape == (2, 3, 4, 5, 7)
    # anchor a, channel c of the prediction is raw channel a * 7 + c
    assert p[1, 2, 3, 4, 6] == out[1, 2 * 7 + 6, 3, 4]
    with pytest.raises(ValueError, match="anchors"):
        split_head_map(torch.zeros(1, 20, 2, 2))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_decode_single_prediction_by_hand():
    num_classes = 2
    # 64x64 input: maps 8x8, 4x4, 2x2; all logits very negative except one anchor in one cell
    outputs = [torch.full((1, 3 * (5 + num_classes), 64 // s, 64 // s), -20.0) for s in (8, 16, 32)]
    raw = split_head_map(outputs[1])  # stride 16, view into outputs[1]
    cell_y, cell_x, anchor = 2, 2, 1
    raw[0, anchor, cell_y, cell_x, :] = torch.tensor(
        [_logit(0.25), _logit(0.75), _logit(0.5), _logit(0.25), _logit(0.9), _logit(0.1), _logit(0.8)]
    )
    (det,) = decode(outputs, ANCHORS, (8, 16, 32), conf=0.5)
    assert det["boxes"].shape == (1, 4)
    cx = (0.25 * 2 - 0.5 + cell_x) * 16
    cy = (0.75 * 2 - 0.5 + cell_y) * 16
    aw, ah = ANCHORS[1, anchor].tolist()
    w, h = (0.5 * 2) ** 2 * aw, (0.25 * 2) ** 2 * ah
    expected = torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])
    assert torch.allclose(det["boxes"], expected, atol=1e-4)
    assert torch.allclose(det["scores"], torch.tensor([0.9 * 0.8]), atol=1e-5)
    assert det["labels"].tolist() == [1] and det["labels"].dtype == torch.int64


def test_decode_shapes_filter_sort_clip():
    torch.manual_seed(3)
    outputs = [torch.randn(2, 3 * 9, 96 // s, 64 // s) for s in (8, 16, 32)]
    candidates = 3 * (12 * 8 + 6 * 4 + 3 * 2)
    dets = decode(outputs, ANCHORS, (8, 16, 32), conf=0.0)
    assert len(dets) == 2
    for det in dets:
        assert det["boxes"].shape == (candidates, 4)
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
        assert bool(((det["labels"] >= 0) & (det["labels"] < 4)).all())
        assert bool((det["boxes"][:, [0, 2]] <= 64).all() and (det["boxes"][:, [1, 3]] <= 96).all())
        assert bool((det["boxes"] >= 0).all())
    filtered = decode(outputs, ANCHORS, (8, 16, 32), conf=0.3, max_candidates=5)
    for det, full in zip(filtered, dets, strict=True):
        n_above = int((full["scores"] >= 0.3).sum())
        assert det["scores"].shape[0] == min(5, n_above)
        assert torch.equal(det["scores"], full["scores"][: det["scores"].shape[0]])


def test_decode_defaults_to_cfg_anchors():
    outputs = [torch.randn(1, 3 * 7, 416 // s, 416 // s) for s in (8, 16, 32)]
    default = decode(outputs, conf=0.0)[0]
    explicit = decode(outputs, torch.tensor(DEFAULT_ANCHORS), (8, 16, 32), conf=0.0)[0]
    assert all(torch.equal(default[key], explicit[key]) for key in ("boxes", "scores", "labels"))
    other = decode(outputs, torch.tensor(DEFAULT_ANCHORS) * 0.5, (8, 16, 32), conf=0.0)[0]
    assert not torch.equal(default["boxes"], other["boxes"])


def test_decode_rejects_mismatched_inputs():
    outputs = [torch.zeros(1, 21, 2, 2)] * 2
    with pytest.raises(ValueError, match="head maps"):
        decode(outputs, ANCHORS, (8, 16, 32))
