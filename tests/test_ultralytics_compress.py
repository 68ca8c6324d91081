"""The stages inside the real Ultralytics trainer on the CPU: 1-2 epochs each on generated 64-pixel data.

compress() end to end (detect and segment), the run folder's skip / rerun semantics, resume after kill -9, and
``.train()`` of a pruned checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.libraries, pytest.mark.slow]
pytest.importorskip("ultralytics")
os.environ.setdefault("YOLO_OFFLINE", "1")

from ultralytics import YOLO  # noqa: E402

from grouppruner.integrations import ultralytics as gpu  # noqa: E402
from grouppruner.pruning import model_fingerprint  # noqa: E402

IMGSZ = 64
TRAIN = {"imgsz": IMGSZ, "batch": 8, "workers": 0, "plots": False, "device": "cpu", "amp": False, "verbose": False}


def _trained(cfg: str, data: Path, folder: Path) -> Path:
    """A dense model trained for one epoch on ``data`` (so that its head predicts the data's classes)."""
    torch.manual_seed(0)
    YOLO(cfg).train(data=str(data), epochs=1, project=str(folder), name="dense", exist_ok=True, **TRAIN)
    return folder / "dense" / "weights" / "last.pt"


@pytest.fixture(scope="module")
def detect(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("detect")
    data = gpu.make_synthetic_yolo(root / "data", 24, image_size=IMGSZ)
    return data, _trained("yolov8n.yaml", data, root)


def _compress(weights: Path, data: Path, out: Path, **options: Any) -> Any:
    # distillation is off by default: these runs turn it on to cover the recovered stage's distillation
    distill = {"distill_attention": 0.1, "distill_output": 0.2, "finetune_epochs": 1}
    settings: dict[str, Any] = {"target_macs": 0.5, "sparse_epochs": 1, "recover_epochs": 2, **distill, **TRAIN}
    settings.update(options)
    return gpu.compress(YOLO(str(weights)), data=data, out=out, **settings)


def test_compress_end_to_end_and_rerun(detect: tuple[Path, Path], tmp_path: Path) -> None:
    data, weights = detect
    out = tmp_path / "run"
    result = _compress(weights, data, out)
    assert [s.stage for s in result.stages] == list(gpu.STAGES)
    dense, pruned = result.stages[0], result.stages[2]
    assert pruned.macs / dense.macs == pytest.approx(0.5, abs=0.01)
    assert result.stages[-1].params == pruned.params < dense.params
    assert all(0.0 <= s.map50_95 <= s.map50 <= 1.0 for s in result.stages)
    # the result is a YOLO object holding the pruned module; its file reloads the same architecture
    assert gpu.is_pruned(result.model)
    assert model_fingerprint(YOLO(result.checkpoint).model) == model_fingerprint(result.model.model)
    # onnxruntime (the default) ships split-free: the pruned stage was rewritten and the trainer kept the rewrite
    assert sum(isinstance(m, gpu.SplitFreeC2f) for m in result.model.model.modules()) == 8
    saved = json.loads((out / "results.json").read_text())
    assert saved["options"]["split_free"] is True
    assert [s["stage"] for s in saved["stages"]] == list(gpu.STAGES)
    # the trainer ran each stage in its own Ultralytics run folder; the distillation terms were in the loss
    assert "att" in (out / "recovered" / "results.csv").read_text().splitlines()[0]
    assert "att" not in (out / "finetuned" / "results.csv").read_text().splitlines()[0]
    ratio = result.stages[-1].extra["gradient_ratio"]  # the terms' gradient norms against the stock loss's
    assert set(ratio) == {"att", "kd"} and all(0.0 <= v < float("inf") for v in ratio.values())

    # same options: nothing runs again
    stamps = {s: (out / f"{s}.pt").stat().st_mtime_ns for s in gpu.STAGES}
    again = _compress(weights, data, out)
    assert [s.map50_95 for s in again.stages] == [s.map50_95 for s in result.stages]
    assert {s: (out / f"{s}.pt").stat().st_mtime_ns for s in gpu.STAGES} == stamps
    # a changed distillation weight reruns the last stage only
    _compress(weights, data, out, distill_output=0.5)
    after = {s: (out / f"{s}.pt").stat().st_mtime_ns for s in gpu.STAGES}
    assert [s for s in gpu.STAGES if after[s] != stamps[s]] == ["recovered"]


def test_pruned_checkpoint_trains_as_pruned(detect: tuple[Path, Path], tmp_path: Path) -> None:
    data, weights = detect
    yolo = YOLO(str(weights))
    gpu.prune(yolo, target_macs=0.5, imgsz=IMGSZ)
    path = gpu.save(yolo, tmp_path / "pruned.pt")
    pruned_print = model_fingerprint(YOLO(str(path)).model)
    common = {"data": str(data), "epochs": 1, "project": str(tmp_path), "exist_ok": True, **TRAIN}
    # with grouppruner's trainer, and with gpu.load's YOLO under the stock trainer: fine-tuned as pruned
    with_trainer = YOLO(str(path))
    with_trainer.train(trainer=gpu.DetectionTrainer, name="a", **common)
    assert model_fingerprint(with_trainer.model) == pruned_print
    loaded = gpu.load(path)
    loaded.train(name="b", **common)
    assert model_fingerprint(loaded.model) == pruned_print
    # resume of an interrupted pruned run goes through get_model too
    resumed = gpu.trainer_class("detect")(overrides={"model": str(path), **common, "name": "c"})
    assert gpu.is_pruned(resumed.get_model(weights=YOLO(str(path)).model))
    # the stock trainer would rebuild the model from its yaml: it stops, naming the calls that work
    stock = YOLO(str(path))
    with pytest.raises(KeyError, match=r"load\(path\)\.train"):
        stock.train(name="d", **common)
    assert model_fingerprint(stock.model) == pruned_print


def test_sparse_stage_steps_once_per_optimizer_step(detect: tuple[Path, Path], tmp_path: Path) -> None:
    data, weights = detect
    yolo = YOLO(str(weights))
    sparse = gpu.SparseTraining(1e-2)
    sparse.attach(yolo)
    calls: list[int] = []
    # registered after the regularizer's: a second gradient hook that counts the optimizer steps
    yolo.add_callback("on_pretrain_routine_end", lambda trainer: trainer.gradient_hooks.append(calls.append))
    yolo.train(
        trainer=gpu.DetectionTrainer,
        data=str(data),
        epochs=2,
        optimizer="SGD",
        nbs=8,  # no gradient accumulation: one optimizer step per batch
        project=str(tmp_path),
        name="sparse",
        exist_ok=True,
        **TRAIN,
    )
    assert sparse.sparsity is not None
    steps = sparse.sparsity.schedule.last_step
    assert steps == len(calls) == 2 * 3  # 18 training images in batches of 8, two epochs
    state = torch.load(tmp_path / "sparse" / "weights" / "grouppruner_sparsity.pt", weights_only=True)
    assert state["epoch"] == 1 and state["sparsity"]["schedule"]["last_step"] == steps


def test_sparsity_schedule_ends_at_the_last_optimizer_step(detect: tuple[Path, Path], tmp_path: Path) -> None:
    # 18 images in batches of 4: 5 batches an epoch; nbs=16: 4 batches accumulated per step, ramped up from 1
    # during the one warmup epoch, so that the step count is not epochs * ceil(batches / accumulate)
    data, weights = detect
    yolo = YOLO(str(weights))
    sparse = gpu.SparseTraining(1e-2)
    sparse.attach(yolo)
    calls: list[int] = []
    yolo.add_callback("on_pretrain_routine_end", lambda trainer: trainer.gradient_hooks.append(calls.append))
    common = {**TRAIN, "batch": 4}
    yolo.train(
        trainer=gpu.DetectionTrainer,
        data=str(data),
        epochs=3,
        nbs=16,
        warmup_epochs=1,
        optimizer="SGD",
        project=str(tmp_path),
        name="sparse",
        exist_ok=True,
        **common,
    )
    assert sparse.sparsity is not None
    schedule = sparse.sparsity.schedule
    assert 3 * math.ceil(5 / 4) != len(calls)  # the count the schedule was sized to before
    assert schedule.total_steps == schedule.last_step == len(calls)


def test_resume_after_kill_9(detect: tuple[Path, Path], tmp_path: Path) -> None:
    data, weights = detect
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        from ultralytics import YOLO
        from grouppruner.integrations import ultralytics as gpu
        gpu.compress(YOLO({str(weights)!r}), data={str(data)!r}, out={str(out)!r}, target_macs=0.5,
                     sparse_epochs=3, recover_epochs=0, **{TRAIN!r})
        """
    )
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", script]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "sparse" / "weights" / "grouppruner_sparsity.pt"
    deadline = time.monotonic() + 300
    while not state.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "sparse.pt").exists()

    result = gpu.compress(
        YOLO(str(weights)), data=data, out=out, target_macs=0.5, sparse_epochs=3, recover_epochs=0, **TRAIN
    )
    sparse = result.stages[1]
    assert sparse.extra["resumed_at_epoch"] >= 1
    epochs = [line.split(",")[0].strip() for line in (out / "sparse" / "results.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]  # every epoch once: the resumed run continued, it did not start over


def test_cli_yolo(detect: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from grouppruner.cli import main

    data, weights = detect
    out = tmp_path / "run"
    argv = ["yolo", "--model", str(weights), "--data", str(data), "--target-params", "0.6", "--out", str(out)]
    argv += ["--sparse-epochs", "0", "--recover-epochs", "1", "--distill-attention", "0", "--distill-output", "0"]
    argv += ["--imgsz", str(IMGSZ), "--batch", "8", "--workers", "0", "--device", "cpu", "--runtime", "torch"]
    argv += ["--train", "amp=False", "--train", "plots=False", "--train", "mosaic=0.0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()  # Ultralytics writes its own progress to stdout before the summary
    table = lines[-len(gpu.STAGES) - 2 :]
    assert table[0].split() == ["stage", "mAP50-95", "mAP50", "params", "MACs"]
    assert [line.split()[0] for line in table[1:-1]] == list(gpu.STAGES)
    assert f"compressed model: {out / 'recovered.pt'}" in printed
    options = json.loads((out / "results.json").read_text())["options"]
    assert options["mosaic"] == 0.0 and options["amp"] is False and options["target_params"] == 0.6
    assert options["runtime"] == "torch" and options["split_free"] is False  # eager PyTorch: no rewrite
    pruned = json.loads((out / "results.json").read_text())["stages"][2]
    assert pruned["extra"]["params_ratio"] == pytest.approx(0.6, abs=0.01)
    assert main([*argv[:-2], "--train", "mosaic"]) == 2  # a --train item without a value
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_segmentation_goes_through_the_same_flow(tmp_path: Path) -> None:
    data = gpu.make_synthetic_yolo(tmp_path / "data", 24, image_size=IMGSZ, segments=True)
    weights = _trained("yolov8n-seg.yaml", data, tmp_path)
    result = _compress(weights, data, tmp_path / "run", recover_epochs=1, finetune_epochs=0)
    assert [s.stage for s in result.stages] == list(gpu.STAGES)
    assert result.stages[2].macs / result.stages[0].macs == pytest.approx(0.5, abs=0.01)
    assert "mask_map50_95" in result.stages[-1].extra
    assert result.model.task == "segment" and gpu.is_pruned(result.model)


@pytest.mark.parametrize(
    ("cfg", "data_kind", "extra_key"),
    [("yolov8n-obb.yaml", "rotated", None), ("yolov8n-pose.yaml", "keypoints", "pose_map50_95")],
)
def test_obb_and_pose_go_through_the_same_flow(cfg: str, data_kind: str, extra_key: str | None, tmp_path: Path) -> None:
    data = gpu.make_synthetic_yolo(tmp_path / "data", 24, image_size=IMGSZ, **{data_kind: True})
    weights = _trained(cfg, data, tmp_path)
    result = _compress(weights, data, tmp_path / "run", recover_epochs=2)
    assert [s.stage for s in result.stages] == list(gpu.STAGES)
    assert result.stages[2].macs / result.stages[0].macs == pytest.approx(0.5, abs=0.01)
    assert result.model.task == cfg.split("-")[1].removesuffix(".yaml") and gpu.is_pruned(result.model)
    assert all(0.0 <= s.map50_95 <= s.map50 <= 1.0 for s in result.stages)
    if extra_key is not None:
        assert all(0.0 <= s.extra[extra_key] <= 1.0 for s in result.stages)
    # the distillation terms were in the recovered stage's loss
    assert "att" in (tmp_path / "run" / "recovered" / "results.csv").read_text().splitlines()[0]


def test_report_and_profile_of_a_yolo_run_folder(
    detect: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    from grouppruner.cli import main
    from grouppruner.integrations.ultralytics.model import plan_records
    from grouppruner.pruning import PruningPlan

    data, weights = detect
    _compress(weights, data, tmp_path / "run", recover_epochs=1, finetune_epochs=0)
    # as a user does: the folder moved, the commands given relative paths from a fresh working directory
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").rename(tmp_path / "elsewhere" / "yolo")
    monkeypatch.chdir(tmp_path / "elsewhere")
    saved = json.loads(Path("yolo/results.json").read_text())["stages"]
    assert main(["report", "yolo", "--latency", "--threads", "1"]) == 0
    assert "yolo/report/report.md" in capsys.readouterr().out
    text = Path("yolo/report/report.md").read_text()
    header = "| stage | mAP50-95 | mAP kept | mAP50 | params | params % | MACs | MACs % | latency (ms) | latency % |"
    assert header in text
    rows = [line.split(" | ") for line in text.splitlines() if line.split(" | ")[0].lstrip("| ") in gpu.STAGES]
    assert [r[0].lstrip("| ") for r in rows] == list(gpu.STAGES)
    for row, record in zip(rows, saved, strict=True):
        assert float(row[1]) == pytest.approx(record["map50_95"], abs=5e-4)
        assert float(row[3]) == pytest.approx(record["map50"], abs=5e-4)
        assert int(row[4].replace(",", "")) == record["params"] and int(row[6].replace(",", "")) == record["macs"]
        assert float(row[8]) > 0  # measured latency in ms
    # |gamma| per layer group before and after sparse training
    assert "| layer group | BatchNorm channels | dense: \\|gamma\\| < 1e-2 | sparse: \\|gamma\\| < 1e-2 |" in text
    # the widths kept per layer group are those of the plan inside the pruned checkpoint
    plan = PruningPlan.from_dict(plan_records(gpu.load("yolo/pruned.pt").model)[-1])
    for group in plan.layer_groups:
        kept = group.channels_after / max(group.channels_before, 1)
        assert f"| {group.name} | {group.channels_before} | {group.channels_after} | {kept:.1%} |" in text
    assert sum(g.channels_after for g in plan.layer_groups) < sum(g.channels_before for g in plan.layer_groups)
    assert plan.summary().splitlines()[0] in text
    for png in ("stages.png", "gammas.png", "layer_groups.png", "channels.png"):
        assert Path("yolo/report", png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"]({png})" in text
    # profile --run: the last stage (recovered), at the run's imgsz
    assert main(["profile", "--run", "yolo", "--repeats", "1", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"at {IMGSZ}x{IMGSZ}" in printed and "recovered.pt" in printed
    assert f"params     {saved[-1]['params']:,}" in printed
