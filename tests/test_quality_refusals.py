"""The recipe's choice of distilled layers, and ``benchmarks/quality.py`` refusing a teacher it cannot use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grouppruner import InvalidOptionError
from grouppruner.detection import SYNTHETIC_CLASSES, yolov4
from grouppruner.detection.darknet import DarknetModel, parse_cfg
from grouppruner.recipe.stages import distilled_layers

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = ROOT / "tests" / "data" / "darknet" / "yolov4-tiny.cfg"


def test_distilled_layers_selects_backbone_neck_or_all_in_order() -> None:
    model = yolov4(3, width=0.125, depth=0.34)
    backbone = distilled_layers(model, "backbone")
    neck = distilled_layers(model, "neck")
    assert backbone == [f"backbone.stage{i}" for i in range(1, 6)]
    assert neck == ["neck.spp", "neck.pan_out8", "neck.pan_out16", "neck.pan_out32"]
    assert distilled_layers(model, "all") == backbone + neck == model.distill_layers


def test_distilled_layers_refuses_a_part_the_model_does_not_have() -> None:
    model = DarknetModel(parse_cfg(TINY_CFG))
    assert distilled_layers(model, "all") == model.distill_layers
    with pytest.raises(InvalidOptionError, match=r"distill_layers='backbone'.*use 'all'"):
        distilled_layers(model, "backbone")


def _quality(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick", "--report", "--out"]
    return subprocess.run(
        [*command, str(tmp_path / "work"), *extra], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


@pytest.mark.slow
def test_quality_refuses_a_missing_or_foreign_teacher_with_one_line(tmp_path: Path) -> None:
    missing = _quality(tmp_path, "--teacher-checkpoint", str(tmp_path / "nope.pt"))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"quality.py: teacher checkpoint {tmp_path / 'nope.pt'}: no such file"
    ]

    wider = tmp_path / "wider.pt"  # another width: the heads read other channel counts
    torch.save(yolov4(len(SYNTHETIC_CLASSES), width=0.5, depth=0.34).state_dict(), wider)
    refused = _quality(tmp_path, "--teacher-checkpoint", str(wider))
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"quality.py: teacher checkpoint {wider}: does not fit") and "width" in line

    other_data = tmp_path / "other_data.pt"  # the right model, with the anchors of yolov4.cfg (not of this data)
    torch.save(yolov4(len(SYNTHETIC_CLASSES), width=0.25, depth=0.34).state_dict(), other_data)
    refused = _quality(tmp_path, "--teacher-checkpoint", str(other_data))
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "its anchors are not those fitted to this data set" in line


@pytest.mark.slow
def test_quality_refuses_a_work_folder_of_other_settings(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "settings.json").write_text('{"num_images": 1}', encoding="utf-8")
    refused = _quality(tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"quality.py: {tmp_path / 'work'} holds a run with other settings ({tmp_path / 'work' / 'settings.json'}); "
        "use another --out or delete it"
    ]


def test_recipe_refuses_a_layer_choice_for_a_darknet_model_before_generating_data(tmp_path: Path) -> None:
    from grouppruner.recipe import RecipeConfig, RecipeRun

    text = TINY_CFG.read_text(encoding="utf-8").replace("classes=80", "classes=2").replace("filters=255", "filters=21")
    cfg = tmp_path / "two-classes.cfg"
    cfg.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    config = RecipeConfig(out_dir=str(out), cfg=str(cfg), classes=("circle", "square"), distill_layers="backbone")
    with pytest.raises(InvalidOptionError, match=r"distill_layers='backbone'.*only its head inputs"):
        RecipeRun(config)
    assert not (out / "data").exists()
