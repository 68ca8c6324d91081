"""The Ultralytics flow the way a user meets it: relative paths from a fresh working directory, a ``.pt`` path as
the model, the habit call ``YOLO(result.checkpoint).train(...)``, a misspelt trainer keyword, and the run folder's
guarantees (one run at a time, checkpoints checked before a stage is skipped, paths relative to the folder).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.libraries, pytest.mark.slow]
pytest.importorskip("ultralytics")
os.environ.setdefault("YOLO_OFFLINE", "1")

from ultralytics import YOLO  # noqa: E402

from grouppruner import InvalidOptionError, OptionTypeError, UsageError  # noqa: E402
from grouppruner.integrations import ultralytics as gpu  # noqa: E402
from grouppruner.integrations.ultralytics.model import REBUILD_REFUSAL  # noqa: E402
from grouppruner.pruning import model_fingerprint  # noqa: E402

IMGSZ = 64
TRAIN = {"imgsz": IMGSZ, "batch": 8, "workers": 0, "plots": False, "device": "cpu", "amp": False, "verbose": False}
FLOW = {"target_macs": 0.5, "sparse_epochs": 1, "recover_epochs": 2, "lr0": 0.02, **TRAIN}
Run = tuple[Path, Any, list[str]]


def _dense(cwd: Path) -> None:
    """``data/data.yaml`` and ``dense.pt`` (one epoch of yolov8n) in ``cwd``, written the way a user would."""
    gpu.make_synthetic_yolo("data", 24, image_size=IMGSZ)
    torch.manual_seed(0)
    YOLO("yolov8n.yaml").train(data="data/data.yaml", epochs=1, project=str(cwd / "dense"), name="t", **TRAIN)
    shutil.copyfile(cwd / "dense" / "t" / "weights" / "last.pt", cwd / "dense.pt")
    shutil.rmtree(cwd / "dense")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One compress() run as the guide writes it: relative data, relative out, the model as a .pt path."""
    cwd = tmp_path_factory.mktemp("user")
    ours = logging.getLogger("grouppruner")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        _dense(cwd)
        before = sorted(p.name for p in cwd.iterdir())
        lines = _Lines()
        ours.addHandler(lines)
        level = ours.level
        ours.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the loggers' cached levels
        try:
            result = gpu.compress("dense.pt", data="data/data.yaml", out="runs/yolo", **FLOW)
        finally:
            ours.removeHandler(lines)
            ours.setLevel(level)
        assert sorted(p.name for p in cwd.iterdir()) == sorted({*before, "runs"})
        yield cwd, result, lines.lines


def test_relative_out_and_pt_path_land_where_the_user_said(run: Run) -> None:
    cwd, result, _ = run
    out = cwd / "runs" / "yolo"
    assert [s.stage for s in result.stages] == list(gpu.STAGES)
    assert Path(result.checkpoint) == out / "recovered.pt" and Path(result.out) == out
    assert (out / "sparse" / "weights" / "last.pt").is_file()
    # everything the run wrote is under out/: no runs/detect/... (Ultralytics' runs_dir), no val-N folders
    assert sorted(p.name for p in (cwd / "runs").iterdir()) == ["yolo"]
    assert sorted(p.name for p in (out / "val").iterdir()) == sorted(gpu.STAGES)


def test_results_json_is_portable_and_records_files(run: Run) -> None:
    cwd, _, _ = run
    saved = json.loads((cwd / "runs" / "yolo" / "results.json").read_text())
    assert saved["version"] == 2
    for record in saved["stages"]:
        assert record["checkpoint"] == f"{record['stage']}.pt"
        [file] = record["files"]
        assert file["path"] == f"{record['stage']}.pt"
        assert file["bytes"] == (cwd / "runs" / "yolo" / file["path"]).stat().st_size


def test_every_stage_trains_with_the_recorded_optimizer(run: Run) -> None:
    cwd, result, _ = run
    out = cwd / "runs" / "yolo"
    assert json.loads((out / "results.json").read_text())["options"]["optimizer"] == "SGD"
    for stage in ("sparse", "finetuned"):
        args = (out / stage / "args.yaml").read_text()
        assert "optimizer: SGD" in args and "lr0: 0.02" in args
        assert {s.stage: s for s in result.stages}[stage].extra["optimizer"] == "SGD"
    # no distillation by default: the recovery is the fine-tuning, and the recovered stage trains nothing more
    assert not (out / "recovered").exists() and "optimizer" not in result.stages[-1].extra


def test_the_budget_check_does_not_read_like_a_result(run: Run) -> None:
    _, result, lines = run
    pruned = [i for i, line in enumerate(lines) if line.startswith("pruned ")]
    checks = [i for i, line in enumerate(lines) if line.startswith("budget check")]
    assert len(checks) == 1 and checks[0] < lines.index("sparse: starting")
    # what reads as a pruning result is logged once, by the pruned stage, with the ratios it records
    assert len(pruned) == 2 and lines.index("pruned: starting") < pruned[0]
    assert f"params x{result.stages[2].extra['params_ratio']:.3f}" in lines[pruned[1]]


