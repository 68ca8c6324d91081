"""The community baselines against ours for yolov8n at half the MACs, on data that separates methods (issue 27).

The same data, dense checkpoint and settings as ``ultralytics_distill.py`` (whose ``fine-tune`` arm is ours
without distillation). Every arm starts from that dense model, trains ``--sparse-epochs + --recover-epochs`` more
epochs inside the Ultralytics trainer (SGD, lr0 0.01, batch 16) and ends at ``--target-macs`` of the dense model's
MACs, counted by ``grouppruner.profile.count_macs`` as ``gpu.compress`` counts them:

- ``slimming-<s>``: network slimming as the Ultralytics forks do it. ``--sparse-epochs`` with L1 on every
  BatchNorm scale at the constant rate ``s`` (``BNSparsity`` on the whole model, ``Constant(s)``: ``s * sign(gamma)``
  added to the unscaled gamma gradients each optimizer step); then one global threshold on ``|gamma|``: Torch-
  Pruning's ``MetaPruner`` with ``BNScaleImportance`` (raw ``|gamma|``, coupled channels by their mean) and
  ``global_pruning`` on a split-free copy, its global ratio (equivalently the threshold) bisected to the MACs
  budget; the head's prediction convs kept; then ``--recover-epochs`` of fine-tuning;
- ``tp-magnitude``: Torch-Pruning's YOLOv8 recipe (L2 magnitude, one ratio in every layer, 4 iterative steps,
  ratio bisected to the budget) on the dense model, fine-tuned all the epochs;
- ``groupnorm-<reg>``: Torch-Pruning's ``GroupNormPruner`` with ``GroupMagnitudeImportance(p=2)`` (Torch-Pruning
  1.6's name for ``GroupNormImportance``): ``--sparse-epochs`` with ``pruner.regularize(model)`` after every
  backward pass (a gradient hook of the trainer), then pruned by the same pruner kind (one ratio in every layer,
  Torch-Pruning's default, bisected to the budget), then ``--recover-epochs`` of fine-tuning;
- ``ours-search``: ``gpu.compress(..., search_candidates=16)``, otherwise the ``fine-tune`` arm of
  ``ultralytics_distill.py``: the seed's ``base`` folder is copied (dense and sparse reused) and the pruned stage
  redone with the plan search.

Each finished arm is recorded in ``--results`` (default ``benchmarks/results/ultralytics_baselines/seed<k>.json``):
a rerun skips it, a killed arm reruns (a finished sparse stage is reused). ``--report`` prints the table from the
records; ``--write-docs`` puts it into docs/benchmarks.md between the ``ultralytics-baselines`` markers and draws
the figure (mAP50-95 against params kept, every arm, seeds and means) into ``docs/img/ultralytics_baselines.png``::

    YOLO_OFFLINE=1 nice -n 10 python benchmarks/ultralytics_baselines.py --seeds 0 --out runs/udistill \\
        --arms slimming-1e-3 tp-magnitude ours-search
    YOLO_OFFLINE=1 python benchmarks/ultralytics_baselines.py --report --write-docs
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _ultralytics_arms import (
    RESULTS,
    add_common_arguments,
    bisect_ratio,
    head_outputs,
    prepare,
    read_record,
    replace_docs,
    settings,
    size_of,
    split_free_trainable,
    torch_pruning_recipe,
    train,
    trained_model,
    trainer_kwargs,
    validate,
    write_record,
)
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")

MARK = "<!-- ultralytics-baselines -->"
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "img" / "ultralytics_baselines.png"
OURS = "ours without search (`ultralytics_distill.py`'s fine-tune)"
DISTILL_RESULTS = RESULTS / "ultralytics_distill"
SEARCH_CANDIDATES = 16
#: Every arm, in the order the first seed runs them by default.
ARMS = (
    "slimming-1e-3",
    "tp-magnitude",
    "ours-search",
    "slimming-1e-4",
    "slimming-5e-3",
    "groupnorm-1e-4",
    "groupnorm-5e-4",
)


#: The report's order: ours, then the baselines by family and rate.
TABLE_ORDER = (
    "ours-search",
    "tp-magnitude",
    "groupnorm-1e-4",
    "groupnorm-5e-4",
    "slimming-1e-4",
    "slimming-1e-3",
    "slimming-5e-3",
)


class ConstantSlimming:
    """The forks' sparse training: L1 on every BatchNorm scale of the model at a constant rate, each step."""

    def __init__(self, s: float) -> None:
        self.s = s

    def attach(self, trainer: Any) -> None:
        trainer.add_callback("on_pretrain_routine_end", self._start)

    def _start(self, trainer: Any) -> None:
        from ultralytics.utils.torch_utils import unwrap_model

        from grouppruner.sparsity import BNSparsity

        sparsity = BNSparsity(unwrap_model(trainer.model), schedule=self.s, scaler=trainer.scaler)
        trainer.gradient_hooks.append(lambda _: sparsity.step())


