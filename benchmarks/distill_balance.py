"""How hard each distillation term of the recipe pulls on the student, against the detection loss.

The recipe's recovery adds ``distill_weight`` x the spatial-attention loss and ``output_distill_weight`` x the
output-level loss to the detection loss. This script measures, on ``--steps`` training batches of
``quality.py``'s data, the L2 norm of each weighted term's gradient with respect to the student's parameters
(``gp.distill.gradient_norms``: ``torch.autograd.grad``, no optimizer step) and prints the median ratio of each to
the detection term's, at the recipe's default weights. The student is ``--student`` (a ``save_pruned`` file,
e.g. the ``pruned.pt`` of a recipe run, where its recovery starts) or the teacher pruned to ``--target`` of its
params by the budget solver.

Usage::

    cd runs/quality   # quality.py's work folder
    python ../../benchmarks/distill_balance.py --teacher teacher/dense.pt --student p15/ours_seed0/pruned.pt \
        --data teacher/data
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
from pathlib import Path

import torch
from quality import FULL

from grouppruner.checkpoint import load_pruned
from grouppruner.detection.distill import YoloOutputDistill
from grouppruner.distill import AttentionDistiller, gradient_norms
from grouppruner.graph import ChannelGraph
from grouppruner.pruning import GroupPruner
from grouppruner.recipe import RecipeConfig, RecipeRun, load_weights
from grouppruner.recipe.stages import distilled_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="the dense demo model (state_dict or save_pruned)")
    parser.add_argument("--student", type=Path, help="a save_pruned student (default: the teacher pruned)")
    parser.add_argument("--target", type=float, default=0.15, help="params kept when the teacher is pruned here")
    parser.add_argument("--steps", type=int, default=12, help="training batches measured (default 12)")
    parser.add_argument(
        "--data", type=Path, default=Path("runs/quality/teacher/data"), help="quality.py's data (made if missing)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/distill_balance"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data if (args.data / "ImageSets" / "Main" / "train.txt").is_file() else None
    config = RecipeConfig(out_dir=str(args.out), data_root=str(data) if data else None, **FULL)
    run = RecipeRun(config)
    teacher = run.new_model()
    load_weights(teacher, args.teacher)
    student = run.new_model()
    if args.student is not None:
        load_pruned(student, args.student)
        where = str(args.student)
    else:
        load_weights(student, args.teacher)
        pruner = GroupPruner(ChannelGraph(student, run.example), min_channels=config.min_channels)
        pruner.apply(pruner.plan(target_params=args.target))
        where = f"the teacher pruned to {args.target:g} of its params (no sparse stage)"
    distiller = AttentionDistiller(teacher, student, distilled_layers(student, config.distill_layers))
    output_distill = YoloOutputDistill.from_model(teacher, temperature=config.distill_temperature)
    student.train()
    ratios: dict[str, list[float]] = {"attention": [], "output": []}
    norms: dict[str, list[float]] = {"detection": [], "attention": [], "output": []}
    for images, targets in itertools.islice(run.train_loader, args.steps):
        outputs = distiller(images)
        detection, _ = run.loss_fn(outputs, targets)
        attention = config.distill_weight * distiller.loss()[0]
        output, _ = output_distill(outputs, distiller.last_teacher_output, targets)
        terms = {"detection": detection, "attention": attention, "output": config.output_distill_weight * output}
        measured = gradient_norms(terms, student.parameters())
        for name, value in measured.items():
            norms[name].append(value)
        for name in ratios:
            ratios[name].append(measured[name] / measured["detection"])
    distiller.remove()
    print(f"student: {where}; {args.steps} training batches of {config.batch_size}")
    print(
        f"load average {os.getloadavg()[0]:.2f}; weights: attention {config.distill_weight:g}, output "
        f"{config.output_distill_weight:g} (the recipe's defaults)"
    )
    print("| term | median gradient norm | median ratio to the detection term | range of the ratio |")
    print("|---|---|---|---|")
    print(f"| detection | {statistics.median(norms['detection']):.4g} | 1 | - |")
    for name, values in ratios.items():
        print(
            f"| {name} x weight | {statistics.median(norms[name]):.4g} | {statistics.median(values):.3f} "
            f"| {min(values):.3f} - {max(values):.3f} |"
        )


if __name__ == "__main__":
    main()
