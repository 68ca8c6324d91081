"""A fake finished recipe run folder (results.json + stage checkpoints) for the report and CLI tests, another
process holding the lock on a run folder, and the options of the tiniest real recipe run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

import grouppruner as gp
from grouppruner.detection import yolov4


def tiny_recipe_config(out_dir: Path, **changes: Any) -> Any:
    """A RecipeConfig for a recipe run of a few seconds: 24 images at 64 px, a reduced YOLOv4, one epoch a stage."""
    from grouppruner.recipe import RecipeConfig

    options: dict[str, Any] = dict(
        out_dir=str(out_dir),
        num_images=24,
        image_size=64,
        width=0.125,
        depth=0.34,
        batch_size=8,
        dense_epochs=1,
        sparse_epochs=1,
        recover_epochs=1,
        finetune_epochs=0,
        target_params=0.6,
        min_channels=4,
    )
    return RecipeConfig(**{**options, **changes})


CONFIG = {"image_size": 64, "classes": ["a", "b"], "backbone": "cspdarknet53", "width": 0.25, "depth": 0.34}


def fake_run_folder(root: Path) -> dict[str, nn.Module]:
    """A fake finished run: dense, sparse (half the gammas zeroed), pruned (to 60 % params), recovered."""
    torch.manual_seed(0)
    dense = yolov4(2, width=0.25, depth=0.34).eval()
    sparse = yolov4(2, width=0.25, depth=0.34).eval()
    sparse.load_state_dict(dense.state_dict())
    for m in sparse.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data[::2] = 0.0
    pruned = yolov4(2, width=0.25, depth=0.34).eval()
    pruned.load_state_dict(sparse.state_dict())
    pruner = gp.GroupPruner(gp.ChannelGraph(pruned, torch.zeros(1, 3, 64, 64)), min_channels=4)
    pruner.apply(pruner.plan(target_params=0.6))
    models = {"dense": dense, "sparse": sparse, "pruned": pruned, "recovered": pruned}
    stages = []
    for i, (stage, model) in enumerate(models.items()):
        gp.save_pruned(model, root / f"{stage}.pt")
        params = gp.profile.count_params(model)
        macs = gp.profile.count_macs(model, torch.zeros(1, 3, 64, 64))
        stages.append({"stage": stage, "map50": 0.5 - 0.1 * i, "params": params, "macs": macs})
    (root / "results.json").write_text(json.dumps({"config": CONFIG, "stages": stages}))
    return models


_HOLD_LOCK = """
import sys, time
from grouppruner.run_folder import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def lock_holder(folder: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process that takes the lock on the run folder ``folder`` and holds it ``seconds``."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(folder), str(seconds)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process
