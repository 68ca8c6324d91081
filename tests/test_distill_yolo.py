"""Distillation on the reference detector: YoloOutputDistill and AttentionDistiller on YOLOv4."""

from __future__ import annotations

import math

import pytest
import torch

import grouppruner as gp
import grouppruner.detection
from grouppruner.detection import YoloOutputDistill, box_foreground, boxes_to_grid_mask, yolov4


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_output_distill_matches_hand_computation_on_toy_tensor() -> None:
    # One scale, stride 8, one anchor 16x16, two classes: 7 channels; grid 2 rows x 3 columns (input 16 x 24).
    g = torch.Generator().manual_seed(3)
    t_map = torch.randn(1, 7, 2, 3, generator=g)
    s_map = torch.randn(1, 7, 2, 3, generator=g)
    kd = YoloOutputDistill(
        2, anchors=[[[16.0, 16.0]]], strides=(8,), temperature=3.0, cls_weight=0.5, obj_weight=2.0, box_weight=0.25
    )
    # Centre (20, 4) px = (2.5, 0.5) cells: column 2, row 0; size 12 x 8 px matches the anchor (ratio < 4).
    targets = [{"boxes": torch.tensor([[14.0, 0.0, 26.0, 8.0]]), "labels": torch.tensor([1])}]
    total, parts = kd([s_map], [t_map], targets)

    t, s, temp = t_map[0].tolist(), s_map[0].tolist(), 3.0
    obj = 0.0
    for i in range(2):
        for j in range(3):
            p, q = _sig(t[4][i][j] / temp), _sig(s[4][i][j] / temp)
            obj += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    obj = obj / 6 * temp**2

    def softmax(values: list[float]) -> list[float]:
        exps = [math.exp(v / temp) for v in values]
        return [e / sum(exps) for e in exps]

    row, col = 0, 2
    pt = softmax([t[5][row][col], t[6][row][col]])
    ps = softmax([s[5][row][col], s[6][row][col]])
    cls = sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True)) * temp**2

    def box(m: list[list[list[float]]]) -> list[float]:
        anchor_cells = 16.0 / 8.0
        return [
            2 * _sig(m[0][row][col]) - 0.5,
            2 * _sig(m[1][row][col]) - 0.5,
            (2 * _sig(m[2][row][col])) ** 2 * anchor_cells,
            (2 * _sig(m[3][row][col])) ** 2 * anchor_cells,
        ]

    box_l2 = sum((a - b) ** 2 for a, b in zip(box(s), box(t), strict=True))
    assert parts["obj"].item() == pytest.approx(2.0 * obj, rel=1e-5)
    assert parts["cls"].item() == pytest.approx(0.5 * cls, rel=1e-5)
    assert parts["box"].item() == pytest.approx(0.25 * box_l2, rel=1e-5)
    assert total.item() == pytest.approx(2.0 * obj + 0.5 * cls + 0.25 * box_l2, rel=1e-5)
    # The transposed box lands elsewhere (rows and columns are not swapped): a different value.
    swapped = [{"boxes": torch.tensor([[0.0, 14.0, 8.0, 26.0]]), "labels": torch.tensor([1])}]
    assert kd([s_map], [t_map], swapped)[0].item() != pytest.approx(total.item(), rel=1e-3)


def test_output_distill_zero_for_identical_outputs_and_bad_input() -> None:
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 3 * 25, 8 // s, 12 // s, generator=g) for s in (1, 2, 4)]
    student = [m.clone().requires_grad_(True) for m in maps]
    kd = YoloOutputDistill(
        20, anchors=[[[6, 8], [10, 14], [14, 10]], [[18, 24], [24, 18], [28, 36]], [[36, 30], [48, 48], [60, 56]]]
    )
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 90.0, 60.0]]), "labels": torch.tensor([3, 7])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    total, parts = kd(student, maps, targets)
    assert total.item() == pytest.approx(0.0, abs=1e-7)
    assert all(v.item() == pytest.approx(0.0, abs=1e-7) for v in parts.values())
    total.backward()
    assert all(m.grad is not None and m.grad.abs().max().item() < 1e-7 for m in student)
    # Different outputs: every part is positive and only the student gets gradients.
    other = [m + 0.5 * torch.randn(m.shape, generator=g) for m in maps]
    teacher = [m.clone().requires_grad_(True) for m in other]
    student = [m.clone().requires_grad_(True) for m in maps]
    total, parts = kd(student, teacher, targets)
    assert all(v.item() > 0 for v in parts.values())
    total.backward()
    assert all(m.grad is None for m in teacher) and all(m.grad is not None and m.grad.abs().sum() > 0 for m in student)
    with pytest.raises(ValueError, match="expected 3 head maps"):
        kd(student[:2], teacher[:2], targets)
    with pytest.raises(ValueError, match="must be equal"):
        kd(student, [teacher[0][:, :, :4], *teacher[1:]], targets)
    with pytest.raises(ValueError, match="temperature"):
        YoloOutputDistill(20, temperature=0.0)
    # The public name (imported above from grouppruner.detection, so every test here runs it) is exported.
    assert "YoloOutputDistill" in grouppruner.detection.__all__


def test_attention_and_output_distill_on_yolov4_student() -> None:
    torch.manual_seed(0)
    teacher = yolov4(4, width=0.125, depth=0.34).eval()
    student = yolov4(4, width=0.0625, depth=0.34)  # thinner, same module names
    distiller = gp.AttentionDistiller(teacher, student, teacher.distill_layers, weights=[4, 4, 4, 2, 2, 1, 1, 1, 1])
    output_kd = YoloOutputDistill.from_model(teacher, temperature=3.0)
    images = torch.rand(2, 3, 32, 64)  # non-square
    targets = [
        {"boxes": torch.tensor([[8.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[44.0, 12.0, 62.0, 30.0], [2.0, 2.0, 20.0, 12.0]]), "labels": torch.tensor([0, 3])},
    ]
    outputs = distiller(images)
    strides = {
        "backbone.stage1": 2,
        "backbone.stage2": 4,
        "backbone.stage3": 8,
        "backbone.stage4": 16,
        "backbone.stage5": 32,
        "neck.spp": 32,
        "neck.pan_out8": 8,
        "neck.pan_out16": 16,
        "neck.pan_out32": 32,
    }
    for name, stride in strides.items():
        grid = (32 // stride, 64 // stride)
        assert distiller.student_recorder.grids[name] == grid
        assert distiller.recorded_bytes()[f"student/{name}"] == 2 * grid[0] * grid[1] * 4
    attention, per_layer = distiller.loss(mask=box_foreground([t["boxes"] for t in targets], images.shape[-2:]))
    # The box weighting uses each layer's own stride: recompute one layer by hand.
    name = "neck.pan_out16"
    fg = boxes_to_grid_mask([t["boxes"] for t in targets], (2, 4), 16).flatten(1)
    w = distiller.bg_weight + (distiller.fg_weight - distiller.bg_weight) * fg
    diff = (distiller.teacher_recorder.maps[name] - distiller.student_recorder.maps[name]).square()
    torch.testing.assert_close(per_layer[name], (w * diff).sum() / w.sum())
    out_kd, parts = output_kd(outputs, distiller.last_teacher_output, targets)
    assert set(parts) == {"cls", "obj", "box"} and all(v.item() > 0 for v in parts.values())
    (attention + out_kd).backward()
    assert student.head.p3.weight.grad.abs().sum() > 0 and student.backbone.stem.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
