"""Half the latency, not half the MACs: pruning for the runtime the model ships on (issue 25).

Setup: detectors with BatchNorm scales drawn to look sparse-trained (fixed seed,
:func:`prune_yolov4.sparse_like_gammas`), batch 1, onnxruntime's CPU execution provider (the exported ONNX of
:func:`grouppruner.export.export_onnx`), 1 and 2 threads. Models: yolov8n and yolo11n (Ultralytics, from their
yaml), yolov4-tiny (its darknet cfg from tests/data), YOLOv4 with CSPDarknet53 and with MobileNetV2. Arms, all at
``target_macs=0.5`` unless named otherwise:

- ``ours torch``: ``runtime="torch"`` (any width: the behaviour before runtimes);
- ``ours onnxruntime (default)``: ``runtime="onnxruntime"``, the default (kept widths on the CPU's vector block);
- ``ours onnxruntime, block 2x``: the same with twice the vector block (wider blocks);
- ``ours onnxruntime, latency_weight=W`` (``--latency-weights``, default 1 and 2): the default's MACs, with channels
  priced by their measured time (one onnxruntime latency model at the default threads, shared by the weights):
  at equal scores, the channels whose removal saves more time go first;
- ``ours onnxruntime (default), split-free C2f`` (Ultralytics models): the default's model rewritten by
  :func:`grouppruner.integrations.ultralytics.split_free` for deployment (C2f / C3k2 without a ``Split``: the
  layout reorders around it go; same outputs). Torch-Pruning's arms get the same rewrite (it cannot follow the
  ``chunk``), so against the dense model (with its Splits) they carry this gain too;
- ``TP r8`` / ``TP r16``: Torch-Pruning's MetaPruner (BN-scale importance, global ranking) with ``round_to`` 8 / 16,
  its ratio bisected to the MACs of ``ours onnxruntime`` (the fair baseline);
- ``ours target_latency=0.5``: planned in onnxruntime at the thread count of the row, measured and corrected
  (the value measured while planning is shown too); Ultralytics models planned through ``split_free`` and timed
  rewritten, as the flows ship them and as Torch-Pruning's arms run (:func:`ours_at_latency`);
  ``ours target_latency=0.5, latency_weight=W`` the same with the first of ``--latency-weights``.

Each (model, threads) row times the dense model and all arms interleaved in onnxruntime
(:func:`grouppruner.runtime.compare_latency`: the models take turns, per round the fastest of 3 calls, medians of
per-round ratios); one more comparison times the dense model, ``ours torch`` and the default in eager PyTorch at
1 thread (what the default costs a model that stays in PyTorch). At equal measured latency (the issue's third
goal), per (model, threads): Torch-Pruning r8's ratio is bisected so that its latency measured in onnxruntime
(interleaved against the dense model, 5 rounds a step) matches what ``ours target_latency=0.5`` measured in the
row's comparison; it and both ``target_latency`` arms are then timed once more against the dense model (rows
``equal latency: ...``) and a verdict line gives the parameters each keeps, and in brackets the live ones
(:func:`live_params`: weights between channels that vary; Torch-Pruning's BN-scale importance divides each group's
scores by their mean, so it keeps near-zero-gamma channels whose weights only add a constant) (``--no-equal-latency``
skips it).
Printed per arm: params and MACs kept, latency kept, and latency cut / MACs cut (cut = 1 - pruned / dense; 1.0:
latency falls as much as MACs), the load average. ``--busy`` starts one busy process (a Python spin loop) beside
the measurement. ``--write-docs`` replaces the section between the ``<!-- runtime-latency[ busy] -->`` markers of
docs/benchmarks.md with the table (``--section NAME``: between ``<!-- runtime-latency NAME -->``, e.g. for the
YOLOv4 family run apart with ``--models``).

``--only`` runs one question alone, on the models of the run (short enough for a busy machine):

- ``--only split-free``: the dense model, ``ours onnxruntime (default)``, and both rewritten by ``split_free``,
  interleaved per thread count (what decides the flows' ``split_free`` default);
- ``--only spin``: the dense model in two onnxruntime sessions taking turns, pool threads spinning
  (``Runtime(spin_wait=True)``, onnxruntime's own default) and sleeping (what decides ``DEFAULT_SPIN_WAIT``);
- ``--only target-latency``: ``ours target_latency=0.5`` alone: the fraction measured while planning and again
  in the row's comparison (with ``--busy``: under one more busy process).

Run: ``nice -n 10 python benchmarks/runtime_latency.py [--quick] [--busy] [--models M ...] [--threads 1 2]
[--only split-free|spin|target-latency] [--write-docs]`` (``--quick``: yolov8n and yolo11n at 320 only, about
30 minutes on a busy 2-core machine; the full run adds 640 and the YOLOv4 family at 416 and takes several times
that; an ``--only`` question on one model takes 1-4 minutes). Needs ultralytics, torch-pruning and onnxruntime
(the real-library environment).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from prune_yolov4 import sparse_like_gammas
from torch import nn

from grouppruner.graph import ChannelGraph
from grouppruner.integrations.ultralytics.deploy import SplitFreeC2f
from grouppruner.latency import LatencyModel
from grouppruner.profile import count_macs, count_params
from grouppruner.pruning import GroupPruner
from grouppruner.runtime import Runtime, compare_latency, cpu_vector_block

logger = logging.getLogger("benchmarks.runtime_latency")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
TARGET_MACS = 0.5
TARGET_LATENCY = 0.5


def build(name: str) -> tuple[nn.Module, Callable[[nn.Module, int], ChannelGraph]]:
    """The dense model (sparse-looking gammas, eval mode) and how to build its channel graph at a size."""
    if name in ("yolov8n", "yolo11n"):
        from ultralytics.nn.tasks import DetectionModel

        from grouppruner.integrations.ultralytics import channel_graph

        model: nn.Module = DetectionModel(f"{name}.yaml", nc=80, verbose=False)
        graph_of: Callable[[nn.Module, int], ChannelGraph] = lambda m, s: channel_graph(m, imgsz=s)  # noqa: E731
    elif name == "yolov4-tiny":
        from grouppruner.detection.darknet import from_darknet

        model = from_darknet(ROOT / "tests" / "data" / "darknet" / "yolov4-tiny.cfg")
        graph_of = lambda m, s: ChannelGraph(m, torch.zeros(1, 3, s, s))  # noqa: E731
    else:
        from grouppruner.detection import yolov4

        model = yolov4(num_classes=20, backbone="mobilenetv2" if name.endswith("mobilenetv2") else "cspdarknet53")
        graph_of = lambda m, s: ChannelGraph(m, torch.zeros(1, 3, s, s))  # noqa: E731
    sparse_like_gammas(model, seed=0)
    return model.eval(), graph_of


def ours(
    dense: nn.Module, graph_of: Callable[[nn.Module, int], ChannelGraph], size: int, runtime: Runtime, **plan: Any
) -> tuple[nn.Module, Any]:
    """A pruned copy of ``dense`` planned with ``plan`` (keywords of :meth:`GroupPruner.plan`), and the plan."""
    model = copy.deepcopy(dense)
    pruner = GroupPruner(graph_of(model, size), min_channels=8, runtime=runtime)
    found = pruner.plan(**plan)
    pruner.apply(found)
    return model.eval(), found


def ours_at_latency(
    dense: nn.Module,
    graph_of: Callable[[nn.Module, int], ChannelGraph],
    size: int,
    runtime: Runtime,
    name: str,
    weight: float = 0.0,
) -> tuple[nn.Module, Any]:
    """``ours target_latency=0.5`` as the flows ship it: an Ultralytics model is planned through
    :func:`~grouppruner.integrations.ultralytics.split_free` and returned rewritten (``gpu.prune``'s onnxruntime
    default), like Torch-Pruning's arms; other models as they are."""
    if name not in ("yolov8n", "yolo11n"):
        return ours(dense, graph_of, size, runtime, target_latency=TARGET_LATENCY, latency_weight=weight)
    from grouppruner.integrations.ultralytics import split_free
    from grouppruner.integrations.ultralytics.deploy import planning_runtime

    model, plan = ours(
        dense, graph_of, size, planning_runtime(runtime, True), target_latency=TARGET_LATENCY, latency_weight=weight
    )
    return split_free(model), plan


