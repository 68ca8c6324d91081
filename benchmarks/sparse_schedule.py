"""Sparse-training schedule: mAP after sparse training and after pruning, for several (s, warmup, keep). One process.

From a finished demo folder (``grouppruner demo --out RUN``), the sparse and pruned stages are rerun from its
``dense`` checkpoint with each setting, all else at the run's options; with ``--recover``, the recovery too. The
printed mAP@0.5 after pruning (before any recovery) is what ``RecipeConfig.sparsity``, ``sparsity_warmup`` and
``sparsity_keep`` were chosen by: it says how much of the network sparse training left intact at the budget.

Usage: python benchmarks/sparse_schedule.py RUN [--settings 0.02,0.4,0.5 0.03,0.2,0.55] [--recover]
    [--threads 1] [--out runs/sparse_schedule]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from grouppruner.recipe import RecipeConfig, RecipeRun
from grouppruner.recipe.report import read_run

# The sweep the recipe's defaults were chosen from (s, warmup, keep); the first is the former default.
DEFAULT_SETTINGS = [
    "0.02,0.4,0.5",
    "0.02,0.2,0.5",
    "0.02,0.1,0.5",
    "0.02,0.4,0.55",
    "0.01,0.4,0.5",
    "0.015,0.4,0.5",
    "0.015,0.2,0.5",
    "0.03,0.2,0.55",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished demo folder")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="s,warmup,keep triples")
    parser.add_argument("--recover", action="store_true", help="run the recovery stage too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/sparse_schedule"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    saved, stages = read_run(args.run)
    dense = next(s["map50"] for s in stages if s["stage"] == "dense")
    base = RecipeConfig(**{**saved, "classes": tuple(saved["classes"])})
    print(f"dense mAP@0.5 {dense:.4f}")
    for setting in args.settings:
        s, warmup, keep = (float(v) for v in setting.split(","))
        config = dataclasses.replace(
            base,
            out_dir=str(args.out / f"s{s:g}_w{warmup:g}_k{keep:g}"),
            data_root=str(args.run / "data"),
            sparsity=s,
            sparsity_warmup=warmup,
            sparsity_keep=keep,
        )
        run = RecipeRun(config, checkpoints={"dense": args.run / "dense.pt"})
        start = time.perf_counter()
        stages = ["sparse", "pruned", "recovered"] if args.recover else ["sparse", "pruned"]
        maps = {stage: run.run_stage(stage).map50 for stage in stages}
        line = ", ".join(f"{stage} {value:.4f}" for stage, value in maps.items())
        print(f"s {s:g}, warmup {warmup:g}, keep {keep:g}: mAP@0.5 {line}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
