"""Latency-aware budgets on the full YOLOv4: does the MACs cut become the same wall-clock cut? One process.

Setup: YOLOv4-VOC (CSPDarknet53, or ``--backbone mobilenetv2``), BatchNorm scales drawn to look sparse-trained
(fixed seed, :func:`prune_yolov4.sparse_like_gammas`), batch 1, ``--size`` input. A
:class:`grouppruner.latency.LatencyModel` is measured per thread count (cached under ``--cache-dir``); plans use
the model of the first thread count. Arms:

- ``target_params=0.35`` (today's default), and the same with ``latency_weight=1`` (same parameter count, the
  latency-aware ranking);
- ``target_macs`` at the MACs the ``target_params`` arm reached;
- ``target_latency=0.5``, with ``latency_weight`` 0 and 1;
- Torch-Pruning's ``MetaPruner`` (BNScaleImportance, global ranking) at the same parameter count (bisection).

Every model is fused for inference (:func:`grouppruner.export.fuse_for_inference`) and timed in torch eager and in
onnxruntime, 1 and 2 threads, models taking turns round by round (load changes hit all alike), medians. Printed
per arm: params, MACs, measured and predicted latency, latency cut / MACs cut (cut = 1 - pruned / dense). The
goals of issue 13 are checked at the end. ``--write-docs`` replaces the section between the
``<!-- latency-benchmark -->`` markers of docs/benchmarks.md with the printed table (nobody edits it by hand).

Run: ``python benchmarks/latency.py [--quick] [--write-docs]`` (``--quick``: 256 x 256, 2 rounds, 2 latency
repeats per point; about 5-10 minutes on a busy 2-core machine; the full run at 416 takes several times that).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from prune_yolov4 import sparse_like_gammas, torch_pruning, torch_pruning_ratio
from torch import nn

from grouppruner.detection import yolov4
from grouppruner.export import export_onnx, fuse_for_inference
from grouppruner.graph import ChannelGraph
from grouppruner.latency import LatencyModel
from grouppruner.profile import count_macs, count_params, measure_latency
from grouppruner.pruning import GroupPruner

logger = logging.getLogger("benchmarks.latency")

TARGET_PARAMS = 0.35
TARGET_LATENCY = 0.5
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
MARKER = "<!-- latency-benchmark -->"


def _ort_runner(model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        data = export_onnx(model, x, fuse=False, input_names=["images"])  # model is fused already; checks parity
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    return lambda: session.run(None, feed)


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 x 256, 2 rounds, fewer repeats")
    parser.add_argument("--size", type=int, default=None, help="input size (default 416, --quick 256)")
    parser.add_argument("--backbone", default="cspdarknet53", choices=["cspdarknet53", "mobilenetv2"])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--rounds", type=int, default=None, help="latency rounds (default 3, --quick 2)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".latency-cache"))
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    size = args.size or (256 if args.quick else 416)
    rounds = args.rounds or (2 if args.quick else 3)
    repeats = 2 if args.quick else 5
    torch.manual_seed(0)
    x = torch.zeros(1, 3, size, size)
    dense = yolov4(num_classes=20, backbone=args.backbone).eval()
    sparse_like_gammas(dense)
    load_before = os.getloadavg()

    args.cache_dir.mkdir(exist_ok=True)
    latency_models = {}
    for threads in args.threads:
        cache = args.cache_dir / f"yolov4-{args.backbone}-{size}-{threads}t.json"
        start = time.perf_counter()
        latency_models[threads] = LatencyModel.measure(dense, x, threads=threads, repeats=repeats, cache=cache)
        logger.info("latency model, %d threads: %.0f s", threads, time.perf_counter() - start)
    planning = latency_models[args.threads[0]]

    def ours(**options: float) -> nn.Module:
        model = copy.deepcopy(dense)
        pruner = GroupPruner(ChannelGraph(model, x), example_inputs=x, min_channels=8)
        plan = pruner.plan(latency_model=planning, **options)  # type: ignore[arg-type]
        return pruner.apply(plan)

    arms: dict[str, nn.Module] = {"dense": dense}
    arms["target_params=0.35"] = ours(target_params=TARGET_PARAMS)
    arms["target_params=0.35, latency_weight=1"] = ours(target_params=TARGET_PARAMS, latency_weight=1.0)
    macs_ratio = count_macs(arms["target_params=0.35"], x) / count_macs(dense, x)
    arms[f"target_macs={macs_ratio:.3f}"] = ours(target_macs=round(macs_ratio, 3))
    arms["target_latency=0.5"] = ours(target_latency=TARGET_LATENCY)
    arms["target_latency=0.5, latency_weight=1"] = ours(target_latency=TARGET_LATENCY, latency_weight=1.0)
    ratio = torch_pruning_ratio(dense, x, round(TARGET_PARAMS * count_params(dense)), steps=5 if args.quick else 7)
    arms["torch-pruning MetaPruner"] = torch_pruning(copy.deepcopy(dense), x, ratio)

    fused = {name: fuse_for_inference(model, x) for name, model in arms.items()}
    runners: dict[tuple[str, str, int], Callable[[], float]] = {}
    for threads in args.threads:
        for name, model in fused.items():
            runners[(name, "eager", threads)] = (
                lambda m=model, t=threads: measure_latency(m, x, repeats=repeats, warmup=1, threads=t)
            )
            ort_run = _ort_runner(model, x, threads)
            runners[(name, "onnxruntime", threads)] = lambda r=ort_run: _time(r, repeats)
    samples: dict[tuple[str, str, int], list[float]] = {key: [] for key in runners}
    for _ in range(rounds):  # arms take turns, so that load changes on a shared machine hit all alike
        for key, run in runners.items():
            samples[key].append(run())
    measured = {key: statistics.median(values) for key, values in samples.items()}
    load_after = os.getloadavg()

    dense_params, dense_macs = count_params(dense), count_macs(dense, x)
    lines = [
        f"YOLOv4 ({args.backbone}) {size}x{size}, batch 1, BN folded (fuse_for_inference); "
        f"{'quick' if args.quick else 'full'} run, {rounds} rounds of {repeats} passes, medians; "
        f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after on {os.cpu_count()} CPUs; "
        f"plans use the {args.threads[0]}-thread latency model",
        "",
        "| arm | params | GMACs | threads | eager ms | predicted ms | ORT ms | latency cut / MACs cut (eager, ORT) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    results: dict[tuple[str, int], dict[str, float]] = {}
    for threads in args.threads:
        for name, model in arms.items():
            params, macs = count_params(model), count_macs(model, x)
            eager = measured[(name, "eager", threads)]
            onnx = measured[(name, "onnxruntime", threads)]
            predicted = latency_models[threads].predict(model)
            macs_cut = 1 - macs / dense_macs
            cut_eager = (1 - eager / measured[("dense", "eager", threads)]) / macs_cut if macs_cut > 0 else float("nan")
            cut_ort = (1 - onnx / measured[("dense", "onnxruntime", threads)]) / macs_cut if macs_cut else float("nan")
            results[(name, threads)] = {
                "params": params / dense_params,
                "eager": eager,
                "predicted": predicted,
                "cut_eager": cut_eager,
            }
            lines.append(
                f"| {name} | {params / 1e6:.2f} M ({params / dense_params:.3f}) | {macs / 1e9:.2f} | {threads} | "
                f"{eager * 1e3:.1f} | {predicted * 1e3:.1f} | {onnx * 1e3:.1f} | {cut_eager:.2f}, {cut_ort:.2f} |"
            )
    lines += ["", "Prediction error of the latency model (predicted / measured eager - 1, pruned arms):"]
    for threads in args.threads:
        errors = [r["predicted"] / r["eager"] - 1 for (n, t), r in results.items() if t == threads and n != "dense"]
        lines.append(
            f"- {threads} threads: median {np.median(errors):+.1%}, worst {max(errors, key=abs):+.1%}"
        )
    lines += ["", "Goals (issue 13), eager, per thread count:"]
    for threads in args.threads:
        dense_eager = measured[("dense", "eager", threads)]
        for name in ("target_latency=0.5", "target_latency=0.5, latency_weight=1"):
            reached = results[(name, threads)]["eager"] / dense_eager
            lines.append(
                f"- {threads} threads, {name}: measured latency {reached:.3f} of dense (goal 0.45-0.55: "
                f"{'met' if abs(reached - 0.5) <= 0.05 else 'missed'}); latency cut / MACs cut "
                f"{results[(name, threads)]['cut_eager']:.2f} (goal >= 0.85: "
                f"{'met' if results[(name, threads)]['cut_eager'] >= 0.85 else 'missed'})"
            )
        tp_eager = results[("torch-pruning MetaPruner", threads)]["eager"]
        aware = results[("target_params=0.35, latency_weight=1", threads)]["eager"]
        lines.append(
            f"- {threads} threads, same params: torch-pruning / target_params+latency_weight=1 = "
            f"{tp_eager / aware:.2f}x (goal >= 1.2x: {'met' if tp_eager / aware >= 1.2 else 'missed'})"
        )
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        # One block per backbone, so that a run on one backbone leaves the other's table alone.
        marker = MARKER if args.backbone == "cspdarknet53" else MARKER.replace("-->", f"({args.backbone}) -->")
        page = DOCS.read_text()
        block = f"{marker}\n{text}\n{marker}"
        if page.count(marker) == 2:
            page = re.sub(f"{re.escape(marker)}.*?{re.escape(marker)}", lambda _: block, page, flags=re.S)
        else:
            page = page.rstrip("\n") + f"\n\n## Latency-aware budgets, {args.backbone} (benchmarks/latency.py)\n\n"
            page += f"{block}\n"
        DOCS.write_text(page)


if __name__ == "__main__":
    main()
