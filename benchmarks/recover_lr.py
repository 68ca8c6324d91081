"""Recovery learning rate: the recovered mAP of one pruned model at several ``recover_lr`` values. One process.

From a finished demo folder (``grouppruner demo --out RUN``), the recovery stage is rerun from its ``dense``,
``sparse`` and ``pruned`` checkpoints with each learning rate, all else at the defaults; the printed mAP@0.5 values
are what ``RecipeConfig.recover_lr`` was chosen by (the dense model's mAP is printed as the baseline).

Usage: python benchmarks/recover_lr.py RUN [--lrs 1e-3 2e-3 3e-3 5e-3] [--threads 1] [--out runs/recover_lr]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from grouppruner.recipe import RecipeConfig, RecipeRun
from grouppruner.recipe.report import read_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished demo folder")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 3e-3, 5e-3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/recover_lr"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    saved, stages = read_run(args.run)
    dense = next(s["map50"] for s in stages if s["stage"] == "dense")
    base = RecipeConfig(**{**saved, "classes": tuple(saved["classes"])})
    checkpoints = {stage: args.run / f"{stage}.pt" for stage in ("dense", "sparse", "pruned")}
    print(f"dense mAP@0.5 {dense:.4f}")
    for lr in args.lrs:
        config = dataclasses.replace(
            base, out_dir=str(args.out / f"lr{lr:g}"), data_root=str(args.run / "data"), recover_lr=lr
        )
        start = time.perf_counter()
        result = RecipeRun(config, checkpoints=checkpoints).run_stage("recovered")
        print(f"recover_lr {lr:g}: recovered mAP@0.5 {result.map50:.4f} ({result.map50 / dense:.1%} of dense), "
              f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
