"""What was written before the recipe moved out of ``detection/`` still loads, and the old imports still work."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import grouppruner as gp
from grouppruner.checkpoint import load_pruned
from grouppruner.detection import yolov4
from grouppruner.pruning import weights_digest
from grouppruner.recipe import RecipeConfig, RecipeRun, run_recipe

pytest.importorskip("PIL")

#: A run folder written by grouppruner 0.1.0 before the move (commit 6c4870f), with these options.
OLD_RUN = Path(__file__).parent / "data" / "run_v0_1"
OPTIONS = dict(
    num_images=20,
    image_size=64,
    width=0.01,
    depth=0.01,
    batch_size=8,
    dense_epochs=1,
    sparse_epochs=1,
    recover_epochs=1,
    finetune_epochs=0,
    target_params=0.6,
    min_channels=2,
)


def _model() -> torch.nn.Module:
    return yolov4(len(RecipeConfig(out_dir="unused").classes), width=0.01, depth=0.01)


def test_an_old_run_folder_resumes_as_finished_without_touching_data(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    saved = json.loads((run / "results.json").read_text())
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("*.pt")}
    results = run_recipe(RecipeConfig(out_dir=str(run), **OPTIONS))
    assert [r.params for r in results] == [s["params"] for s in saved["stages"]] == [29419, 29419, 17704, 17704]
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("*.pt")} == before  # nothing ran again
    assert not (run / "data").exists()  # a finished run prepares no data


def test_an_old_checkpoint_loads_and_the_weights_digest_is_unchanged(tmp_path):
    saved = json.loads((OLD_RUN / "results.json").read_text())
    recovered = _model()
    load_pruned(recovered, OLD_RUN / "recovered.pt")
    assert sum(p.numel() for p in recovered.parameters()) == 17704
    outputs = recovered.eval()(torch.zeros(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, 33, 8, 8), (1, 33, 4, 4), (1, 33, 2, 2)]
    teacher = _model()
    load_pruned(teacher, OLD_RUN / "dense.pt")
    # The recovered stage recorded its teacher's digest with the old stage-local function.
    assert weights_digest(teacher) == saved["stages"][3]["extra"]["teacher_sha256"]


def test_building_a_recipe_run_reads_and_writes_nothing(tmp_path):
    run = RecipeRun(RecipeConfig(out_dir=str(tmp_path / "run"), **OPTIONS))
    assert not (tmp_path / "run").exists()
    assert run.example.shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("grouppruner.detection:RecipeConfig", "grouppruner.recipe:RecipeConfig"),
        ("grouppruner.detection:run_recipe", "grouppruner.recipe:run_recipe"),
        ("grouppruner.detection.recipe:RecipeRun", "grouppruner.recipe:RecipeRun"),
        ("grouppruner.detection.config:load_recipe_config", "grouppruner.recipe.config:load_recipe_config"),
        ("grouppruner.detection.run_folder:RunLock", "grouppruner.run_folder:RunLock"),
        ("grouppruner.detection.distributed:Distributed", "grouppruner.recipe.distributed:Distributed"),
        ("grouppruner.detection.report:write_report", "grouppruner.recipe.report:write_report"),
        ("grouppruner.detection.stages:distilled_layers", "grouppruner.recipe.stages:distilled_layers"),
        ("grouppruner.detection.darknet.recipe:load_darknet", "grouppruner.recipe.darknet:load_darknet"),
        ("grouppruner.detection.darknet.recipe:data_classes", "grouppruner.detection.data:data_classes"),
        ("grouppruner.checkpoint:atomic_write", "grouppruner._utils.io:atomic_write"),
        ("grouppruner.checkpoint:StateMismatch", "grouppruner._utils.io:StateMismatch"),
        ("grouppruner:BNScale", "grouppruner:BNScaleImportance"),
        ("grouppruner.pruning:FilterMagnitude", "grouppruner.pruning:FilterMagnitudeImportance"),
    ],
)
def test_old_names_work_for_one_release_with_a_warning_naming_the_new_place(old, new):
    import importlib

    old_module, old_name = old.split(":")
    new_module, new_name = new.split(":")
    with pytest.warns(DeprecationWarning, match=new_module.replace(".", r"\.")):
        found = getattr(importlib.import_module(old_module), old_name)
    assert found is getattr(importlib.import_module(new_module), new_name)


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert gp.BNScaleImportance is gp.pruning.BNScaleImportance
        from grouppruner.recipe import RecipeConfig as Config  # noqa: F401
