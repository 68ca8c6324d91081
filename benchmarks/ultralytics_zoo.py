"""Every detection model yaml that ships with Ultralytics: built, graphed and pruned to half its MACs, or refused.

For each model (the smallest scale of each yaml, built offline from the yaml with random weights), in a
subprocess of its own, on one thread, with a limit on its CPU time (so that a shared machine's load does not
count): the channel graph at ``--imgsz`` (its build time in CPU seconds, its channel groups and how many are
prunable), :func:`grouppruner.integrations.ultralytics.prune` to ``target_macs=0.5``, and whether the decoded
predictions keep their shapes. RT-DETR's decoder is not a YOLO head: its CNN backbone and neck go through the
core API (``ChannelGraph`` on the whole model). A model the graph cannot map must be refused within the limit,
with the module and the reason; a model that does not build offline (YOLO-World and YOLOE need a text encoder
download) is listed as such. Prints a Markdown table::

    YOLO_OFFLINE=1 python benchmarks/ultralytics_zoo.py --imgsz 64 --cpu-limit 120
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("YOLO_OFFLINE", "1")

MODELS = (
    "yolov3-tiny.yaml",
    "yolov3.yaml",
    "yolov3-spp.yaml",
    "yolov5n.yaml",
    "yolov5n6.yaml",
    "yolov6n.yaml",
    "yolov8n.yaml",
    "yolov8n-p2.yaml",
    "yolov8n-p6.yaml",
    "yolov8n-ghost.yaml",
    "yolov8n-seg.yaml",
    "yolov8n-pose.yaml",
    "yolov8n-obb.yaml",
    "yolov9t.yaml",
    "yolov9c.yaml",
    "yolov10n.yaml",
    "yolo11n.yaml",
    "yolo11n-seg.yaml",
    "yolo11n-pose.yaml",
    "yolo11n-obb.yaml",
    "yolo12n.yaml",
    "yolo12n-seg.yaml",
    "yolo12n-pose.yaml",
    "yolo12n-obb.yaml",
    "rtdetr-l.yaml",
    "yolov8s-world.yaml",
    "yolov8s-worldv2.yaml",
    "yoloe-v8s.yaml",
    "yoloe-11s.yaml",
)


def _predictions(out: object) -> object:
    # eval mode returns (decoded predictions, raw outputs); the raw outputs repeat the neck features, whose
    # widths pruning changes by design
    return out[0] if isinstance(out, tuple) else out


def _shapes(out: object) -> list[tuple[int, ...]]:
    import torch

    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, (list, tuple)):
        return [s for item in out for s in _shapes(item)]
    if isinstance(out, dict):
        return [s for key in sorted(out) for s in _shapes(out[key])]
    return []


def one(cfg: str, imgsz: int) -> dict[str, object]:
    """Build, graph and prune one model in this process; the row of the table."""
    import torch
    from ultralytics import RTDETR, YOLO

    import grouppruner as gp
    from grouppruner.integrations import ultralytics as gpu
    from grouppruner.profile import count_macs, count_params

    torch.set_num_threads(1)
    row: dict[str, object] = {"model": cfg}
    try:
        yolo = RTDETR(cfg) if cfg.startswith("rtdetr") else YOLO(cfg)
    except Exception as error:  # the row says why it does not build
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return {**row, "status": f"does not build offline: {type(error).__name__}: {first[:100]}"}
    model = yolo.model.float().eval()
    x = torch.rand(1, 3, imgsz, imgsz)
    with torch.no_grad():
        before = _shapes(_predictions(model(x)))
    params, macs = count_params(model), count_macs(model, x)
    detr = "RTDETR" in type(model.model[-1]).__name__
    start = time.process_time()
    try:
        graph = gp.ChannelGraph(model, x) if detr else gpu.channel_graph(yolo, imgsz=imgsz)
        row["build_s"] = round(time.process_time() - start, 2)
        row["groups"] = f"{sum(g.prunable for g in graph.channel_groups)}/{len(graph.channel_groups)}"
        if detr:
            pruner = gp.GroupPruner(graph, min_channels=8)
            pruner.apply(pruner.plan(target_macs=0.5))
        else:
            gpu.prune(yolo, target_macs=0.5, imgsz=imgsz)
    except gp.GroupPrunerError as error:
        return {**row, "build_s": round(time.process_time() - start, 2), "status": f"refused: {error}"}
    model.eval()
    with torch.no_grad():
        after = _shapes(_predictions(model(x)))
    row["params_kept"] = round(count_params(model) / params, 3)
    row["macs_kept"] = round(count_macs(model, x) / macs, 3)
    row["status"] = "pruned, outputs intact" if after == before else f"pruned, outputs changed {before} -> {after}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--cpu-limit", type=int, default=120, help="CPU seconds one model may take")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.imgsz)))
        return
    print(f"Ultralytics detection yamls at imgsz {args.imgsz}, target_macs=0.5, {args.cpu_limit} CPU s per model\n")
    print("| model | graph build (CPU s) | groups prunable/all | params kept | MACs kept | status |")
    print("|---|---|---|---|---|---|")
    for cfg in MODELS:
        command = [sys.executable, __file__, "--imgsz", str(args.imgsz), "--one", cfg]
        def limit(seconds: int = args.cpu_limit) -> None:
            resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))

        done = subprocess.run(command, capture_output=True, text=True, check=False, preexec_fn=limit)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        row = json.loads(lines[-1]) if lines else {"model": cfg, "status": f"crashed: {tail[:120]}"}
        if done.returncode in (-9, -24):  # SIGKILL / SIGXCPU: the CPU time ran out
            row = {"model": cfg, "status": f"did not finish in {args.cpu_limit} CPU s"}
        cells = [row.get(k, "") for k in ("model", "build_s", "groups", "params_kept", "macs_kept", "status")]
        print("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