class GroupNormRegularizer:
    """Torch-Pruning's group-norm sparse learning as a gradient hook: ``pruner.regularize(model)`` each step."""

    def __init__(self, pruner: Any, model: nn.Module) -> None:
        self.pruner, self.model = pruner, model

    def attach(self, trainer: Any) -> None:
        trainer.gradient_hooks.append(lambda _: self.pruner.regularize(self.model))


def _group_norm_pruner(model: nn.Module, imgsz: int, reg: float, ratio: float) -> Any:
    import torch_pruning as tp

    return tp.pruner.GroupNormPruner(
        model,
        torch.zeros(1, 3, imgsz, imgsz),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        reg=reg,
        pruning_ratio=ratio,
        ignored_layers=head_outputs(model),
    )


def _slimming_prune(model: nn.Module, target: float, imgsz: int) -> tuple[nn.Module, float, float]:
    import torch_pruning as tp

    example = torch.zeros(1, 3, imgsz, imgsz)

    def prune(net: nn.Module, ratio: float) -> None:
        tp.pruner.MetaPruner(
            net,
            example,
            importance=tp.importance.BNScaleImportance(normalizer=None),
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=head_outputs(net),
        ).step()

    return bisect_ratio(split_free_trainable(model).eval(), prune, target, imgsz)


def _finish(last: Path, data: Path, kwargs: dict[str, Any], dense_size: tuple[int, int]) -> dict[str, Any]:
    from grouppruner.integrations import ultralytics as gpu

    row: dict[str, Any] = validate(last, data, kwargs)
    params, macs = size_of(gpu.load(last).model, kwargs["imgsz"])
    row.update(params_ratio=params / dense_size[0], macs_ratio=macs / dense_size[1])
    return row


