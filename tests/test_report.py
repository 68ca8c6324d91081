"""grouppruner.recipe.report: the run-folder report (tables and figures) from checkpoints and results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

import grouppruner as gp
from grouppruner.recipe.report import write_report
from runs import CONFIG, fake_run_folder

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, nn.Module]]:
    root = tmp_path_factory.mktemp("run")
    return root, fake_run_folder(root)


@pytest.mark.slow
def test_report_tables_and_figures(run: tuple[Path, dict[str, nn.Module]]) -> None:
    tmp_path, models = run
    report = write_report(tmp_path)
    assert report == tmp_path / "report" / "report.md"
    text = report.read_text()
    dense_params = gp.profile.count_params(models["dense"])
    pruned_params = gp.profile.count_params(models["pruned"])
    assert f"| dense | 0.500 | 100.0% | {dense_params:,} | 100.0% |" in text
    assert f"| pruned | 0.300 | 60.0% | {pruned_params:,} | {pruned_params / dense_params:.1%} |" in text
    for name in ("stages.png", "gammas.png", "channels.png"):
        assert (tmp_path / "report" / name).read_bytes().startswith(PNG)
        assert f"]({name})" in text
    # The sparse model has every other gamma at 0: about half of each layer group is under 1e-2, none before.
    rows = [line for line in text.splitlines() if line.startswith("| backbone/")]
    assert rows
    for row in rows:
        dense_frac, sparse_frac = (float(c.strip().rstrip("%")) for c in row.strip("|").split("|")[2:4])
        assert dense_frac == 0.0 and 40.0 <= sparse_frac <= 60.0
    assert "PruningPlan (target_params=0.6)" in text
    # the gamma table renders: no bare "|" inside a header cell, and it says what its channels count
    header = next(line for line in text.splitlines() if line.startswith("| layer group |"))
    assert header == "| layer group | BatchNorm channels | dense: \\|gamma\\| < 1e-2 | sparse: \\|gamma\\| < 1e-2 |"
    assert header.replace("\\|", "").count("|") == rows[0].count("|")  # as many cells as each row
    assert "counted once per BatchNorm" in text and "the dashed line in the histograms" in text


@pytest.mark.slow
def test_report_latency_column(run: tuple[Path, dict[str, nn.Module]]) -> None:
    text = write_report(run[0], latency=True, threads=1).read_text()
    assert "| latency (ms) | latency % |" in text
    assert text.count("% |") >= 4 * 4  # mAP kept, params %, MACs %, latency % for each stage


def test_report_refuses_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no results\.json"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match=r"results\.json: not a recipe result"):
        write_report(tmp_path)
    record = {"stage": "dense", "map50": 0.5, "params": 10, "macs": 10}
    (tmp_path / "results.json").write_text(json.dumps({"config": CONFIG, "stages": [record]}))
    with pytest.raises(gp.CheckpointError, match=r"dense\.pt: stage checkpoint missing"):
        write_report(tmp_path)


@pytest.mark.slow
def test_cli_report(run: tuple[Path, dict[str, nn.Module]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from grouppruner.cli import main

    assert main(["report", str(run[0])]) == 0
    assert f"report written to {run[0] / 'report' / 'report.md'}" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grouppruner report: error:" in err and "no results.json" in err


def test_cli_report_and_profile_refuse_a_folder_of_neither_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from grouppruner.cli import main
    from grouppruner.run_folder import run_kind

    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "results.json").write_text(json.dumps({"stages": []}))
    monkeypatch.chdir(tmp_path)
    for argv in (["report", "odd"], ["profile", "--run", "odd"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "odd/results.json: neither a recipe result" in err and "nor an Ultralytics run" in err
    (tmp_path / "odd" / "results.json").write_text(json.dumps({"options": {"imgsz": 64}, "stages": []}))
    assert run_kind("odd") == "yolo"
    (tmp_path / "odd" / "results.json").write_text(json.dumps({"config": CONFIG, "stages": []}))
    assert run_kind("odd") == "recipe"