def test_habit_call_train_stops_instead_of_unpruning(run: Run) -> None:
    cwd, result, _ = run
    yolo = YOLO(result.checkpoint)
    pruned_print = model_fingerprint(yolo.model)
    with pytest.raises(KeyError) as caught:
        yolo.train(data="data/data.yaml", epochs=1, project=str(cwd / "habit"), name="t", **TRAIN)
    assert caught.value.args[0] == REBUILD_REFUSAL
    assert model_fingerprint(yolo.model) == pruned_print  # nothing was replaced
    # the same object still describes itself, validates, predicts, exports and fuses
    assert yolo.info(verbose=True)[1] == result.stages[-1].params
    metrics = yolo.val(data=str(cwd / "data" / "data.yaml"), project=str(cwd / "habit"), name="v", **TRAIN)
    assert 0.0 <= metrics.box.map <= 1.0
    image = next((cwd / "data" / "images" / "val").iterdir())
    assert len(yolo.predict(str(image), imgsz=IMGSZ, verbose=False)) == 1
    assert Path(yolo.export(format="onnx", imgsz=IMGSZ)).is_file()
    yolo.fuse()
    # the call that works keeps the pruned architecture
    loaded = gpu.load(result.checkpoint)
    loaded.train(data=str(cwd / "data" / "data.yaml"), epochs=1, project=str(cwd / "habit"), name="ok", **TRAIN)
    assert model_fingerprint(loaded.model) == pruned_print


def test_misspelt_trainer_keyword_is_refused_before_anything_is_written(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd, _, _ = run
    monkeypatch.chdir(cwd)
    with pytest.raises(InvalidOptionError, match=r"'lr00' is not a valid YOLO argument.*lr0"):
        gpu.compress("dense.pt", data="data/data.yaml", out="runs/typo", **{**FLOW, "lr00": 0.1})
    with pytest.raises(InvalidOptionError, match="compress sets the trainer keywords"):
        gpu.compress("dense.pt", data="data/data.yaml", out="runs/typo", **{**FLOW, "epochs": 3})
    assert not (cwd / "runs" / "typo").exists()


def test_model_paths_other_than_pt_are_refused_by_kind(run: Run) -> None:
    cwd, _, _ = run
    with pytest.raises(OptionTypeError, match=r"yolov8n.yaml: a model .yaml builds an untrained model"):
        gpu.compress("yolov8n.yaml", data=cwd / "data" / "data.yaml", out=cwd / "runs" / "x", **FLOW)
    with pytest.raises(OptionTypeError, match=r"best.onnx: an exported model file"):
        gpu.compress("best.onnx", data=cwd / "data" / "data.yaml", out=cwd / "runs" / "x", **FLOW)
    assert not (cwd / "runs" / "x").exists()


def test_run_folder_lock_and_damaged_checkpoint(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, result, _ = run
    monkeypatch.chdir(cwd)
    out = cwd / "runs" / "yolo"
    moved = cwd / "runs" / "moved"
    shutil.copytree(out, moved)  # a moved folder keeps working: its paths are relative
    stamps = {s: (moved / f"{s}.pt").stat().st_mtime_ns for s in gpu.STAGES}
    # another live run holds the lock: refused, naming the folder
    (moved / ".grouppruner.lock").write_text(json.dumps({"pid": 1, "host": os.uname().nodename, "start": None}))
    with pytest.raises(UsageError, match="in use by another grouppruner run"):
        gpu.compress("dense.pt", data="data/data.yaml", out="runs/moved", **FLOW)
    (moved / ".grouppruner.lock").unlink()
    # a damaged finetuned.pt (same size, other bytes): that stage and the next rerun, the earlier ones are skipped
    damaged = bytearray((moved / "finetuned.pt").read_bytes())
    damaged[-100] ^= 0xFF
    (moved / "finetuned.pt").write_bytes(bytes(damaged))
    again = gpu.compress("dense.pt", data="data/data.yaml", out="runs/moved", **FLOW)
    after = {s: (moved / f"{s}.pt").stat().st_mtime_ns for s in gpu.STAGES}
    assert [s for s in gpu.STAGES if after[s] != stamps[s]] == ["finetuned", "recovered"]
    assert [s.map50_95 for s in again.stages[:3]] == [s.map50_95 for s in result.stages[:3]]


def test_compress_tells_its_story_where_ultralytics_tells_its_own() -> None:
    from ultralytics.utils import LOGGER

    from grouppruner.integrations.ultralytics._story import story

    ours = logging.getLogger("grouppruner.integrations.ultralytics.flow")
    printed = _Lines()
    LOGGER.addHandler(printed)
    level = logging.getLogger("grouppruner").level
    logging.getLogger("grouppruner").setLevel(logging.NOTSET)
    try:
        assert not ours.isEnabledFor(logging.INFO)  # no logging configured, as in a notebook
        with story(True):
            ours.info("sparse: resuming after epoch %d/%d", 3, 30)
        with story(False):  # verbose=False: quiet, as Ultralytics' trainer
            ours.info("not shown")
        ours.info("not shown either")  # outside compress() nothing changes
    finally:
        LOGGER.removeHandler(printed)
        logging.getLogger("grouppruner").setLevel(level)
    assert printed.lines == ["grouppruner: sparse: resuming after epoch 3/30"]
    assert logging.getLogger("grouppruner").handlers == []


def test_cli_says_what_model_it_takes(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    from grouppruner.cli import main

    cwd, _, _ = run
    with pytest.raises(SystemExit):
        main(["yolo", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "its Ultralytics .pt weights" in shown
    assert "a model .yaml (untrained) or an exported file is refused" in shown
    argv = ["yolo", "--data", str(cwd / "data" / "data.yaml"), "--target-macs", "0.5", "--out", str(cwd / "runs" / "c")]
    assert main([*argv, "--model", "yolov8n.yaml"]) == 2
    assert "a model .yaml builds an untrained model" in capsys.readouterr().err
    assert not (cwd / "runs" / "c").exists()