def run_arm(args: argparse.Namespace, label: str, seed: int, dense: Path, data: Path) -> dict[str, Any]:
    """Train, prune and fine-tune one arm in ``<out>/seed<k>/baselines/<label>``; its record row."""
    from ultralytics import YOLO

    from grouppruner.integrations import ultralytics as gpu

    kwargs = trainer_kwargs(args, seed)
    folder = args.out / f"seed{seed}" / "baselines" / label
    dense_model = YOLO(str(dense)).model
    dense_size = size_of(dense_model, args.imgsz)
    total = args.sparse_epochs + args.recover_epochs
    kind, _, rate = label.partition("-")
    if label == "ours-search":
        base = args.out / f"seed{seed}" / "base"
        if not (folder / "results.json").is_file() and (base / "results.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("dense.pt", "sparse.pt", "results.json"):  # the pruned stage onwards is redone
                shutil.copy2(base / name, folder / name)
        result = gpu.compress(
            YOLO(str(dense)),
            data=data,
            out=folder,
            target_macs=args.target_macs,
            sparse_epochs=args.sparse_epochs,
            recover_epochs=args.recover_epochs,
            finetune_epochs=args.recover_epochs,
            distill_attention=0.0,
            distill_output=0.0,
            search_candidates=SEARCH_CANDIDATES,
            **kwargs,
        )
        stages = {s.stage: s for s in result.stages}
        final = stages["recovered"]
        search = stages["pruned"].extra.get("search", {})
        return {
            "map50_95": final.map50_95,
            "map50": final.map50,
            "params_ratio": final.params / stages["dense"].params,
            "macs_ratio": final.macs / stages["dense"].macs,
            "pruned_map50_95": stages["pruned"].map50_95,
            "search_minutes": search.get("seconds", float("nan")) / 60,
            "search_chosen": search.get("kind"),
        }
    if label == "tp-magnitude":
        pruned, ratio, fraction = torch_pruning_recipe(dense_model, args.target_macs, args.imgsz)
        last = train(pruned, data, total, folder / "finetune", kwargs)
        return {**_finish(last, data, kwargs, dense_size), "pruning_ratio": ratio, "pruned_macs_ratio": fraction}
    if kind == "slimming":
        sparse_last = train(
            dense_model, data, args.sparse_epochs, folder / "sparse", kwargs, ConstantSlimming(float(rate)), reuse=True
        )
        sparse_model = trained_model(sparse_last)
        pruned, ratio, fraction = _slimming_prune(sparse_model, args.target_macs, args.imgsz)
    elif kind == "groupnorm":
        free = split_free_trainable(dense_model).eval()
        regularizer = GroupNormRegularizer(_group_norm_pruner(free, args.imgsz, float(rate), 0.5), free)
        sparse_last = train(free, data, args.sparse_epochs, folder / "sparse", kwargs, regularizer, reuse=True)
        sparse_model = trained_model(sparse_last)

        def prune(net: nn.Module, ratio: float) -> None:
            _group_norm_pruner(net, args.imgsz, float(rate), ratio).step()

        pruned, ratio, fraction = bisect_ratio(sparse_model.eval(), prune, args.target_macs, args.imgsz)
    else:
        raise SystemExit(f"unknown arm {label!r}; one of {', '.join(ARMS)}")
    sparse_row = validate(sparse_last, data, kwargs)
    last = train(pruned, data, args.recover_epochs, folder / "finetune", kwargs)
    row = _finish(last, data, kwargs, dense_size)
    row.update(sparse_map50_95=sparse_row["map50_95"], pruning_ratio=ratio, pruned_macs_ratio=fraction)
    return row


def run_seed(args: argparse.Namespace, seed: int, dense: Path, data: Path) -> None:
    record_path = args.results / f"seed{seed}.json"
    record = read_record(record_path)
    if record.get("settings") != settings(args):
        record = {"settings": settings(args), "dense": validate(dense, data, trainer_kwargs(args, seed)), "arms": {}}
        write_record(record_path, record)
    for label in args.arms:
        if label in record["arms"]:
            print(f"seed {seed}: {label}: recorded earlier, {record['arms'][label]['map50_95']:.4f}", flush=True)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] seed {seed}: {label} ...", flush=True)
        started = time.perf_counter()
        try:
            row = run_arm(args, label, seed, dense, data)
        except (RuntimeError, ValueError, IndexError, KeyError) as error:  # a peer failing is a result to report
            row = {"map50_95": float("nan"), "map50": float("nan"), "error": f"{type(error).__name__}: {error}"}
        row["minutes"] = (time.perf_counter() - started) / 60
        record["arms"][label] = row
        write_record(record_path, record)
        print(f"seed {seed}: {label}: mAP50-95 {row['map50_95']:.4f} ({row['minutes']:.1f} min)", flush=True)


def _mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f}" if values else "-"


def _records_of(args: argparse.Namespace, folder: Path) -> dict[int, dict[str, Any]]:
    found = {int(p.stem[4:]): read_record(p) for p in sorted(folder.glob("seed*.json"))}
    wanted = settings(args).items()
    return {k: v for k, v in found.items() if all(v.get("settings", {}).get(x) == y for x, y in wanted)}