def live_params(model: nn.Module, images: torch.Tensor) -> int:
    """Conv weights that connect a varying input channel to a varying output channel on ``images`` (N, 3, H, W).

    A channel whose BatchNorm scale is near zero outputs the constant ``act(beta)`` at every position: the weights
    reading it act as a bias, and a conv whose own output is constant adds nothing either. A channel counts as
    varying when its standard deviation over batch and positions is at least 3 % of the largest in its tensor
    (sparse-like gammas: live 0.1-1, dead 1e-4-1e-3). The capacity that "params kept" means to count.
    """
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def varying(tensor: torch.Tensor) -> torch.Tensor:
        std = tensor.detach().float().transpose(0, 1).reshape(tensor.shape[1], -1).std(1)
        return std >= 0.03 * std.max()

    hooks = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(
                module.register_forward_hook(lambda m, a, o, n=module_name: inputs.__setitem__(n, varying(a[0])))
            )
        conv, norm = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):  # conv + BN + act: its output
            key = f"{module_name}.conv"
            hooks.append(module.register_forward_hook(lambda m, a, o, n=key: outputs.__setitem__(n, varying(o))))
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for hook in hooks:
            hook.remove()
    total = 0
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or module_name not in inputs:
            continue
        live_in = inputs[module_name].float().reshape(module.groups, -1).sum(1)  # per conv group
        live_out = outputs.get(module_name, torch.ones(module.out_channels, dtype=torch.bool)).float()
        owner = torch.arange(module.out_channels) // (module.out_channels // module.groups)
        total += int((live_out * live_in[owner]).sum()) * module.weight[0, 0].numel()
    return total


