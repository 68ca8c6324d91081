"""The channel-wise term on a pruned YOLO's neck outputs: the teacher-channel map of its head inputs and the term."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.libraries, pytest.mark.slow]
pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402

from grouppruner import UsageError  # noqa: E402
from grouppruner.distill import channel_wise_distillation  # noqa: E402
from grouppruner.integrations import ultralytics as gpu  # noqa: E402
from grouppruner.integrations.ultralytics.distill import (  # noqa: E402
    DistillCriterion,
    HeadDistillLoss,
    head_feature_channels,
    raw_outputs,
)

IMGSZ = 64


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = YOLO("yolov8n.yaml").model.eval()
    student = copy.deepcopy(teacher)
    gpu.prune(student, target_macs=0.5, imgsz=IMGSZ)
    return teacher, student.eval()


def test_head_inputs_map_to_teacher_channels_and_the_term_uses_them() -> None:
    teacher, student = _pair()
    index = head_feature_channels(student, imgsz=IMGSZ)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    t_feats = raw_outputs(teacher(x))["feats"]
    s_feats = raw_outputs(student(x))["feats"]
    assert [i.numel() for i in index] == [f.shape[1] for f in s_feats]
    assert any(i.numel() < f.shape[1] for i, f in zip(index, t_feats, strict=True))  # pruned, not the identity
    assert all(bool((i[1:] > i[:-1]).all()) and int(i.max()) < f.shape[1] for i, f in zip(index, t_feats, strict=True))
    terms = HeadDistillLoss(16, attention=0.0, output=0.0, channel=2.0, channel_index=index)
    value = terms(student(x), teacher(x))
    expected = sum(
        channel_wise_distillation(s, t[:, i], normalize=True) for s, t, i in zip(s_feats, t_feats, index, strict=True)
    )
    torch.testing.assert_close(value["att"], 2.0 * expected)
    assert float(value["kd"]) == 0.0
    identity = HeadDistillLoss(16, attention=0.0, output=0.0, channel=1.0)
    identity.channel_index = [torch.arange(f.shape[1]) for f in t_feats]
    with torch.no_grad():
        assert float(identity(teacher(x), teacher(x))["att"]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(UsageError, match="channel_index"):
        HeadDistillLoss(16, channel=1.0)(student(x), teacher(x))
    with pytest.raises(ValueError, match="channel=-1"):
        HeadDistillLoss(16, channel=-1.0)


def test_criterion_with_the_channel_term_trains_the_student_only(tmp_path: Path) -> None:
    from ultralytics.cfg import get_cfg

    teacher, student = _pair()
    student.train()
    student.args = get_cfg()
    base = student.init_criterion()
    terms = HeadDistillLoss(
        16, attention=0.0, output=0.0, channel=1.0, channel_index=head_feature_channels(student, imgsz=IMGSZ)
    )
    criterion = DistillCriterion(base, teacher, terms)
    batch = {
        "img": torch.rand(2, 3, IMGSZ, IMGSZ),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.4, 0.2, 0.2]]),
    }
    loss, items = criterion(student(batch["img"]), batch)
    assert float(items["att"]) > 0
    loss.sum().backward()
    assert student.model[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    teacher_file = tmp_path / "teacher.pt"
    teacher_file.write_bytes(b"")
    assert gpu.Distillation(teacher_file, channel=0.5).channel == 0.5
    with pytest.raises(ValueError, match="channel"):
        gpu.Distillation(teacher_file, channel=-1.0)


def test_compress_with_the_channel_term(tmp_path: Path) -> None:
    """compress(distill_channel=...) inside the real trainer: the term is in the loss and its gradient measured."""
    from grouppruner.cli import build_parser

    argv = ["yolo", "--model", "m.pt", "--data", "d.yaml", "--target-macs", "0.5", "--out", "o"]
    assert build_parser().parse_args(argv).distill_channel == 0.0
    assert build_parser().parse_args([*argv, "--distill-channel", "0.05"]).distill_channel == 0.05
    train = {"imgsz": IMGSZ, "batch": 8, "workers": 0, "plots": False, "device": "cpu", "amp": False, "verbose": False}
    data = gpu.make_synthetic_yolo(tmp_path / "data", 16, image_size=IMGSZ)
    torch.manual_seed(0)
    YOLO("yolov8n.yaml").train(data=str(data), epochs=1, project=str(tmp_path), name="dense", exist_ok=True, **train)
    weights = tmp_path / "dense" / "weights" / "last.pt"
    out = tmp_path / "run"
    result = gpu.compress(
        YOLO(str(weights)),
        data=data,
        out=out,
        target_macs=0.5,
        sparse_epochs=1,
        recover_epochs=2,
        finetune_epochs=1,
        distill_channel=0.05,
        **train,
    )
    assert json.loads((out / "results.json").read_text())["options"]["distill_channel"] == 0.05
    assert "att" in (out / "recovered" / "results.csv").read_text().splitlines()[0]
    assert result.stages[-1].extra["gradient_ratio"]["att"] > 0  # the channel term alone pulls on the student
