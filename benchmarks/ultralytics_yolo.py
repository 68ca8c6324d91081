"""Ultralytics YOLOv8n: ours against Torch-Pruning's recipe and the dense model, at the same total epochs.

From one dense yolov8n trained with the Ultralytics trainer on a generated YOLO-format data set:

- (a) ours: sparse training, pruning to ``--target-macs``, fine-tuning then distillation (``gpu.compress``);
- (b) ours without distillation (the same run folder up to the pruned stage, then plain fine-tuning);
- (b') ours with only the attention term, (b'') only the output term (``--ablation``);
- (c) Torch-Pruning's YOLOv8 recipe: C2f rewritten without ``chunk`` (``gpu.split_free``: two 1x1 convs instead of
  one split), ``MagnitudePruner`` with L2 ``MagnitudeImportance`` in iterative steps, its ratio bisected to the same
  MACs (``_ultralytics_arms.torch_pruning_recipe``), then
  fine-tuning for all the epochs through the Ultralytics trainer (a module handed to it is kept as it is);
- (d) the dense model fine-tuned for the same epochs.

Prints mAP50-95, mAP50, params, MACs and onnxruntime latency (batch 1, 1 and 2 threads) per method, the ratios
the goals are stated in, and writes the table into docs/benchmarks.md between the ``ultralytics-yolo`` markers::

    YOLO_OFFLINE=1 python benchmarks/ultralytics_yolo.py --images 160 --imgsz 128 --dense-epochs 60 \\
        --sparse-epochs 10 --recover-epochs 20 --ablation --latency-imgsz 320
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _ultralytics_arms import torch_pruning_recipe
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")

MARK = "<!-- ultralytics-yolo -->"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _train_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "imgsz": args.imgsz,
        "batch": args.batch,
        "workers": 0,
        "plots": False,
        "device": "cpu",
        "amp": False,
        "verbose": False,
    }


def fine_tune(module: nn.Module, data: Path, epochs: int, out: Path, name: str, kwargs: dict[str, Any]) -> Path:
    """Train ``module`` as it is with the Ultralytics trainer (grouppruner's subclass); its last weights file."""
    from grouppruner.integrations import ultralytics as gpu

    results = out / name / "results.csv"
    if results.is_file() and len(results.read_text().splitlines()) == epochs + 1:  # finished in an earlier run
        return out / name / "weights" / "last.pt"
    trainer = gpu.DetectionTrainer(
        overrides={
            "model": "yolov8n.yaml",
            "data": str(data),
            "epochs": epochs,
            "project": str(out),
            "name": name,
            "exist_ok": True,
            **kwargs,
        }
    )
    trainer.model = module.float().train()
    trainer.train()
    return out / name / "weights" / "last.pt"


def measure(weights: Path, data: Path, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """mAP50-95, mAP50, params, MACs and onnxruntime batch-1 latency (median ms) at 1 and 2 threads."""
    import onnxruntime as ort
    from ultralytics import YOLO

    from grouppruner.profile import count_macs, count_params

    yolo = YOLO(str(weights))
    module = copy.deepcopy(yolo.model).float().eval()
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    row = {"params": float(count_params(module)), "macs": float(count_macs(module, x))}
    metrics = yolo.val(data=str(data), imgsz=args.imgsz, batch=args.batch, device="cpu", plots=False, verbose=False)
    row.update(map50_95=float(metrics.box.map), map50=float(metrics.box.map50))
    onnx_file = out / f"{weights.parent.parent.name}-{weights.stem}.onnx"
    side = args.latency_imgsz or args.imgsz
    shutil.copyfile(YOLO(str(weights)).export(format="onnx", imgsz=side, simplify=False), onnx_file)
    feed = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(5):
            session.run(None, {name: feed})
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            session.run(None, {name: feed})
            times.append(time.perf_counter() - start)
        row[f"ms_{threads}t"] = 1e3 * statistics.median(times)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--imgsz", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dense-epochs", type=int, default=10)
    parser.add_argument("--sparse-epochs", type=int, default=3)
    parser.add_argument("--recover-epochs", type=int, default=6)
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--tp-steps", type=int, default=4, help="Torch-Pruning's iterative steps")
    parser.add_argument(
        "--latency-imgsz", type=int, default=None, help="input side of the latency measurement (default --imgsz)"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed onnxruntime runs per model and thread count")
    parser.add_argument("--ablation", action="store_true", help="also the attention-only and output-only runs")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()

    torch.set_num_threads(2)
    from ultralytics import YOLO

    from grouppruner.integrations import ultralytics as gpu

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gp-ultralytics-bench-"))
    kwargs = _train_kwargs(args)
    started = time.perf_counter()
    data = gpu.make_synthetic_yolo(out / "data", args.images, image_size=args.imgsz, num_classes=3)
    dense = out / "dense" / "weights" / "last.pt"
    if not dense.is_file():  # a rerun on the same --out reuses the dense model (and compress its run folders)
        torch.manual_seed(0)
        YOLO("yolov8n.yaml").train(
            data=str(data), epochs=args.dense_epochs, project=str(out), name="dense", exist_ok=True, **kwargs
        )
    total = args.sparse_epochs + args.recover_epochs
    common = {"target_macs": args.target_macs, "sparse_epochs": args.sparse_epochs}
    common["recover_epochs"] = args.recover_epochs
    runs: dict[str, Path] = {}

    ours = gpu.compress(YOLO(str(dense)), data=data, out=out / "ours", **common, **kwargs)
    runs["(a) ours: sparse + prune + fine-tune + distil"] = Path(ours.checkpoint)
    variants = {"(b) ours without distillation": {"distill_attention": 0.0, "distill_output": 0.0}}
    if args.ablation:
        variants["(b') ours, attention term only"] = {"distill_output": 0.0}
        variants["(b'') ours, output term only"] = {"distill_attention": 0.0}
    for label, options in variants.items():
        folder = out / {"(b)": "no-distill", "(b')": "attention-only", "(b'')": "output-only"}[label.split()[0]]
        shutil.copytree(out / "ours", folder, dirs_exist_ok=True)  # dense / sparse / pruned are reused
        result = gpu.compress(YOLO(str(dense)), data=data, out=folder, **options, **common, **kwargs)
        runs[label] = Path(result.checkpoint)

    tp_model, _, _ = torch_pruning_recipe(YOLO(str(dense)).model, args.target_macs, args.imgsz, args.tp_steps)
    runs["(c) Torch-Pruning recipe + fine-tune"] = fine_tune(tp_model, data, total, out, "torch-pruning", kwargs)
    runs["(d) dense, fine-tuned"] = fine_tune(YOLO(str(dense)).model, data, total, out, "dense-ft", kwargs)
    rows = {label: measure(path, data, args, out) for label, path in runs.items()}

    base = rows["(d) dense, fine-tuned"]
    ours_row = rows["(a) ours: sparse + prune + fine-tune + distil"]
    tp_row = rows["(c) Torch-Pruning recipe + fine-tune"]
    lines = [
        "| method | mAP50-95 | mAP50 | params | MACs | ORT ms, 1 thread | ORT ms, 2 threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        lines.append(
            f"| {label} | {row['map50_95']:.4f} | {row['map50']:.4f} | {row['params'] / 1e6:.3f} M "
            f"({row['params'] / base['params']:.2f}) | {row['macs'] / 1e6:.1f} M ({row['macs'] / base['macs']:.2f}) "
            f"| {row['ms_1t']:.2f} | {row['ms_2t']:.2f} |"
        )
    keep = ours_row["map50_95"] / base["map50_95"] if base["map50_95"] > 0 else float("nan")
    macs_cut = 1 - ours_row["macs"] / base["macs"]
    goals = [
        f"- ours keeps {keep:.1%} of (d)'s mAP50-95 at {ours_row['macs'] / base['macs']:.1%} of the MACs "
        f"(goal >= 99 % at <= 50 %)",
        f"- ours - (c): {100 * (ours_row['map50_95'] - tp_row['map50_95']):+.2f} points mAP50-95 (goal >= +1)",
    ]
    for threads in (1, 2):
        latency_cut = 1 - ours_row[f"ms_{threads}t"] / base[f"ms_{threads}t"]
        goals.append(f"- latency cut / MACs cut, {threads} thread(s): {latency_cut / macs_cut:.2f} (goal >= 0.8)")
    minutes = (time.perf_counter() - started) / 60
    settings = (
        f"{args.images} generated images (3 classes) at {args.imgsz} px, batch {args.batch}; dense "
        f"{args.dense_epochs} epochs, then {total} epochs per method ({args.sparse_epochs} sparse + "
        f"{args.recover_epochs} recovery for ours); target {args.target_macs} of the MACs; "
        f"Torch-Pruning {args.tp_steps} iterative steps; latency at {args.latency_imgsz or args.imgsz} px; "
        f"{minutes:.1f} min on the CPU"
    )
    text = "\n".join([settings, "", *lines, "", *goals])
    print(text)
    print(json.dumps(rows, indent=1))
    if not args.no_docs:
        page = DOCS.read_text(encoding="utf-8")
        if page.count(MARK) == 2:
            head, _, rest = page.partition(MARK)
            _, _, tail = rest.partition(MARK)
            DOCS.write_text(f"{head}{MARK}\n{text}\n{MARK}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
