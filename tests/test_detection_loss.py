"""YoloLoss (CIoU, BCE, multi-anchor assignment) and kmeans_anchors."""

import math

import pytest
import torch

from grouppruner import DataError
from grouppruner.detection import yolov4
from grouppruner.detection.decode import split_head_map
from grouppruner.detection.loss import YoloLoss, ciou, kmeans_anchors

# anchors sized for 64-pixel images
SMALL_ANCHORS = [[[6, 8], [10, 14], [14, 10]], [[18, 24], [24, 18], [28, 36]], [[36, 30], [48, 48], [60, 56]]]


# Tiny models gain nothing from a second intra-op thread.
pytestmark = pytest.mark.usefixtures("one_thread")


def fixed_targets(n: int, num_classes: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(n):
        xy = torch.rand(3, 2, generator=g) * 36
        wh = torch.rand(3, 2, generator=g) * 24 + 6
        targets.append(
            {
                "boxes": torch.cat([xy, (xy + wh).clamp(max=64)], dim=1),
                "labels": torch.randint(0, num_classes, (3,), generator=g),
                "difficult": torch.zeros(3, dtype=torch.bool),
            }
        )
    return targets


def test_ciou_hand_computed():
    same = torch.tensor([[5.0, 5.0, 2.0, 4.0]])
    assert torch.allclose(ciou(same, same), torch.ones(1), atol=1e-6)
    # concentric squares 2x2 and 4x4: IoU 0.25, no centre or aspect penalty
    assert torch.allclose(ciou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[0.0, 0, 4, 4]])), torch.tensor([0.25]))
    # disjoint unit squares with centres 3 apart: IoU 0, rho^2 = 9, enclosing diagonal^2 = 4^2 + 1
    value = ciou(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[3.0, 0, 1, 1]]))
    assert torch.allclose(value, torch.tensor([-9 / 17]), atol=1e-6)
    # aspect term: same centre, 2x2 inside 2x4 -> IoU 0.5, v = 4/pi^2 (atan(0.5) - atan(1))^2
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(1.0)) ** 2
    alpha = v / (v - 0.5 + 1)
    value = ciou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[0.0, 0, 2, 4]]))
    assert torch.allclose(value, torch.tensor([0.5 - alpha * v]), atol=1e-6)