def draw(args: argparse.Namespace, path: Path) -> None:
    """mAP50-95 against params kept (fractions of the dense model), every arm at the budget: seeds as dots, means
    as large markers; the dense model fine-tuned as a line (``--write-docs`` writes ``docs/img``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records, distill = _records_of(args, args.results), _records_of(args, DISTILL_RESULTS)
    arms = {OURS: [distill.get(s, {}).get("arms", {}).get("fine-tune") for s in sorted(records)]}
    arms |= {label: [records[s]["arms"].get(label) for s in sorted(records)] for label in TABLE_ORDER}
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots()
    markers = iter("os^vDP*Xh")
    for label, rows in arms.items():
        good = [r for r in rows if r and r["map50_95"] == r["map50_95"] and "params_ratio" in r]
        if not good:
            continue
        xs, ys = [100 * r["params_ratio"] for r in good], [r["map50_95"] for r in good]
        marker = next(markers)
        line = axes.plot(xs, ys, marker, alpha=0.35, markersize=5)[0]
        axes.plot(
            statistics.fmean(xs),
            statistics.fmean(ys),
            marker,
            color=line.get_color(),
            markersize=10,
            label=f"{label.replace('`', '')} ({len(good)} seeds)",
        )
    dense_ft = [a.get("arms", {}).get("dense, fine-tuned", {}).get("map50_95") for a in distill.values()]
    if any(v is not None for v in dense_ft):
        value = statistics.fmean(v for v in dense_ft if v is not None)
        axes.axhline(value, color="0.3", linestyle="--", label=f"dense, fine-tuned ({value:.3f})")
    s = settings(args)
    axes.set(
        xlabel="params kept (% of the dense model)",
        ylabel="mAP50-95 (validation)",
        title=f"yolov8n at {s['target_macs']:.0%} of the MACs (ultralytics_baselines.py)",
    )
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(args: argparse.Namespace) -> str:
    """The table: per arm, mAP50-95 per seed and mean, mAP50, sizes, the difference to ours without the search
    (the ``fine-tune`` arm of ``ultralytics_distill.py``, same seed) and the share of the dense model fine-tuned."""
    records = _records_of(args, args.results)
    distill = _records_of(args, DISTILL_RESULTS)
    if not records:
        return "no finished seed with these settings"
    seeds = sorted(records)
    reference = {s: distill.get(s, {}).get("arms", {}).get("fine-tune", {}).get("map50_95") for s in seeds}
    dense_ft = {s: distill.get(s, {}).get("arms", {}).get("dense, fine-tuned", {}).get("map50_95") for s in seeds}
    fallback = distill.get(0, {}).get("arms", {}).get("dense, fine-tuned", {}).get("map50_95")
    lines = [
        f"| arm | mAP50-95, seed {' / '.join(map(str, seeds))} | mean (seeds) | mAP50 mean | params | MACs | "
        "vs ours without search (points) | share of the dense fine-tuned | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows_by_label: dict[str, list[dict[str, Any] | None]] = {
        OURS: [distill.get(s, {}).get("arms", {}).get("fine-tune") for s in seeds]
    }
    for label in TABLE_ORDER:
        rows_by_label[label] = [records[s]["arms"].get(label) for s in seeds]
    for label, rows in rows_by_label.items():
        if not any(rows):
            continue
        good = [r for r in rows if r and r["map50_95"] == r["map50_95"]]
        values = [f"{r['map50_95']:.4f}" if r else "-" for r in rows]
        diffs = [
            f"{100 * (r['map50_95'] - reference[s]):+.2f}" if r and reference[s] is not None else "-"
            for r, s in zip(rows, seeds, strict=True)
        ]
        shares = [
            f"{100 * r['map50_95'] / (dense_ft[s] or fallback):.1f} %" if r and (dense_ft[s] or fallback) else "-"
            for r, s in zip(rows, seeds, strict=True)
        ]
        params = _mean([r["params_ratio"] for r in good if "params_ratio" in r])
        macs = _mean([r["macs_ratio"] for r in good if "macs_ratio" in r])
        minutes = [r["minutes"] for r in rows if r and "minutes" in r]
        search = [r["search_minutes"] for r in rows if r and "search_minutes" in r]
        cost = f"{statistics.fmean(minutes):.1f}" if minutes else "-"
        if search:
            cost += f" (search {statistics.fmean(search):.1f})"
        error = next((r["error"] for r in rows if r and "error" in r), "")
        lines.append(
            f"| {label} | {' / '.join(values)} | {_mean([r['map50_95'] for r in good])} ({len(good)}) | "
            f"{_mean([r['map50'] for r in good])} | {params} | {macs} | {' / '.join(diffs)} | "
            f"{' / '.join(shares)} | {cost} |" + (f" {error[:120]}" if error else "")
        )
    dense = " / ".join(f"{records[s]['dense']['map50_95']:.4f}" for s in seeds)
    ft = " / ".join(f"{dense_ft[s]:.4f}" if dense_ft[s] is not None else "-" for s in seeds)
    s = settings(args)
    head = (
        f"yolov8n on {s['images']} generated cluttered images (8 classes) at {s['imgsz']} px; the dense model "
        f"({s['dense_epochs']} epochs) scores {dense}, fine-tuned {s['sparse_epochs'] + s['recover_epochs']} more "
        f"epochs {ft} (a missing seed's share uses seed 0's); every arm {s['sparse_epochs']} sparse + "
        f"{s['recover_epochs']} fine-tuning epochs (tp-magnitude: all {s['sparse_epochs'] + s['recover_epochs']} "
        f"fine-tuning) at {s['target_macs']} of the MACs; params and MACs as fractions of the dense model's; "
        "SGD lr0 0.01, batch 16, one CPU thread per process, minutes on a shared 2-core machine."
    )
    return "\n".join([head, "", *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "runs/udistill")
    parser.add_argument("--results", type=Path, default=RESULTS / "ultralytics_baselines")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="run these arms, in this order")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.report:
        data, dense = prepare(args)
        for seed in args.seeds:
            run_seed(args, seed, dense, data)
    text = report(args)
    print(text)
    if args.write_docs:
        replace_docs(MARK, text)
        draw(args, FIGURE)


if __name__ == "__main__":
    main()
