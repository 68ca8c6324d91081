"""What one candidate of ``PlanSearch`` costs, against one training epoch, at ``quality.py``'s full settings.

In one process, taking turns: one training epoch of the demo detector (300 images at 128 px, batch 16, the
recipe's ``RecipeRun.train``), then ``--candidates`` candidates of the search arm of ``quality.py`` (plan at
15 % of the params, apply to a copy, recompute BatchNorm statistics on 8 training batches, mAP@0.5 on the
160-image search split), then the epoch again; the ratio uses the median of the epochs. The model is the
``--checkpoint`` (e.g. a teacher, so that the evaluation's NMS sees realistic detections) or a fresh one.

Usage::

    python benchmarks/search_cost.py --checkpoint runs/quality/teacher/dense.pt
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch
from _quality_arms import CALIBRATION_BATCHES, Context, _calibration, _search_loader
from quality import FULL

from grouppruner.detection.train import evaluate
from grouppruner.graph import ChannelGraph
from grouppruner.pruning import GroupPruner, PlanSearch
from grouppruner.recipe import RecipeConfig, RecipeRun, load_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="weights of the demo model (default: a fresh model)")
    parser.add_argument("--candidates", type=int, default=4, help="candidates to time (default 4)")
    parser.add_argument("--out", type=Path, default=Path("runs/search_cost"), help="work folder (data, states)")
    parser.add_argument(
        "--data", type=Path, default=Path("runs/quality/teacher/data"), help="quality.py's data (made if missing)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data if (args.data / "ImageSets" / "Main" / "train.txt").is_file() else None
    base = RecipeConfig(out_dir=str(args.out / "teacher"), data_root=str(data) if data else None, **FULL)
    run = RecipeRun(base)
    model = run.new_model()
    if args.checkpoint is not None:
        load_weights(model, args.checkpoint)
    context = Context(base, args.checkpoint or Path(), args.out, {})
    context.data = Path(base.data_root) if base.data_root else Path(base.out_dir) / "data"

    def epoch() -> float:
        student = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(student.parameters(), lr=base.recover_lr, weight_decay=5e-4)
        start = time.perf_counter()
        run.train(student, optimizer, 1, "cost epoch")
        seconds = time.perf_counter() - start
        run.discard_epoch_states()
        return seconds

    epochs = [epoch()]
    loader = _search_loader(context)
    calibration = _calibration(context, run)
    pruner = GroupPruner(ChannelGraph(model, run.example), min_channels=base.min_channels, round_to=base.round_to)
    search = PlanSearch(
        pruner,
        target_params=0.15,
        evaluate=lambda m: float(evaluate(m, loader)["map"]),
        calibration=calibration,
        calibration_batches=CALIBRATION_BATCHES,
        candidates=args.candidates,
    )
    records = search.run().records
    epochs.append(epoch())
    scored = [r for r in records if r.score is not None]
    epoch_s = statistics.median(epochs)
    per_candidate = statistics.median(r.total_seconds for r in scored)
    phases = {k: statistics.median(r.seconds[k] for r in scored) for k in ("plan", "apply", "calibrate", "evaluate")}
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {args.threads} torch thread(s)")
    print(f"one training epoch ({len(run.train_loader.dataset)} images): {epoch_s:.1f} s (runs: {epochs})")
    print(
        f"one candidate (median of {len(scored)}): {per_candidate:.1f} s = {per_candidate / epoch_s:.2f} epochs; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
    )
    print(f"{args.candidates} candidates: {sum(r.total_seconds for r in records) / epoch_s:.1f} epochs")


if __name__ == "__main__":
    main()