def test_loss_finite_parts_sum_and_gradients():
    torch.manual_seed(0)
    model = yolov4(3, width=0.125, depth=0.34, anchors=SMALL_ANCHORS)
    loss_fn = YoloLoss(3, anchors=model.anchors)
    total, parts = loss_fn(model(torch.rand(2, 3, 64, 64)), fixed_targets(2, 3))
    assert total.dim() == 0 and torch.isfinite(total)
    assert set(parts) == {"box", "obj", "cls"}
    assert all(p.dim() == 0 and float(p) > 0 and not p.requires_grad for p in parts.values())
    assert torch.allclose(total.detach(), sum(parts.values()))
    total.backward()
    grad = model.head.p3.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_loss_without_objects_is_objectness_only():
    loss_fn = YoloLoss(2, anchors=SMALL_ANCHORS)
    outputs = [torch.randn(2, 21, 64 // s, 64 // s) for s in (8, 16, 32)]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    total, parts = loss_fn(outputs, [empty, empty])
    assert float(parts["box"]) == 0.0 and float(parts["cls"]) == 0.0
    assert float(parts["obj"]) > 0 and torch.isfinite(total)


def test_difficult_boxes_are_skipped_unless_asked():
    outputs = [torch.randn(1, 21, 64 // s, 64 // s) for s in (8, 16, 32)]
    hard = {
        "boxes": torch.tensor([[10.0, 10, 30, 30]]),
        "labels": torch.tensor([1]),
        "difficult": torch.tensor([True]),
    }
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    skipping = YoloLoss(2, anchors=SMALL_ANCHORS)
    assert torch.equal(skipping(outputs, [hard])[0], skipping(outputs, [empty])[0])
    using = YoloLoss(2, anchors=SMALL_ANCHORS, use_difficult=True)
    assert float(using(outputs, [hard])[1]["box"]) > 0


def test_multi_anchor_assignment():
    loss_fn = YoloLoss(2, anchors=SMALL_ANCHORS)
    # a 12x12 box centred at (21, 21), i.e. stride-8 cell (2.625, 2.625): right and lower neighbours join
    gt = torch.tensor([[0.0, 1.0, 21.0, 21.0, 12.0, 12.0]])
    b, a, gj, gi, tbox, labels = loss_fn._assign(gt, 0, 8, 8, 8)
    # every stride-8 anchor is within ratio 4 of 12x12 -> 3 anchors x 3 cells
    assert sorted(set(a.tolist())) == [0, 1, 2]
    assert sorted({(j, i) for j, i in zip(gj.tolist(), gi.tolist(), strict=True)}) == [(2, 2), (2, 3), (3, 2)]
    assert b.tolist() == [0] * 9 and labels.tolist() == [1] * 9
    # targets are relative to each cell's corner and lie in the reachable range (-0.5, 1.5)
    assert bool(((tbox[:, :2] > -0.5) & (tbox[:, :2] < 1.5)).all())
    assert torch.allclose(tbox[:, 2:], torch.full((9, 2), 1.5))
    # at stride 32 only anchors within ratio 4 of the box match (36x30 and 48x48: 3x and 4x -> only one)
    _, a32, *_ = loss_fn._assign(gt, 2, 32, 2, 2)
    assert sorted(set(a32.tolist())) == [0]


def test_perfect_prediction_has_near_zero_box_and_class_loss():
    loss_fn = YoloLoss(2, anchors=SMALL_ANCHORS)
    gt = {"boxes": torch.tensor([[15.0, 15.0, 27.0, 27.0]]), "labels": torch.tensor([0])}
    outputs = [torch.full((1, 21, 64 // s, 64 // s), -30.0) for s in (8, 16, 32)]
    # set every assigned position to predict the box exactly: image 0, label 0, centre (21, 21), 12x12
    gt_rows = torch.tensor([[0.0, 0.0, 21.0, 21.0, 12.0, 12.0]])
    for scale, stride in enumerate((8, 16, 32)):
        h = 64 // stride
        b, a, gj, gi, tbox, _ = loss_fn._assign(gt_rows, scale, stride, h, h)
        pred = split_head_map(outputs[scale])
        anchor = torch.tensor(SMALL_ANCHORS[scale], dtype=torch.float32)[a] / stride
        p_xy = (tbox[:, :2] + 0.5) / 2
        p_wh = (tbox[:, 2:] / anchor).sqrt() / 2
        pred[b, a, gj, gi, 0:2] = torch.logit(p_xy)
        pred[b, a, gj, gi, 2:4] = torch.logit(p_wh)
        pred[b, a, gj, gi, 4] = 30.0
        pred[b, a, gj, gi, 5] = 30.0
    _, parts = loss_fn(outputs, [gt])
    assert float(parts["box"]) < 1e-4
    assert float(parts["cls"]) < 1e-4


@pytest.mark.slow
def test_loss_decreases_when_training_tiny_model():
    torch.manual_seed(0)
    model = yolov4(3, width=0.125, depth=0.34, anchors=SMALL_ANCHORS)
    loss_fn = YoloLoss(3, anchors=model.anchors)
    images = torch.rand(4, 3, 64, 64)
    targets = fixed_targets(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        total, _ = loss_fn(model(images), targets)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]


def test_loss_rejects_bad_inputs():
    loss_fn = YoloLoss(2, anchors=SMALL_ANCHORS)
    outputs = [torch.randn(1, 21, 64 // s, 64 // s) for s in (8, 16, 32)]
    with pytest.raises(ValueError, match="targets"):
        loss_fn(outputs, [])
    with pytest.raises(ValueError, match="channels"):
        YoloLoss(3, anchors=SMALL_ANCHORS)(outputs, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="label 5 outside"):
        loss_fn(outputs, [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([5])}])
    with pytest.raises(DataError, match="labels"):
        loss_fn(outputs, [{"boxes": torch.zeros(0, 4)}])
    with pytest.raises(ValueError, match="anchors"):
        YoloLoss(2, anchors=torch.ones(9, 2))


def test_kmeans_anchors_recovers_clusters_and_is_deterministic():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[10.0, 12.0], [40.0, 30.0], [120.0, 150.0]])
    wh = torch.cat([c * (1 + 0.05 * torch.randn(50, 2, generator=g)) for c in centres])
    anchors = kmeans_anchors(wh, k=3, seed=0)
    assert anchors.shape == (3, 2)
    assert torch.allclose(anchors, centres, rtol=0.05)
    assert torch.equal(anchors, kmeans_anchors(wh, k=3, seed=0))
    nine = kmeans_anchors(wh, k=9, seed=4)
    areas = nine.prod(dim=1)
    assert nine.shape == (9, 2) and bool((areas[1:] >= areas[:-1]).all())
    with pytest.raises(ValueError, match="k=9"):
        kmeans_anchors(wh[:5], k=9)
