"""grouppruner.run_folder: the lock on a run folder, portable results.json, recorded stage files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest

from grouppruner._utils.errors import DataError, UsageError
from grouppruner.run_folder import (
    LOCK_NAME,
    RunLock,
    check_file_record,
    file_record,
    read_results,
    write_results,
)
from runs import CONFIG, lock_holder


def test_a_second_lock_is_refused_naming_the_holder_and_released_on_exit(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(UsageError, match=rf"in use by another grouppruner run \(pid {os.getpid()} on "):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError), RunLock(tmp_path):  # released on an exception too
        raise RuntimeError("stage failed")
    assert not (tmp_path / LOCK_NAME).exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_lock_of_a_live_process_holds_and_that_of_a_killed_one_is_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = lock_holder(tmp_path, 60)
    try:
        with pytest.raises(UsageError, match=rf"pid {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the lock file stays behind
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"removing the stale lock of pid {holder.pid}" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_whose_pid_was_reused_is_stale(tmp_path: Path) -> None:
    # This process's pid, but a start time no process with that pid has: the pid was reused after a crash.
    with RunLock(tmp_path):
        start = json.loads((tmp_path / LOCK_NAME).read_text())["start"]
    if start is None:
        pytest.skip("no /proc: process start times are unknown")
    stale = {"pid": os.getpid(), "host": socket.gethostname(), "start": start - 1, "since": "yesterday"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["start"] == start


def test_a_lock_of_another_host_is_never_taken_over(tmp_path: Path) -> None:
    other = {"pid": 1, "host": "elsewhere", "start": 5, "since": "2026-01-01 10:00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(UsageError, match=r"pid 1 on elsewhere, since 2026-01-01 10:00:00.*delete .*grouppruner\.lock"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other


def test_file_records_catch_truncation_and_changed_bytes(tmp_path: Path) -> None:
    path = tmp_path / "dense.pt"
    path.write_bytes(b"x" * 1000)
    record = file_record(tmp_path, path)
    assert record["path"] == "dense.pt" and record["bytes"] == 1000 and len(record["sha256"]) == 64
    assert check_file_record(tmp_path, record) is None
    path.write_bytes(b"x" * 600)
    assert "has 600 bytes, 1,000 when it was written" in str(check_file_record(tmp_path, record))
    path.write_bytes(b"x" * 999 + b"y")
    assert "SHA-256 changed" in str(check_file_record(tmp_path, record))
    path.unlink()
    assert "dense.pt is missing" in str(check_file_record(tmp_path, record))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.cfg"
    outside.write_text("[net]\n")
    assert file_record(tmp_path, outside)["path"] == str(outside.resolve())  # outside the folder: absolute


def _stage(name: str, checkpoint: str) -> dict[str, object]:
    return {"stage": name, "map50": 0.5, "params": 10, "macs": 20, "checkpoint": checkpoint, "extra": {}, "files": []}


def test_results_store_paths_relative_to_the_folder_and_survive_a_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = Path("runs/a")
    (run / "data").mkdir(parents=True)
    (run / "dense.pt").write_bytes(b"weights")
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"t")
    stage = {**_stage("dense", str(run / "dense.pt")), "files": [file_record(run, run / "dense.pt")]}
    write_results(run, {**CONFIG, "data_root": "runs/a/data", "weights": str(teacher)}, [stage])
    saved = json.loads((run / "results.json").read_text())
    assert saved["version"] == 2 and saved["stages"][0]["checkpoint"] == "dense.pt"
    assert saved["config"]["data_root"] == "data" and saved["config"]["weights"] == str(teacher)
    assert saved["stages"][0]["files"][0]["path"] == "dense.pt"
    shutil.move("runs/a", "moved")
    config, records = read_results("moved")
    assert records[0]["checkpoint"] == str(Path("moved") / "dense.pt")
    assert config["data_root"] == str(Path("moved") / "data") and config["weights"] == str(teacher)
    assert check_file_record("moved", records[0]["files"][0]) is None


def test_results_of_version_1_with_absolute_paths_still_read(tmp_path: Path) -> None:
    old = {"config": {**CONFIG, "data_root": None}, "stages": [_stage("dense", "/old/place/run/dense.pt")]}
    for record in old["stages"]:
        del record["files"]
    (tmp_path / "results.json").write_text(json.dumps(old))
    config, records = read_results(tmp_path)
    assert records[0]["checkpoint"] == str(tmp_path / "dense.pt") and records[0]["files"] == []
    assert config["image_size"] == CONFIG["image_size"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(stages=[{**d["stages"][0], "stage": "densest"}]), "stage record 0: 'stage' must be one"),
        (lambda d: d["stages"][0].update(map50="high"), "stage 'dense': 'map50' must be a non-negative number"),
        (lambda d: d["stages"][0].update(params=-3), "'params' must be a non-negative number, got -3"),
        (lambda d: d["stages"][0].update(files=[{"path": 3}]), "'files' must be a list of {path, bytes, sha256}"),
        (lambda d: d["stages"][0].update(colour="red"), r"unknown field\(s\) \['colour'\]"),
        (lambda d: d.update(stages=[_stage("sparse", "sparse.pt")]), r"stages \['sparse'\] are not in recipe order"),
        (lambda d: d["config"].update(image_size="big"), "config 'image_size' has the wrong type: 'big'"),
        (lambda d: d["config"].update(classes=[]), "config 'classes' must be a list of class names"),
        (lambda d: d["config"].pop("backbone"), "config has no 'backbone'"),
        (lambda d: d["config"].update(data_root=5), "config 'data_root' must be a path or null"),
        (lambda d: d.update(version=7), "results.json version 7 is not supported"),
        (lambda d: d.update(config=[1]), "no 'config' object"),
    ],
)
def test_a_hand_edited_results_json_names_the_file_and_the_field(tmp_path: Path, edit, message: str) -> None:
    write_results(tmp_path, dict(CONFIG), [_stage("dense", str(tmp_path / "dense.pt"))])
    data = json.loads((tmp_path / "results.json").read_text())
    edit(data)
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=str(tmp_path / "results.json").replace(".", r"\.") + ".*" + message):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(DataError, match=r"results\.json: not a recipe result \(not JSON"):
        read_results(tmp_path)