def _split_free(model: nn.Module) -> nn.Module:
    """Torch-Pruning cannot follow C2f's ``chunk``: its own YOLOv8 example rewrites the block without it."""
    try:
        from ultralytics.nn.modules.block import C2f
    except ImportError:
        return model
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, C2f):
                setattr(module, child_name, SplitFreeC2f(child))
    return model


def _tp_ignored(model: nn.Module) -> list[nn.Module]:
    head = getattr(model, "model", [None])[-1] if hasattr(model, "model") else None
    if head is not None and hasattr(head, "cv2"):  # Ultralytics: output convs, DFL, attention (fixed head widths)
        ignored = [branch[-1] for attr in ("cv2", "cv3") for branch in getattr(head, attr)] + [head.dfl]
        return ignored + [m for m in model.modules() if type(m).__name__ == "Attention"]
    # YOLOv4 / darknet: the last conv before every output (its channels are the predictions)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    outs = [m for m in convs if m.out_channels in (75, 255) or (m.out_channels % 85 == 0 and m.out_channels <= 255)]
    return outs


def tp_pruner(dense: nn.Module, x: torch.Tensor, round_to: int) -> Callable[[float], nn.Module]:
    """``ratio -> model``: Torch-Pruning's MetaPruner (BN-scale importance, global ranking) at ``round_to``."""
    import torch_pruning as tp

    base = _split_free(copy.deepcopy(dense))
    for parameter in base.parameters():
        parameter.requires_grad_(True)

    def pruned(ratio: float) -> nn.Module:
        model = copy.deepcopy(base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tp.pruner.MetaPruner(
                model,
                x,
                importance=tp.importance.BNScaleImportance(),
                global_pruning=True,
                pruning_ratio=ratio,
                round_to=round_to,
                ignored_layers=_tp_ignored(model),
            ).step()
        return model.eval()

    return pruned


def torch_pruning(dense: nn.Module, x: torch.Tensor, macs_goal: float, round_to: int) -> nn.Module:
    """Torch-Pruning MetaPruner at ``round_to``, its global ratio bisected to ``macs_goal`` (our MACs count)."""
    pruned = tp_pruner(dense, x, round_to)
    lo, hi, best = 0.0, 0.9, (float("inf"), dense)
    for _ in range(7):
        mid = (lo + hi) / 2
        model = pruned(mid)
        macs = count_macs(model, x)
        best = min(best, (abs(macs - macs_goal), model), key=lambda item: item[0])
        lo, hi = (mid, hi) if macs > macs_goal else (lo, mid)
    return best[1]


def tp_at_latency(
    dense: nn.Module, x: torch.Tensor, runtime: Runtime, goal: float, steps: int = 6
) -> tuple[nn.Module, float]:
    """Torch-Pruning r8 with its global ratio bisected so that its latency *measured* in ``runtime`` (interleaved
    against the dense model, 5 rounds) comes closest to ``goal``; the model and that measured fraction."""
    pruned = tp_pruner(dense, x, 8)
    dense_runner = runtime.runner(dense, x)
    lo, hi, best = 0.0, 0.9, (float("inf"), dense, 1.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        model = pruned(mid)
        measured = compare_latency([dense_runner, runtime.runner(model, x)], runtime=runtime, rounds=5).ratios[1]
        logger.info("TP r8 ratio %.3f: latency x%.3f (goal x%.3f)", mid, measured, goal)
        best = min(best, (abs(measured - goal), model, measured), key=lambda item: item[0])
        lo, hi = (mid, hi) if measured > goal else (lo, mid)
    return best[1], best[2]


def _row(
    name: str,
    size: int,
    threads: int,
    arm: str,
    model: nn.Module | None,
    dense: nn.Module,
    x: torch.Tensor,
    latency: float | None,
) -> dict[str, Any]:
    if model is None:
        return {"model": name, "size": size, "threads": threads, "arm": arm, "failed": True}
    macs = count_macs(model, x) / count_macs(dense, x)
    params = count_params(model) / count_params(dense)
    return {
        "model": name,
        "size": size,
        "threads": threads,
        "arm": arm,
        "params": params,
        "macs": macs,
        "latency": latency,
        "cut": None if latency is None or macs > 1 - 1e-6 else (1 - latency) / (1 - macs),
    }


def run_model(name: str, size: int, threads_list: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    dense, graph_of = build(name)
    x = torch.zeros(1, 3, size, size)
    start = time.perf_counter()
    arms: dict[str, nn.Module | None] = {}
    arms["ours torch"], _ = ours(dense, graph_of, size, Runtime("torch"), target_macs=TARGET_MACS)
    arms["ours onnxruntime (default)"], _ = ours(dense, graph_of, size, Runtime("onnxruntime"), target_macs=TARGET_MACS)
    wide = 2 * cpu_vector_block()
    arms[f"ours onnxruntime, block {wide}"], _ = ours(
        dense, graph_of, size, Runtime("onnxruntime", block=wide), target_macs=TARGET_MACS
    )
    if args.latency_weights:  # one latency model for every weight: measured once, on a copy of the dense model
        graph = graph_of(copy.deepcopy(dense), size)
        latency_model = LatencyModel.measure(
            graph.model, graph.example_inputs, forward_fn=graph.forward_fn, runtime=Runtime("onnxruntime")
        )
    for weight in args.latency_weights:
        arms[f"ours onnxruntime, latency_weight={weight:g}"], _ = ours(
            dense,
            graph_of,
            size,
            Runtime("onnxruntime"),
            target_macs=TARGET_MACS,
            latency_weight=weight,
            latency_model=latency_model,
        )
    if name in ("yolov8n", "yolo11n"):  # the deployment rewrite: C2f blocks without a Split (same numbers)
        from grouppruner.integrations.ultralytics import split_free

        arms["ours onnxruntime (default), split-free C2f"] = split_free(arms["ours onnxruntime (default)"])
    goal = count_macs(arms["ours onnxruntime (default)"], x)  # type: ignore[arg-type]
    for round_to in (8, 16):
        try:
            arms[f"TP r{round_to}"] = torch_pruning(dense, x, goal, round_to)
        except Exception as error:  # a baseline that fails on a model is a result, reported as such
            logger.warning(
                "Torch-Pruning round_to=%d failed on %s: %s: %s", round_to, name, type(error).__name__, str(error)[:200]
            )
            arms[f"TP r{round_to}"] = None
    logger.info("%s %d: target_macs arms built in %.0f s", name, size, time.perf_counter() - start)
    rows = []
    for threads in threads_list:
        runtime = Runtime("onnxruntime", threads=threads)
        timed = dict(arms)
        planned: dict[str, Any] = {}
        if name in ("yolov8n", "yolo11n") or not args.quick:
            weights = [0.0, *args.latency_weights[:1]]  # the default, and the first weight at equal latency
            for weight in weights:
                arm = "ours target_latency=0.5" + (f", latency_weight={weight:g}" if weight else "")
                start = time.perf_counter()
                timed[arm], planned[arm] = ours_at_latency(dense, graph_of, size, runtime, name, weight)
                logger.info(
                    "%s %d, %d threads: %s planned in %.0f s, measured in planning %.3f",
                    name,
                    size,
                    threads,
                    arm,
                    time.perf_counter() - start,
                    planned[arm].latency["ratio"],
                )
        table = _timed_rows(name, size, runtime, dense, x, timed, planned, args.rounds)
        rows += table
        if planned and args.equal_latency:
            mine = {arm: timed[arm] for arm in planned}
            goal = next(row for row in table if row["arm"] == "ours target_latency=0.5").get("latency")
            rows += _equal_latency_rows(name, size, runtime, dense, x, mine, goal)
    eager = {arm: arms[arm] for arm in ("ours torch", "ours onnxruntime (default)")}
    rows += _timed_rows(name, size, Runtime("torch", threads=1), dense, x, eager, {}, args.rounds)
    return rows


def only_rows(name: str, size: int, threads_list: list[int], only: str, rounds: int) -> list[dict[str, Any]]:
    """The rows of one ``--only`` question for one model (see the module doc)."""
    dense, graph_of = build(name)
    x = torch.zeros(1, 3, size, size)
    rows: list[dict[str, Any]] = []
    if only == "split-free":
        from grouppruner.integrations.ultralytics import split_free

        default, _ = ours(dense, graph_of, size, Runtime("onnxruntime"), target_macs=TARGET_MACS)
        timed = {
            "dense, split-free C2f": split_free(dense),
            "ours onnxruntime (default)": default,
            "ours onnxruntime (default), split-free C2f": split_free(default),
        }
        for threads in threads_list:
            rows += _timed_rows(name, size, Runtime("onnxruntime", threads=threads), dense, x, timed, {}, rounds)
    elif only == "spin":
        for threads in threads_list:
            spinning, sleeping = (Runtime("onnxruntime", threads=threads, spin_wait=s) for s in (True, False))
            runners = [spinning.runner(dense, x), sleeping.runner(dense, x)]
            result = compare_latency(runners, runtime=sleeping, rounds=rounds)
            row = _row(name, size, threads, "dense, pool threads sleeping (spin_wait=False)", dense, dense, x, None)
            row.update(runtime="onnxruntime", load=result.load_average[1], dense_ms=result.seconds[0] * 1e3)
            row.update(latency=result.ratios[1], spin=True)
            line = (
                f"{name} {size}, {threads} thread(s), dense: spinning {result.seconds[0] * 1e3:.1f} ms, sleeping "
                f"{result.seconds[1] * 1e3:.1f} ms (x{result.ratios[1]:.3f} of spinning), load average "
                f"{result.load_average[0]:.2f} -> {result.load_average[1]:.2f}"
            )
            print(line, flush=True)
            row["verdict"] = line
            rows.append(row)
    else:
        for threads in threads_list:
            runtime = Runtime("onnxruntime", threads=threads)
            model, plan = ours_at_latency(dense, graph_of, size, runtime, name)
            arm = "ours target_latency=0.5"
            rows += _timed_rows(name, size, runtime, dense, x, {arm: model}, {arm: plan}, rounds)
    return rows


def _timed_rows(
    name: str,
    size: int,
    runtime: Runtime,
    dense: nn.Module,
    x: torch.Tensor,
    timed: dict[str, nn.Module | None],
    planned: dict[str, Any],
    rounds: int,
) -> list[dict[str, Any]]:
    """One interleaved comparison of the dense model and the arms in ``runtime``, as table rows (``planned``:
    per ``target_latency`` arm its plan, whose fraction measured while planning is shown)."""
    present = {arm: model for arm, model in timed.items() if model is not None}
    runners = [runtime.runner(dense, x)] + [runtime.runner(model, x) for model in present.values()]
    heavy = count_macs(dense, x) > 5e9  # YOLOv4 at 416: fewer, single calls
    result = compare_latency(runners, runtime=runtime, rounds=5 if heavy else rounds, calls=1 if heavy else 3)
    ratios = dict(zip(present, result.ratios[1:], strict=True))
    rows = []
    for arm, model in timed.items():
        row = _row(name, size, runtime.thread_count(), arm, model, dense, x, ratios.get(arm))
        row.update(runtime=runtime.name, load=result.load_average[1], dense_ms=result.seconds[0] * 1e3)
        if arm in planned:
            row["planned"] = planned[arm].latency["ratio"]
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def _equal_latency_rows(
    name: str,
    size: int,
    runtime: Runtime,
    dense: nn.Module,
    x: torch.Tensor,
    mine: dict[str, nn.Module | None],
    goal: float | None,
) -> list[dict[str, Any]]:
    """Goal 3: Torch-Pruning r8 bisected to ``goal``, the latency ``ours target_latency=0.5`` measured, then timed
    with ``mine`` against the dense model in one more comparison; the rows and a verdict on the parameters kept."""
    if goal is None:
        return []
    start = time.perf_counter()
    try:
        tp_model, _ = tp_at_latency(dense, x, runtime, goal)
    except Exception as error:  # a baseline that fails on a model is a result, reported as such
        logger.warning("Torch-Pruning at equal latency failed on %s: %s: %s", name, type(error).__name__, error)
        return []
    threads = runtime.thread_count()
    logger.info(
        "%s %d, %d threads: TP r8 bisected on latency in %.0f s", name, size, threads, time.perf_counter() - start
    )
    timed = {f"equal latency: {arm}": model for arm, model in mine.items()}
    timed["equal latency: TP r8"] = tp_model
    rows = _timed_rows(name, size, runtime, dense, x, timed, {}, 15)
    images = torch.rand(2, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    dense_live = live_params(dense, images)
    for row in rows:
        if not row.get("failed"):
            row["live"] = live_params(timed[row["arm"]], images) / dense_live  # type: ignore[arg-type]
    ours_rows, tp_row = [row for row in rows if not row.get("failed")][:-1], rows[-1]
    kept = ", ".join(
        f"{row['params']:.3f} [live {row['live']:.3f}] (x{row['latency']:.3f}, {row['arm'][15:]})" for row in ours_rows
    )
    verdict = (
        f"{name} {size}, {threads} thread(s), equal measured latency: ours keeps {kept} vs TP "
        f"{tp_row['params']:.3f} [live {tp_row['live']:.3f}] (x{tp_row['latency']:.3f}) of the params "
        "[live: of the weights between varying channels, live_params]"
    )
    print(verdict, flush=True)
    rows[0]["verdict"] = verdict
    return rows


HEADER = (
    "| model | input | runtime | threads | dense ms | arm | params kept | MACs kept | latency kept "
    "| latency cut / MACs cut | load |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(row: dict[str, Any]) -> str:
    where = f"| {row['model']} | {row['size']} | {row['runtime']} | {row['threads']} |"
    if row.get("failed"):
        return f"{where} | {row['arm']} | failed | | | | |"
    if row.get("spin"):  # --only spin: a ratio to the spinning session, not a cut
        ratio = f"x{row['latency']:.3f} of spinning"
        return f"{where} {row['dense_ms']:.1f} | {row['arm']} | | | {ratio} | | {row['load']:.2f} |"
    latency = f"x{row['latency']:.3f}" + (f" (x{row['planned']:.3f} in planning)" if "planned" in row else "")
    return (
        f"{where} {row['dense_ms']:.1f} | {row['arm']} | {row['params']:.3f} | {row['macs']:.3f} | {latency} | "
        f"{'' if row['cut'] is None else format(row['cut'], '.2f')} | {row['load']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="yolov8n and yolo11n at 320 only")
    parser.add_argument("--busy", action="store_true", help="run one busy process beside the measurement")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per comparison")
    parser.add_argument("--models", nargs="*", help="a subset of the models")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2], help="onnxruntime thread counts")
    parser.add_argument(
        "--latency-weights", type=float, nargs="*", default=[1.0, 2.0], help="ours at these latency_weight values"
    )
    parser.add_argument(
        "--no-equal-latency", dest="equal_latency", action="store_false", help="skip the equal-latency comparison"
    )
    parser.add_argument("--only", choices=["split-free", "spin", "target-latency"], help="one question alone")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    parser.add_argument(
        "--section",
        help="with --write-docs: the markers <!-- runtime-latency SECTION --> (default: the --quick / --busy table)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("grouppruner", "torch", "ultralytics"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    plan = [("yolov8n", 320), ("yolo11n", 320)]
    if not args.quick:
        plan += [("yolov8n", 640), ("yolo11n", 640), ("yolov4-tiny", 416), ("yolov4-mobilenetv2", 416), ("yolov4", 416)]
    if args.models:
        plan = [item for item in plan if item[0] in args.models]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    lines = [
        f"onnxruntime CPU, block {cpu_vector_block()}, {os.cpu_count()} cores, "
        f"{'one busy process beside it' if busy else 'no extra load'}; load average at start "
        f"{os.getloadavg()[0]:.2f}",
        "",
        HEADER,
    ]
    print("\n".join(lines), flush=True)
    verdicts: list[str] = []
    try:
        for name, size in plan:
            try:
                if args.only:
                    rows = only_rows(name, size, args.threads, args.only, args.rounds)
                else:
                    rows = run_model(name, size, args.threads, args)
            except Exception as error:  # one model failing must not hide the others' numbers
                logger.warning("%s %d failed: %s: %s", name, size, type(error).__name__, str(error)[:300])
                continue
            lines += [format_row(row) for row in rows]
            verdicts += [row["verdict"] for row in rows if "verdict" in row]
    finally:
        if busy is not None:
            busy.kill()
    if verdicts:
        lines += ["", *(f"- {verdict}" for verdict in verdicts)]
    if args.write_docs and args.only:
        logger.warning("--write-docs writes the full table; --only %s printed its rows only", args.only)
    elif args.write_docs:
        section = args.section or ("busy" if args.busy else "")
        marker = f"<!-- runtime-latency{f' {section}' if section else ''} -->"
        text = DOCS.read_text()
        block = f"{marker}\n" + "\n".join(lines) + f"\n{marker}"
        pattern = re.compile(re.escape(marker) + ".*?" + re.escape(marker), re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        DOCS.write_text(text)


if __name__ == "__main__":
    main()
