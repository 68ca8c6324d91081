"""Where the latency of a pruned detector goes in onnxruntime: a per-node profile, dense against pruned (issue 25).

Why does halving the MACs of yolo11n cut its onnxruntime latency so much less on two threads than on one? This
script answers by measurement. It builds the dense model (BatchNorm scales drawn to look sparse-trained, as in
:mod:`runtime_latency`), ``ours onnxruntime (default)`` at ``target_macs=0.5`` and Torch-Pruning's MetaPruner with
``round_to=8`` at the same MACs (plus ``ours latency_weight=W`` for each ``--latency-weight W``), exports each
(:func:`grouppruner.export.export_onnx`) and runs them in onnxruntime CPU sessions with ``enable_profiling``, at 1
and 2 threads, interleaved as :func:`grouppruner.runtime.compare_latency` times them (the sessions take turns, per
round the fastest of 3 runs counts, so load on the machine hits all alike). Each counted run's node kernel times are
summed per group:

- by op kind: ``conv nchwc`` (the blocked fast path), ``conv plain`` (a convolution off it), ``activation``
  (SiLU, fused into ``QuickGelu``, and Sigmoid), ``reorder`` (NCHWc layout changes), ``concat/split/reshape``,
  ``attention`` (the MatMul / Softmax of C2PSA), ``pool/upsample``, ``other``; plus ``executor`` (below);
- by layer: the top-level module of the node (``model.N`` and its class; Detect split into its ``cv2`` / ``cv3``
  convolutions and the ``decode`` after them: DFL, anchors, concat).

Printed per group: milliseconds in the dense model (median over rounds), its share of the dense run, and each arm's
median per-round ratio to the dense model; ``executor`` is a run's time less its node times (scheduling, waiting
for the pool's threads); a last line gives the share of the dense latency in groups that do not shrink with
channels (whose ratio in the default arm stays above 0.8). All in one process, at the load average printed.
Profiling adds a small cost per node, alike in every arm.

``--split-free`` adds the dense and the default model rewritten by
:func:`grouppruner.integrations.ultralytics.split_free` (C2f blocks without a ``Split``, ratios still to the
original dense model); ``--spin`` opens the sessions with onnxruntime's own default, pool threads that spin while
idle (``Runtime(spin_wait=True)``; without it they sleep, grouppruner's default: what a busy machine needs at 2
threads).

Run: ``nice -n 5 python benchmarks/runtime_profile.py [--model yolo11n] [--size 320] [--rounds 15]
[--latency-weight 1] [--split-free] [--spin] [--threads 1 2]`` (about 3 minutes on a busy 2-core machine).
Needs ultralytics, torch-pruning and onnxruntime (the real-library environment).
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import re
import statistics
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from runtime_latency import TARGET_MACS, build, ours, torch_pruning
from torch import nn

from grouppruner.export import export_onnx
from grouppruner.profile import count_macs, count_params
from grouppruner.runtime import Runtime, cpu_vector_block, session_options

KINDS = {
    "QuickGelu": "activation",
    "Sigmoid": "activation",
    "Mul": "activation",
    "ReorderInput": "reorder",
    "ReorderOutput": "reorder",
    "Concat": "concat/split/reshape",
    "Split": "concat/split/reshape",
    "Reshape": "concat/split/reshape",
    "Transpose": "concat/split/reshape",
    "Slice": "concat/split/reshape",
    "FusedMatMul": "attention",
    "MatMul": "attention",
    "Softmax": "attention",
    "MaxPool": "pool/upsample",
    "Upsample": "pool/upsample",
    "Resize": "pool/upsample",
}


def op_kind(name: str, op: str) -> str:
    """The op-kind group of a profiled node (its name tells whether a Conv runs in the NCHWc layout)."""
    if op == "Conv":
        return "conv nchwc" if "nchwc" in name else "conv plain"
    return KINDS.get(op, "other")


def layer_of(name: str, classes: dict[str, str]) -> str:
    """The layer group of a profiled node: ``model.N Class``, Detect split into convolutions and decode."""
    found = re.match(r"/model\.(\d+)/", name)
    if found is None:
        return "reorder (no layer)" if name.startswith("Reorder") else "other (no layer)"
    index = found.group(1)
    label = f"model.{index} {classes.get(index, '?')}"
    if classes.get(index) in ("Detect", "v10Detect"):
        branch = re.match(r"/model\.\d+/(cv[23])", name)
        return f"{label} {branch.group(1) if branch else 'decode'}"
    return label


Run = tuple[float, dict[str, tuple[str, float]]]
"""One profiled run: its ``model_run`` microseconds and per node ``(op type, kernel microseconds)``."""


def profile(
    datas: list[bytes], x: torch.Tensor, threads: int, rounds: int, calls: int = 3, spin: bool = False
) -> list[list[Run]]:
    """Per model, per round the fastest of ``calls`` profiled runs (as :func:`compare_latency` counts a round):
    ``(model_run us, {node: (op, us)})``; the sessions take turns, the order rotating every round."""
    import onnxruntime as ort

    sessions = []
    with tempfile.TemporaryDirectory() as folder:
        for k, data in enumerate(datas):
            options = session_options(threads, spin_wait=spin)  # the measurement's own settings, plus the profiler
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / f"arm{k}")
            sessions.append(ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]))
        feeds = [{s.get_inputs()[0].name: x.numpy()} for s in sessions]
        warm = 3
        for session, feed in zip(sessions, feeds, strict=True):
            for _ in range(warm):
                session.run(None, feed)
        for index in range(rounds):
            order = list(range(len(sessions)))
            for k in order[index % len(order) :] + order[: index % len(order)]:
                for _ in range(calls):
                    sessions[k].run(None, feeds[k])
        results = []
        for session in sessions:
            runs = _runs(json.loads(Path(session.end_profiling()).read_text()))[warm:]
            results.append([min(runs[r * calls : (r + 1) * calls], key=lambda run: run[0]) for r in range(rounds)])
    return results


def _runs(events: list[dict[str, Any]]) -> list[Run]:
    """The profile's events split into runs (a node belongs to the ``model_run`` whose interval holds it)."""
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run"
    )
    runs: list[Run] = [(float(end - start), {}) for start, end in spans]
    starts = [start for start, _ in spans]
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        index = bisect.bisect_right(starts, event["ts"]) - 1
        if index >= 0:
            name = event["name"][: -len("_kernel_time")]
            runs[index][1][name] = (event["args"].get("op_name", "?"), float(event["dur"]))
    return runs


