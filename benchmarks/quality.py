"""Does the method keep the detector's accuracy? The recipe against Torch-Pruning, with ablations, at one budget.

On generated VOC-format data with a reduced YOLOv4 (the ``grouppruner demo`` model), every student arm starts
from the same dense teacher and trains for the same number of epochs (``sparse_epochs + recover_epochs``):

- ``teacher``: the dense model (``dense_epochs``), and ``teacher + fine-tune``: the teacher trained for the
  students' epochs more (AdamW at the recovery learning rate), so that "mAP kept" is not extra training; if
  it gains more than 0.01 mAP, the teacher was not converged and the script says so;
- ``Torch-Pruning``: the library as its users use it: ``BNScalePruner.regularize`` (constant L1 on every BN,
  the recipe's sparse optimizer, learning rate and epochs; rate ``--tp-reg``, default 0.008 (``--quick``: the same
  pull over its shorter run): the warmup pull of the recipe's spared channels under its former defaults
  (0.4 x ``s`` 0.02), kept fixed so that the baseline does not move with our defaults; a constant rate as large
  as the recipe's ``s`` drives every gamma to zero in a short run), global BN-scale ranking
  (``BNScaleImportance(normalizer=None)``, ``global_pruning=True``, heads ignored, ``pruning_ratio`` bisected to
  the parameter budget), fine-tune without distillation;
- ``ours``: :func:`~grouppruner.detection.recipe.run_recipe`'s stages with the recipe defaults, and ablations
  that change one choice each: constant instead of dynamic sparsity, one global threshold instead of
  per-layer-group ones, fine-tune only / attention only instead of attention + output-level distillation.

The two headline arms (``ours`` and ``Torch-Pruning``) run with every seed of ``--seeds`` (the seed of
shuffling and augmentation in the student stages; data and teacher are shared); the table gives
``mean ± half the spread`` (half of max - min) over the seeds. Columns: params and MACs in % of the teacher,
mAP@0.5 after sparse training, after pruning (before any recovery: the measure of whether sparse training did
its job), after recovery, and the final mAP in % of the teacher's.

Usage::

    python benchmarks/quality.py --quick                  # smoke run, a few minutes on 2 cores
    python benchmarks/quality.py --write-docs             # the full run; rewrites the table in docs/benchmarks.md

The table goes to stdout and to ``<out>/quality.md``; ``--write-docs`` also replaces the part of
``docs/benchmarks.md`` between the ``quality:begin`` / ``quality:end`` markers (``quality-quick`` for ``--quick``;
numbers are never edited by hand).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp

from grouppruner.checkpoint import save_pruned
from grouppruner.detection import YOLOv4
from grouppruner.detection.recipe import STAGES, RecipeConfig, RecipeRun, StageResult, sparse_optimizer
from grouppruner.detection.train import evaluate
from grouppruner.profile import count_macs, count_params

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
MARKERS = {False: "quality", True: "quality-quick"}  # --quick writes its own table, never the full run's

# The full run uses the demo's settings with a 300-image validation split; --quick shrinks data and epochs.
FULL: dict[str, Any] = {"num_images": 600, "val_fraction": 0.5}
QUICK: dict[str, Any] = {
    "num_images": 240,
    "val_fraction": 0.5,
    "dense_epochs": 24,
    "sparse_epochs": 12,
    "recover_epochs": 12,
    "finetune_epochs": 3,
    # the L1 pull lr * s * steps / (1 - momentum) of the full run, over 12 epochs of 8 steps instead of 16 x 19
    "sparsity": 0.095,
}

# Torch-Pruning's constant L1 rate: 0.4 x the recipe's former s (0.02 full, 0.063 --quick), the warmup pull that
# the recipe's spared channels got; fixed so that the baseline does not move with the recipe's defaults.
TP_RATE = {False: 0.008, True: 0.0252}

# (arm, RecipeConfig changes, stages reused from the headline arm of the same seed)
ABLATIONS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("ours, constant L1 (not dynamic)", {"sparsity_schedule": "constant"}, ()),
    ("ours, one global threshold (not per group)", {"prune_scope": "global"}, ("sparse",)),
    (
        "ours, fine-tune only (no distillation)",
        {"distill_weight": 0.0, "output_distill_weight": 0.0},
        ("sparse", "pruned"),
    ),
    ("ours, attention distillation only (no output term)", {"output_distill_weight": 0.0}, ("sparse", "pruned")),
]
OURS = "ours: dynamic L1, per-group thresholds, attention + output distillation"
TORCH_PRUNING = "Torch-Pruning: constant L1, global BN-scale threshold, fine-tune"


@dataclasses.dataclass
class Arm:
    """The measurements of one arm and seed (mAP ``None`` where the arm has no such stage)."""

    name: str
    seed: int
    params: int
    macs: int
    final: float
    sparse: float | None = None
    pruned: float | None = None
    seconds: float = 0.0


def _ours(config: RecipeConfig, teacher: Path, reuse: Mapping[str, Path]) -> tuple[dict[str, StageResult], Arm]:
    run = RecipeRun(config, checkpoints={"dense": teacher, **reuse})
    start = time.perf_counter()
    results = {stage: run.run_stage(stage) for stage in STAGES[1:] if stage not in reuse}
    arm = Arm(
        name="",
        seed=config.seed,
        params=results["recovered"].params,
        macs=results["recovered"].macs,
        final=results["recovered"].map50,
        sparse=results["sparse"].map50 if "sparse" in results else None,
        pruned=results["pruned"].map50 if "pruned" in results else None,
        seconds=time.perf_counter() - start,
    )
    return results, arm


def _tp_prune(model: YOLOv4, example: torch.Tensor, target: float, reg: float) -> tp.pruner.BNScalePruner:
    """A global BN-scale pruner whose ``pruning_ratio`` is bisected so that ``target`` of the params remain."""
    params = count_params(model)

    def pruner_at(ratio: float, net: YOLOv4) -> tp.pruner.BNScalePruner:
        return tp.pruner.BNScalePruner(
            net,
            example,
            importance=tp.importance.BNScaleImportance(normalizer=None),
            reg=reg,
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=[net.head.p3, net.head.p4, net.head.p5],
        )

    low, high = 0.0, 0.95
    for _ in range(14):
        middle = (low + high) / 2
        trial = copy.deepcopy(model)
        pruner_at(middle, trial).step()
        if count_params(trial) / params > target:
            low = middle
        else:
            high = middle
    pruner = pruner_at(high, model)
    pruner.step()
    return pruner


def _torch_pruning(config: RecipeConfig, teacher: Path, out: Path, reg: float) -> Arm:
    run = RecipeRun(config, checkpoints={"dense": teacher})
    start = time.perf_counter()
    model = run.load("dense")
    regularizer = tp.pruner.BNScalePruner(
        model, run.example, importance=tp.importance.BNScaleImportance(normalizer=None), reg=reg
    )
    optimizer = sparse_optimizer(model, config.sparse_optimizer, config.sparse_lr)
    run.train(model, optimizer, config.sparse_epochs, "tp sparse", step_hooks=[regularizer.regularize])
    sparse = float(evaluate(model, run.val_loader)["map"])
    _tp_prune(model, run.example, config.target_params, reg)
    pruned = float(evaluate(model, run.val_loader)["map"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.recover_lr, weight_decay=5e-4)
    run.train(model, optimizer, config.recover_epochs, "tp fine-tune")
    final = float(evaluate(model, run.val_loader)["map"])
    torch.save(model.state_dict(), out / f"torch_pruning_seed{config.seed}.pt")
    return Arm(
        name=TORCH_PRUNING,
        seed=config.seed,
        params=count_params(model),
        macs=count_macs(model.eval(), run.example),
        final=final,
        sparse=sparse,
        pruned=pruned,
        seconds=time.perf_counter() - start,
    )


def _teacher_finetuned(config: RecipeConfig, teacher: Path) -> Arm:
    run = RecipeRun(config, checkpoints={"dense": teacher})
    start = time.perf_counter()
    model = run.load("dense")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.recover_lr, weight_decay=5e-4)
    run.train(model, optimizer, config.sparse_epochs + config.recover_epochs, "teacher fine-tune")
    save_pruned(model, Path(config.out_dir) / "dense_finetuned.pt")
    return Arm(
        name=f"teacher + {config.sparse_epochs + config.recover_epochs} epochs fine-tune",
        seed=config.seed,
        params=count_params(model),
        macs=count_macs(model.eval(), run.example),
        final=float(evaluate(model, run.val_loader)["map"]),
        seconds=time.perf_counter() - start,
    )


def _cell(values: Sequence[float | None], percent_of: float | None = None) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    scale = 100.0 / percent_of if percent_of else 1.0
    digits = 1 if percent_of else 3
    mean = statistics.fmean(present) * scale
    if len(present) == 1:
        return f"{mean:.{digits}f}"
    spread = (max(present) - min(present)) * scale
    return f"{mean:.{digits}f} ± {spread / 2:.{digits}f}"


def table(arms: Sequence[Arm], teacher: Arm) -> str:
    """The Markdown table: one row per arm name, seeds pooled (mean ± half the spread)."""
    rows = [
        "| arm | seeds | params % | MACs % | mAP@0.5 after sparse | pruned, before recovery | final mAP@0.5 | "
        "mAP kept % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(a.name for a in arms))
    for name in names:
        group = [a for a in arms if a.name == name]
        rows.append(
            f"| {name} | {', '.join(str(a.seed) for a in group)} | {_cell([a.params for a in group], teacher.params)} "
            f"| {_cell([a.macs for a in group], teacher.macs)} | {_cell([a.sparse for a in group])} "
            f"| {_cell([a.pruned for a in group])} | {_cell([a.final for a in group])} "
            f"| {_cell([a.final for a in group], teacher.final) if teacher.final > 0 else '-'} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (smoke run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the headline arms (0 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="work folder (recreated data)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tp-reg", type=float, default=None, help="Torch-Pruning's L1 rate (0.008; --quick 0.0252)")
    parser.add_argument("--no-ablations", action="store_true", help="only teacher and the two headline arms")
    parser.add_argument(
        "--teacher-checkpoint",
        type=Path,
        help="a dense checkpoint trained with the same settings (e.g. by an earlier run) instead of training one",
    )
    parser.add_argument(
        "--teacher-epochs", type=int, default=None, help="epochs of the teacher's training (default: the demo's 50)"
    )
    parser.add_argument("--write-docs", action="store_true", help=f"replace the table in {DOCS}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    settings = QUICK if args.quick else FULL
    if args.teacher_epochs is not None:
        settings = {**settings, "dense_epochs": args.teacher_epochs}
    started = time.perf_counter()

    base = RecipeConfig(out_dir=str(args.out / "teacher"), **settings)
    data = args.out / "teacher" / "data"
    if args.teacher_checkpoint is None:
        dense = RecipeRun(base).run_stage("dense")  # generates the data set first
    else:
        run = RecipeRun(base, checkpoints={"dense": args.teacher_checkpoint})
        dense = run.result("dense", run.load("dense"), {"from": str(args.teacher_checkpoint)})
    teacher_path = Path(dense.checkpoint)
    teacher = Arm("teacher (dense)", base.seed, dense.params, dense.macs, dense.map50)
    arms = [teacher, _teacher_finetuned(dataclasses.replace(base), teacher_path)]

    def config(name: str, seed: int, **changes: Any) -> RecipeConfig:
        folder = name.split(":")[0].replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        return dataclasses.replace(
            base, out_dir=str(args.out / f"{folder}_seed{seed}"), data_root=str(data), seed=seed, **changes
        )

    headline: dict[int, dict[str, StageResult]] = {}
    tp_reg = args.tp_reg if args.tp_reg is not None else TP_RATE[args.quick]
    for seed in seeds:
        results, arm = _ours(config("ours", seed), teacher_path, {})
        arm.name = OURS
        headline[seed] = results
        arms.append(arm)
        arms.append(_torch_pruning(config("torch pruning", seed), teacher_path, args.out, tp_reg))
    if not args.no_ablations:
        seed = seeds[0]
        for name, changes, reused in ABLATIONS:
            reuse = {stage: Path(headline[seed][stage].checkpoint) for stage in reused}
            _, arm = _ours(config(name, seed, **changes), teacher_path, reuse)
            arm.name = name
            if "sparse" in reused:
                arm.sparse = headline[seed]["sparse"].map50
            if "pruned" in reused:
                arm.pruned = headline[seed]["pruned"].map50
            arms.append(arm)

    minutes = (time.perf_counter() - started) / 60
    gain = arms[1].final - teacher.final
    settings_line = (
        f"{'--quick' if args.quick else 'full'} run, {minutes:.0f} min on {args.threads} threads; "
        f"{base.num_images} generated images at {base.image_size} px "
        f"({round(base.num_images * base.val_fraction)} validation), YOLOv4 width {base.width} / depth {base.depth} "
        f"({teacher.params:,} params); teacher {base.dense_epochs} epochs, students "
        f"{base.sparse_epochs} sparse + {base.recover_epochs} recovery epochs "
        f"({base.finetune_epochs} of them fine-tuning before distillation); budget {base.target_params:.0%} of "
        f"the params; Torch-Pruning rate {tp_reg:g}; seeds {seeds}."
    )
    converged = f"The teacher gains {gain:+.3f} mAP from {base.sparse_epochs + base.recover_epochs} more epochs" + (
        " (converged: <= 0.01)." if gain <= 0.01 else " (NOT converged: > 0.01)."
    )
    markdown = f"{table(arms, teacher)}\n\n{settings_line} {converged}\n"
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.md").write_text(markdown, encoding="utf-8")
    (args.out / "quality.json").write_text(
        json.dumps({"settings": settings, "seeds": seeds, "arms": [dataclasses.asdict(a) for a in arms]}, indent=2),
        encoding="utf-8",
    )
    if args.write_docs:
        marker = MARKERS[args.quick]
        begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
        text = DOCS.read_text(encoding="utf-8")
        if begin not in text or end not in text:
            raise SystemExit(f"{DOCS} has no {begin} ... {end} markers")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        DOCS.write_text(f"{head}{begin}\n{markdown}{end}{tail}", encoding="utf-8")
        print(f"wrote the table into {DOCS}")


if __name__ == "__main__":
    main()
