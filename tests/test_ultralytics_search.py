"""The plan search in the Ultralytics flow: compress(search_candidates=N), YoloPlanSearch, their refusals.

On generated 64-pixel data with yolov8n trained one epoch on the CPU (as tests/test_ultralytics_compress.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import grouppruner as gp
from grouppruner.integrations.ultralytics.search import epoch_seconds

IMGSZ = 64
TRAIN = {"imgsz": IMGSZ, "batch": 8, "workers": 0, "plots": False, "device": "cpu", "amp": False, "verbose": False}


def test_epoch_seconds_reads_the_time_column_across_a_resume(tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    # two epochs of 10 s and 12 s, then a resumed run whose clock restarted: 11 s
    csv.write_text("epoch,time,train/box_loss\n1,10.0,1.0\n2,22.0,0.9\n3,11.0,0.8\n")
    assert epoch_seconds(csv) == pytest.approx(11.0)
    assert epoch_seconds(tmp_path / "missing.csv") is None
    csv.write_text("epoch,train/box_loss\n1,1.0\n")
    assert epoch_seconds(csv) is None


@pytest.mark.libraries
def test_bad_search_candidates_are_refused_by_name(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    from grouppruner.cli import build_parser
    from grouppruner.integrations import ultralytics as gpu
    from grouppruner.integrations.ultralytics.flow import _first_changed

    data = gpu.make_synthetic_yolo(tmp_path / "data", 8, image_size=IMGSZ)
    with pytest.raises(gp.InvalidOptionError, match=r"search_candidates must be an int >= 0, got -1"):
        gpu.compress(YOLO("yolov8n.yaml"), data=data, target_macs=0.5, search_candidates=-1, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(gp.InvalidOptionError, match=r"YoloPlanSearch: candidates must be an int >= 1, got 0"):
        gpu.YoloPlanSearch(data, candidates=0, folder=tmp_path / "search")
    with pytest.raises(gp.InvalidOptionError, match="not ratios"):
        gpu.prune(YOLO("yolov8n.yaml"), ratios={}, search=gpu.YoloPlanSearch(data, candidates=1, folder=tmp_path))
    argv = ["yolo", "--model", "m.pt", "--data", "d.yaml", "--target-macs", "0.5", "--out", "o"]
    args = build_parser().parse_args([*argv, "--search-candidates", "3"])
    assert args.search_candidates == 3
    # a run folder written before the option existed: unchanged while it keeps its default
    options = {"target_macs": 0.5, "search_candidates": 0}
    assert _first_changed({"target_macs": 0.5}, options) is None
    assert _first_changed({"target_macs": 0.5}, {**options, "search_candidates": 3}) == "pruned"


@pytest.mark.libraries
@pytest.mark.slow
def test_compress_searches_records_resumes_and_reuses(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import YOLO

    from grouppruner.integrations import ultralytics as gpu
    from grouppruner.integrations.ultralytics.model import plan_records
    from grouppruner.integrations.ultralytics.report import plan_search_lines
    from grouppruner.pruning import PruningPlan

    data = gpu.make_synthetic_yolo(tmp_path / "data", 24, image_size=IMGSZ)
    torch.manual_seed(0)
    YOLO("yolov8n.yaml").train(data=str(data), epochs=1, project=str(tmp_path), name="dense", exist_ok=True, **TRAIN)
    weights = tmp_path / "dense" / "weights" / "last.pt"
    out = tmp_path / "run"

    def run(**options: Any) -> Any:
        settings = {"target_macs": 0.5, "sparse_epochs": 1, "recover_epochs": 0, "search_candidates": 3, **options}
        return gpu.compress(YOLO(str(weights)), data=data, out=out, **{**TRAIN, **settings})

    result = run()
    search = result.stages[2].extra["search"]
    assert list(search["scores"])[:2] == ["0:solver", "1:uniform"] and len(search["scores"]) == 3
    assert list(search["scores"])[2] in ("2:random", "2:perturb")
    scores = [s for s in search["scores"].values() if s is not None]
    assert search["score"] == max(scores) and search["candidates"] == 3
    assert search["solver_score"] == search["scores"]["0:solver"]
    assert search["scored_images"] == 18  # the whole train split (24 images, a quarter in val): never val images
    # the cost: a candidate against one sparse-training epoch of this run
    assert search["seconds_per_candidate"] > 0 and search["epoch_seconds"] > 0
    assert search["candidate_per_epoch"] == pytest.approx(search["seconds_per_candidate"] / search["epoch_seconds"])
    # every candidate met the budget; the pruned model is the chosen candidate's plan
    state = json.loads((out / "search" / "search.json").read_text())
    assert [r["index"] for r in state["records"]] == [0, 1, 2]
    assert all(abs(r["reached"] - 0.5) <= 0.02 for r in state["records"] if r["score"] is not None)
    assert result.stages[2].macs / result.stages[0].macs == pytest.approx(0.5, abs=0.02)
    plan = PruningPlan.from_dict(plan_records(gpu.load(out / "pruned.pt").model)[-1])
    assert {g.name: g.channels_after for g in plan.layer_groups} == search["widths"]
    chosen = f"{search['chosen']}:{search['kind']}"
    assert any(line.startswith(f"| {chosen} |") and line.endswith("| chosen |") for line in plan_search_lines(search))

    # the same options again: nothing is searched (nor pruned) again
    files = (out / "pruned.pt", out / "search" / "search.json")
    stamps = [f.stat().st_mtime_ns for f in files]
    assert run().stages[2].extra["search"] == search
    assert [f.stat().st_mtime_ns for f in files] == stamps

    # killed after the first candidate: the rerun scores the other two and chooses the same plan
    saved = json.loads((out / "results.json").read_text())
    saved["stages"] = saved["stages"][:2]
    (out / "results.json").write_text(json.dumps(saved))
    (out / "search" / "search.json").write_text(json.dumps({**state, "records": state["records"][:1]}))
    resumed = run().stages[2].extra["search"]
    assert resumed["scores"] == search["scores"] and resumed["widths"] == search["widths"]
    assert json.loads((out / "search" / "search.json").read_text())["records"][0] == state["records"][0]

    # search_candidates changed: the pruned stage and the later ones run again, the earlier ones do not
    stamps = {s: (out / f"{s}.pt").stat().st_mtime_ns for s in gpu.STAGES}
    assert "search" not in run(search_candidates=0).stages[2].extra
    after = {s: (out / f"{s}.pt").stat().st_mtime_ns for s in gpu.STAGES}
    assert [s for s in gpu.STAGES if after[s] != stamps[s]] == ["pruned", "finetuned", "recovered"]