def table(arms: list[str], results: list[list[Run]], key: Any, title: str) -> tuple[list[str], float]:
    """Rows per group: the dense model's median ms and share, each arm's median per-round ratio to the dense model;
    and the share of the dense time in groups whose ratio in arm 1 stays above 0.8."""
    per_arm: list[list[dict[str, float]]] = []
    for runs in results:
        grouped_runs = []
        for run_us, nodes in runs:
            grouped: dict[str, float] = defaultdict(float)
            for name, (op, us) in nodes.items():
                grouped[key(name, op)] += us
            grouped["executor (run - nodes)"] = run_us - sum(us for _, us in nodes.values())
            grouped["total (model_run)"] = run_us
            grouped_runs.append(grouped)
        per_arm.append(grouped_runs)
    dense_total = statistics.median(g["total (model_run)"] for g in per_arm[0])
    groups = sorted(per_arm[0][0], key=lambda g: -statistics.median(r.get(g, 0.0) for r in per_arm[0]))
    lines = [f"| {title} | dense ms | share | " + " | ".join(arms[1:]) + " |", "|" + "---|" * (2 + len(arms))]
    fixed = 0.0
    for group in groups:
        dense = statistics.median(r.get(group, 0.0) for r in per_arm[0])
        ratios = []
        for runs in per_arm[1:]:
            pairs = [(a.get(group, 0.0), d.get(group, 0.0)) for a, d in zip(runs, per_arm[0], strict=True)]
            ratios.append(statistics.median(a / d for a, d in pairs if d > 0) if dense > 0 else float("nan"))
        if group != "total (model_run)" and ratios and ratios[0] > 0.8:
            fixed += dense / dense_total
        cells = " | ".join(f"x{r:.2f}" for r in ratios)
        lines.append(f"| {group} | {dense / 1e3:.2f} | {dense / dense_total:.1%} | {cells} |")
    return lines, fixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolo11n")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (3 calls each, the fastest kept)")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--latency-weight", type=float, nargs="*", default=[], help="add ours at these weights")
    parser.add_argument("--no-tp", action="store_true", help="leave out Torch-Pruning r8")
    parser.add_argument(
        "--split-free", action="store_true", help="add the dense and default models with split-free C2f blocks"
    )
    parser.add_argument("--spin", action="store_true", help="sessions whose idle pool threads spin")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("grouppruner", "torch", "ultralytics"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    dense, graph_of = build(args.model)
    x = torch.zeros(1, 3, args.size, args.size)
    models: dict[str, nn.Module] = {"dense": dense}
    onnx_rt = Runtime("onnxruntime")
    models["default"], _ = ours(dense, graph_of, args.size, onnx_rt, target_macs=TARGET_MACS)
    for weight in args.latency_weight:
        models[f"lw={weight:g}"], _ = ours(
            dense, graph_of, args.size, onnx_rt, target_macs=TARGET_MACS, latency_weight=weight
        )
    if not args.no_tp:
        models["TP r8"] = torch_pruning(dense, x, count_macs(models["default"], x), 8)
    if args.split_free:
        from grouppruner.integrations.ultralytics import split_free

        models["dense split-free"] = split_free(dense)
        models["default split-free"] = split_free(models["default"])
    classes = {str(i): type(m).__name__ for i, m in enumerate(getattr(dense, "model", []))}
    arms = list(models)
    print(f"{args.model} {args.size}, onnxruntime CPU, block {cpu_vector_block()}, {os.cpu_count()} cores")
    for arm, model in models.items():
        print(
            f"- {arm}: params x{count_params(model) / count_params(dense):.3f}, "
            f"MACs x{count_macs(model, x) / count_macs(dense, x):.3f}"
        )
    datas = [export_onnx(model, x, check=False) for model in models.values()]
    for threads in args.threads:
        load = os.getloadavg()[0]
        results = profile(datas, x, threads, args.rounds, spin=args.spin)
        spin = ", spinning" if args.spin else ""
        print(f"\n### {threads} thread(s){spin}, load average {load:.2f} -> {os.getloadavg()[0]:.2f}\n")
        for title, key in (("op kind", op_kind), ("layer", lambda name, op: layer_of(name, classes))):
            lines, fixed = table(arms, results, key, title)
            print("\n".join(lines))
            print(
                f"\nshare of the dense latency in {title} groups that keep > 0.8 of their time in 'default': "
                f"{fixed:.1%}\n"
            )


if __name__ == "__main__":
    main()
