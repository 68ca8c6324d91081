"""The Ultralytics integration with the real package: prune, save / reload, ONNX, the AMP order, bad inputs.

Models are built from Ultralytics' own yaml files (no download, YOLO_OFFLINE=1); data is generated.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.libraries
pytest.importorskip("ultralytics")
os.environ.setdefault("YOLO_OFFLINE", "1")

from ultralytics import YOLO  # noqa: E402

import grouppruner as gp  # noqa: E402
from grouppruner.integrations import ultralytics as gpu  # noqa: E402
from grouppruner.integrations.ultralytics.checkpoint import meta_of  # noqa: E402
from grouppruner.integrations.ultralytics.checks import check_data  # noqa: E402
from grouppruner.integrations.ultralytics.distill import DistillCriterion, HeadDistillLoss  # noqa: E402

IMGSZ = 64


def _head_out_convs(model: nn.Module) -> dict[str, int]:
    """Output channels of every head branch's last conv (box, class, mask, keypoint outputs)."""
    head = model.model[-1]
    out = {}
    for attr in ("cv2", "cv3", "cv4", "cv5"):
        branches = getattr(head, attr, None)
        if isinstance(branches, nn.ModuleList):
            for i, branch in enumerate(branches):
                out[f"{attr}.{i}"] = branch[-1].out_channels
    if hasattr(head, "proto"):
        out["proto"] = head.proto.cv3.conv.out_channels
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpu.make_synthetic_yolo(tmp_path_factory.mktemp("yolo-data"), 24, image_size=IMGSZ)


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolov8n-seg.yaml", "yolov8n-pose.yaml"])
def test_prune_and_reload_round_trip(cfg: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    yolo = YOLO(cfg)
    model = yolo.model.eval()
    heads = _head_out_convs(model)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    before_shape = [t.shape for t in _tensors(model(x)[0])]
    plan = gpu.prune(yolo, target_macs=0.5, imgsz=IMGSZ)
    assert abs(plan.macs_ratio - 0.5) < 0.01
    assert plan.params_ratio < 0.9
    # the head's outputs keep their channels; the model keeps its output shapes
    assert _head_out_convs(model) == heads
    expected = [t.detach() for t in _tensors(model.eval()(x)[0])]
    assert [t.shape for t in expected] == before_shape
    # DFL stays the fixed, frozen conv
    dfl = getattr(model.model[-1], "dfl", None)
    if isinstance(dfl, nn.Module) and any(True for _ in dfl.parameters()):
        assert torch.equal(dfl.conv.weight.flatten(), torch.arange(dfl.c1, dtype=torch.float32))

    path = gpu.save(yolo, tmp_path / "pruned.pt")
    plain = YOLO(str(path))  # Ultralytics' own loader restores the pruned architecture
    assert gp.pruning.model_fingerprint(plain.model) == gp.pruning.model_fingerprint(model)
    reloaded = gpu.load(path)
    assert gpu.is_pruned(reloaded)
    got = [t.detach() for t in _tensors(reloaded.model.float().eval()(x)[0])]
    for a, b in zip(got, expected, strict=True):
        # the file holds the weights in fp16, as Ultralytics' own checkpoints do
        torch.testing.assert_close(a, b, atol=2e-2 * float(b.abs().max()) + 1e-3, rtol=0)
    meta = meta_of(reloaded.ckpt, path)
    assert meta is not None and len(meta["plans"]) == 1


def _tensors(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    assert isinstance(output, (tuple, list))
    return [t for item in output for t in _tensors(item)]


def test_c2f_split_width_follows_pruning() -> None:
    from ultralytics.nn.modules.block import C2f

    yolo = YOLO("yolov8n.yaml")
    blocks = [m for m in yolo.model.modules() if isinstance(m, C2f)]
    before = [m.c for m in blocks]
    gpu.prune(yolo, target_macs=0.5, imgsz=IMGSZ)
    assert [m.c for m in blocks] != before  # some hidden widths were pruned
    assert all(m.cv1.conv.out_channels == 2 * m.c for m in blocks)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    for m in blocks:  # the exporter's forward_split splits at c: it must agree with chunk(2)
        inputs = torch.rand(1, m.cv1.conv.in_channels, 8, 8)
        torch.testing.assert_close(m.forward_split(inputs), m.forward(inputs))
    assert yolo.model.eval()(x)[0].shape[1] == 84


def test_onnx_export_matches_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    gpu.prune(yolo, target_macs=0.5, imgsz=IMGSZ)
    path = gpu.save(yolo, tmp_path / "pruned.pt")
    reloaded = YOLO(str(path))
    onnx_file = reloaded.export(format="onnx", imgsz=IMGSZ, simplify=False, dynamic=False)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = YOLO(str(path)).model.float().eval()(x)[0]
    assert got.shape == tuple(expected.shape)
    np.testing.assert_allclose(got, expected.detach().numpy(), atol=2e-3 * float(expected.abs().max()))


def test_optimizer_step_applies_l1_to_unscaled_gradients() -> None:
    """gamma moves by exactly lr * (task gradient + s * sign(gamma)) with a GradScaler at scale 2**20."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(-1, 1, 8))
    lr, s = 0.1, 0.01
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)
    sparsity = gp.BNSparsity(model, schedule=s, scaler=scaler)
    trainer = SimpleNamespace(
        scaler=scaler,
        optimizer=optimizer,
        model=model,
        ema=None,
        gradient_hooks=[lambda _: sparsity.step()],
    )
    x = torch.rand(4, 3, 8, 8)
    loss = model(x).pow(2).mean() * 1e-3  # small task gradient: clipping at norm 10 must not trigger
    gamma = model[1].weight.detach().clone()
    scaler.scale(loss).backward()
    task_grad = model[1].weight.grad.detach().clone() / scaler.get_scale()
    gpu.DetectionTrainer.optimizer_step(trainer)  # the real method, on a minimal trainer
    expected = gamma - lr * (task_grad + s * torch.sign(gamma))
    torch.testing.assert_close(model[1].weight.detach(), expected, rtol=1e-5, atol=1e-7)
    assert model[1].weight.grad is None or not model[1].weight.grad.any()  # zeroed after the step


def test_head_distill_terms() -> None:
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    teacher = yolo.model.eval()
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    t_out = teacher(x)
    terms = HeadDistillLoss(16, attention=1.0, output=1.0)
    same = terms(t_out, t_out)
    assert float(same["att"]) == pytest.approx(0.0, abs=1e-7)
    assert float(same["kd"]) == pytest.approx(0.0, abs=1e-5)  # KL divergences: 0 at a perfect match
    # a pruned student with other head weights is further
    student = copy.deepcopy(teacher)
    gpu.prune(student, target_macs=0.5, imgsz=IMGSZ)
    with torch.no_grad():
        for branch in (*student.model[-1].cv2, *student.model[-1].cv3):
            branch[-1].bias.add_(torch.randn_like(branch[-1].bias))  # (a random init's head sees ~0 features)
    s_out = student.eval()(x)
    other = terms(s_out, t_out)
    assert float(other["att"]) > float(same["att"])
    assert float(other["kd"]) > float(same["kd"])
    # gradients reach the student
    student.train()
    preds = student(x)
    value = HeadDistillLoss(16)(preds, t_out)
    (value["att"] + value["kd"]).backward()
    assert student.model[0].conv.weight.grad.abs().sum() > 0


def test_distill_criterion_appends_terms(data: Path) -> None:
    torch.manual_seed(0)
    teacher = YOLO("yolov8n.yaml").model.eval()
    from ultralytics.cfg import get_cfg

    student = copy.deepcopy(teacher).train()
    for module in student.modules():  # batch statistics would make the features differ from the teacher's
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    student.args = get_cfg()  # the trainer's arguments (loss gains), as the trainer sets them
    base = student.init_criterion()
    criterion = DistillCriterion(base, teacher, HeadDistillLoss(16))
    batch = {
        "img": torch.rand(2, 3, IMGSZ, IMGSZ),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.4, 0.2, 0.2]]),
    }
    preds = student(batch["img"])
    loss, items = criterion(preds, batch)
    stock_loss, stock_items = base(preds, batch)
    assert loss.shape[0] == stock_loss.flatten().shape[0] + 2
    torch.testing.assert_close(loss[: stock_loss.numel()], stock_loss.flatten())
    assert set(items) == {*stock_items, "att", "kd"}
    assert float(items["att"]) == pytest.approx(0.0, abs=1e-6)  # same weights: identical attention maps

    # Measured against the stock loss: the same loss, no .grad written, a finite ratio per term.
    balanced = DistillCriterion(
        base,
        teacher,
        HeadDistillLoss(16),
        balance=gp.distill.GradientBalance(student.parameters(), reference="detection", every=1),
    )
    again, _ = balanced(preds, batch)
    torch.testing.assert_close(again, loss)
    assert all(p.grad is None for p in student.parameters())
    ratios = {name: v["ratio"] for name, v in balanced.balance.summary().items()}  # type: ignore[union-attr]
    assert ratios["detection"] == pytest.approx(1.0)
    assert ratios["att"] == pytest.approx(0.0, abs=1e-6) and 0.0 < ratios["kd"] < float("inf")
    # Switched off (the schedule's last epochs): the stock loss with zero terms, and the teacher is not run.
    teacher.forward = None  # type: ignore[assignment, method-assign]
    criterion.active = False
    loss, items = criterion(preds, batch)
    torch.testing.assert_close(loss, torch.cat([stock_loss.flatten(), torch.zeros(2)]))
    assert float(items["kd"]) == 0.0


def test_distillation_is_off_for_the_last_epochs(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")
    callback = gpu.Distillation(teacher, off_epochs=2)
    callback._distilling = SimpleNamespace(active=True)  # type: ignore[assignment]
    seen = []
    for epoch in range(6):
        callback.on_train_epoch_start(SimpleNamespace(epoch=epoch, epochs=6))
        seen.append(callback._distilling.active)  # type: ignore[union-attr]
    assert seen == [True, True, True, True, False, False]
    callback.on_train_epoch_start(SimpleNamespace(epoch=1, epochs=6))  # a resumed run lands on the right side
    assert callback._distilling.active  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="off_epochs"):
        gpu.Distillation(teacher, off_epochs=-1)


def test_distill_off_epochs_must_leave_distillation(data: Path, tmp_path: Path) -> None:
    with pytest.raises(gp.InvalidOptionError, match="distill_off_epochs=4 leaves no distillation epoch of the 4"):
        gpu.compress(
            YOLO("yolov8n.yaml"),
            data=data,
            target_macs=0.5,
            recover_epochs=8,
            finetune_epochs=4,
            distill_output=0.2,
            distill_off_epochs=4,
            out=tmp_path / "run",
        )
    assert not (tmp_path / "run").exists()
    from grouppruner.cli import build_parser
    from grouppruner.integrations.ultralytics.flow import _first_changed

    argv = ["yolo", "--model", "m.pt", "--data", "d.yaml", "--target-macs", "0.5", "--out", "o"]
    args = build_parser().parse_args([*argv, "--distill-off-epochs", "2"])
    assert args.distill_off_epochs == 2
    assert args.distill_attention == args.distill_output == 0.0  # distillation is off by default
    # a run folder written before the option existed: unchanged while it is 0
    assert _first_changed({"recover_epochs": 8}, {"recover_epochs": 8, "distill_off_epochs": 0}) is None
    assert _first_changed({"recover_epochs": 8}, {"recover_epochs": 8, "distill_off_epochs": 2}) == "recovered"


def test_cluttered_data_separates_shape_and_colour(tmp_path: Path) -> None:
    from PIL import Image

    yaml_path = gpu.make_cluttered_yolo(tmp_path / "a", 16, image_size=96, num_classes=8, seed=3)
    gpu.make_cluttered_yolo(tmp_path / "b", 16, image_size=96, num_classes=8, seed=3)
    assert check_data(yaml_path, 8) == yaml_path
    labels = sorted((tmp_path / "a" / "labels").rglob("*.txt"))
    assert len(labels) == 16 and len(list((tmp_path / "a" / "images").rglob("*.png"))) == 16
    rows = np.array([[float(v) for v in line.split()] for f in labels for line in f.read_text().splitlines()])
    assert rows.shape[1] == 5 and set(rows[:, 0].astype(int)) <= set(range(8))
    assert (rows[:, 3:] >= 0.06 - 1e-4).all() and (rows[:, 3:] <= 0.3 + 1e-4).all()  # small objects
    assert (rows[:, 1:3] - rows[:, 3:] / 2 >= -1e-4).all() and (rows[:, 1:3] + rows[:, 3:] / 2 <= 1 + 1e-4).all()
    first = np.asarray(Image.open(tmp_path / "a" / "images" / "train" / "00000.png"))
    same = np.asarray(Image.open(tmp_path / "b" / "images" / "train" / "00000.png"))
    np.testing.assert_array_equal(first, same)  # seeded
    assert "0: rectangle0" in yaml_path.read_text() and "7: cross1" in yaml_path.read_text()
    with pytest.raises(ValueError, match=r"num_classes must be in 1\.\.8"):
        gpu.make_cluttered_yolo(tmp_path / "c", 16, num_classes=9)


# ---------------------------------------------------------------------------------------------- bad inputs


def test_not_an_ultralytics_model() -> None:
    with pytest.raises(gp.OptionTypeError, match="not an Ultralytics YOLO model"):
        gpu.prune(nn.Sequential(nn.Conv2d(3, 8, 3)), target_macs=0.5)


def test_classification_model_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(gp.UsageError, match="classification model"):
        gpu.compress(YOLO("yolov8n-cls.yaml"), data=data, target_macs=0.5, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_data_yaml(tmp_path: Path) -> None:
    with pytest.raises(gp.DataError, match=r"no such data\.yaml"):
        gpu.compress(YOLO("yolov8n.yaml"), data=tmp_path / "nope.yaml", target_macs=0.5, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_data_yaml_with_missing_folder(data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "data.yaml"
    broken.write_text(data.read_text().replace("images/val", "images/missing"))
    with pytest.raises(gp.DataError, match=r"'val' entry 'images/missing'"):
        check_data(broken)
    with pytest.raises(gp.DataError, match="names 2 classes, the model predicts 80"):
        check_data(data, 80)


def test_bad_budget_writes_nothing(data: Path, tmp_path: Path) -> None:
    yolo = YOLO("yolov8n.yaml")
    with pytest.raises(gp.InvalidOptionError, match="exactly one of"):
        gpu.compress(yolo, data=data, out=tmp_path / "run")
    with pytest.raises(gp.InvalidOptionError, match="sets the trainer keywords"):
        gpu.compress(yolo, data=data, target_macs=0.5, epochs=3, out=tmp_path / "run")
    bad = [
        ({"distill_channel": -1.0}, "distill_channel must be a number >= 0, got -1.0"),
        ({"distill_attention": "0.1"}, "distill_attention must be a number >= 0, got '0.1'"),
        ({"sparsity": float("nan")}, "sparsity must be a number >= 0, got nan"),
        ({"distill_temperature": 0}, "distill_temperature must be a number > 0, got 0"),
    ]
    for options, message in bad:  # refused before the sparse training, not when the recovery builds its loss
        with pytest.raises(gp.InvalidOptionError, match=re.escape(message)):
            gpu.compress(yolo, data=data, target_macs=0.5, out=tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_unmappable_module_names_module_and_op(tmp_path: Path) -> None:
    class Functional(nn.Module):  # a layer computing with a bare parameter: the graph cannot map it
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(channels, channels, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.nn.functional.conv2d(x, self.weight)

    yolo = YOLO("yolov8n.yaml")
    layer = yolo.model.model[1]
    wrapped = nn.Sequential(layer, Functional(32))
    wrapped.f, wrapped.i, wrapped.type = layer.f, layer.i, "Functional"  # what parse_model sets on every layer
    yolo.model.model[1] = wrapped
    with pytest.raises(gp.GraphError, match=r"Convolution.*model\.1\.1"):
        gpu.prune(yolo, target_macs=0.5, imgsz=IMGSZ)


def test_missing_extra_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import ultralytics -> ImportError
    with pytest.raises(gp.MissingExtraError, match=r'pip install "grouppruner\[ultralytics\]"') as info:
        gpu.require_ultralytics()
    assert "\n" not in str(info.value)


def test_unrestorable_checkpoint(tmp_path: Path) -> None:
    yolo = YOLO("yolov8n.yaml")
    gpu.prune(yolo, target_macs=0.5, imgsz=IMGSZ)
    path = gpu.save(yolo, tmp_path / "pruned.pt")
    ckpt = torch.load(path, weights_only=False)
    meta = json.loads(ckpt["grouppruner"])
    meta["pruned_fingerprint"] = "0" * 16  # the record no longer matches the module in the file
    ckpt["grouppruner"] = json.dumps(meta)
    torch.save(ckpt, path)
    with pytest.raises(gp.CheckpointError, match="pruned architecture cannot be restored"):
        gpu.load(path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        gpu.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(gp.CheckpointError, match=r"junk\.pt"):
        gpu.load(tmp_path / "junk.pt")


def test_prune_puts_kept_widths_on_the_runtimes_block() -> None:
    from ultralytics.nn.tasks import DetectionModel

    from grouppruner.runtime import Runtime

    model = DetectionModel("yolov8n.yaml", verbose=False)
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    plan = gpu.prune(model, target_macs=0.6, imgsz=64, runtime=Runtime("onnxruntime", block=16))
    assert plan.runtime == "onnxruntime" and plan.round_to == 16
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    # split-free (the default with onnxruntime): every C2f's cv1 is two convs, one per half, each on the block too
    halves = {n: w for n, w in after.items() if ".cv1a." in n or ".cv1b." in n}
    assert len(halves) == 16 and all(w % 16 == 0 for w in halves.values()), halves
    before = {n: w for n, w in before.items() if n in after}
    assert any(after[n] < before[n] for n in before)
    assert all(after[n] % 16 == 0 or after[n] == before[n] for n in before), after
