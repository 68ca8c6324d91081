"""Group channel pruning of the full YOLOv4 (VOC, 416 x 416) against Torch-Pruning, in one process.

What it measures (BN gammas drawn to mimic a sparse-trained model, fixed seed):

1. time of ``ChannelGraph`` + ``GroupPruner.plan(target_params=0.35)`` + ``apply`` (with beta folding), against
   Torch-Pruning's ``MetaPruner`` with ``BNScaleImportance`` (global ranking) at the pruning ratio that gives the
   same parameter count (found by bisection first, untimed; the timed run builds its graph from scratch);
2. parameters, conv + linear MACs and fp32 size of every model;
3. CPU latency, batch 1, 2 threads (and 1 thread): the models take turns in rounds (so that load changes on a
   shared machine hit all alike), each timed over a block of consecutive warm passes; median over the rounds:
   dense, ours, ours with ``round_to=8``, Torch-Pruning.

Run: ``python benchmarks/prune_yolov4.py [--rounds 3]`` (about 1-3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch_pruning as tp
from torch import nn

from grouppruner.detection import yolov4
from grouppruner.graph import ChannelGraph
from grouppruner.profile import count_macs, count_params, measure_latency, model_size_bytes
from grouppruner.pruning import GroupPruner

TARGET = 0.35


def sparse_like_gammas(model: nn.Module, seed: int = 0) -> None:
    """Gammas as after sparse training: per BN a random share of near-zero channels, the rest O(1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                share = torch.rand(1, generator=generator).item()
                small = torch.rand(c, generator=generator) < share
                gamma = torch.rand(c, generator=generator) * 0.9 + 0.1
                module.weight.copy_(torch.where(small, gamma * 1e-3, gamma))
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)


def ours(model: nn.Module, x: torch.Tensor, round_to: int | None) -> tuple[nn.Module, dict[str, float]]:
    times: dict[str, float] = {}
    cpu = time.process_time()
    start = time.perf_counter()
    graph = ChannelGraph(model, x)
    times["graph"] = time.perf_counter() - start
    start = time.perf_counter()
    pruner = GroupPruner(graph, example_inputs=x, min_channels=8, round_to=round_to)
    plan = pruner.plan(target_params=TARGET)
    times["plan"] = time.perf_counter() - start
    start = time.perf_counter()
    pruner.apply(plan)
    times["apply"] = time.perf_counter() - start
    times["total"] = sum(times.values())
    times["cpu"] = time.process_time() - cpu
    return model, times


def head_convs(model: nn.Module) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if n.startswith("head") and isinstance(m, nn.Conv2d)]


def torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.BNScaleImportance(),
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=head_convs(model),
        )
        pruner.step()
    return model


def torch_pruning_ratio(dense: nn.Module, x: torch.Tensor, goal: int, steps: int = 7) -> float:
    """Bisection on Torch-Pruning's global channel ratio until its parameter count is near ``goal``."""
    lo, hi = 0.0, 0.95
    best = (float("inf"), 0.5)
    for _ in range(steps):
        mid = (lo + hi) / 2
        params = count_params(torch_pruning(copy.deepcopy(dense), x, mid))
        best = min(best, (abs(params - goal), mid))
        if params > goal:
            lo = mid
        else:
            hi = mid
    return best[1]


def interleaved_latency(
    models: dict[str, nn.Module], x: torch.Tensor, rounds: int, *, threads: int, block: int = 5
) -> dict[str, float]:
    """Median latency per model over ``rounds`` rounds; in each round every model runs ``block`` warm passes.

    Models take turns round by round, so that load changes on a shared machine hit all of them alike, but each
    is timed over consecutive passes: single passes taken in turn with other models in between measure a cold
    start (another model's weights just went through the caches), not the latency of a deployed model.
    """
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(measure_latency(model, x, repeats=block, warmup=1, threads=threads))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds of 5 passes (median reported)")
    parser.add_argument("--timing-runs", type=int, default=3, help="pruning runs per method (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.zeros(1, 3, 416, 416)
    dense = yolov4(num_classes=20).eval()
    sparse_like_gammas(dense)
    dense_params = count_params(dense)

    # Torch-Pruning's ratio for the same parameter count (ours lands within 1 % of the target), untimed.
    ratio = torch_pruning_ratio(dense, x, round(TARGET * dense_params))
    our_times, tp_times, tp_cpu = [], [], []
    for _ in range(args.timing_runs):  # alternate, so that load changes hit both alike
        pruned, times = ours(copy.deepcopy(dense), x, None)
        our_times.append(times)
        candidate = copy.deepcopy(dense)
        cpu = time.process_time()
        start = time.perf_counter()
        tp_model = torch_pruning(candidate, x, ratio)
        tp_times.append(time.perf_counter() - start)
        tp_cpu.append(time.process_time() - cpu)
    rounded, _ = ours(copy.deepcopy(dense), x, 8)

    print(f"YOLOv4-VOC 416x416, target_params={TARGET}, {torch.get_num_threads()} threads")
    median = {k: statistics.median(t[k] for t in our_times) for k in our_times[0]}
    print(
        f"pruning time (median of {args.timing_runs}): ours {median['total']:.2f} s "
        f"(graph {median['graph']:.2f} + plan {median['plan']:.2f} + apply {median['apply']:.2f}); "
        f"torch-pruning {statistics.median(tp_times):.2f} s (ratio {ratio:.3f}); "
        f"ours / torch-pruning = {median['total'] / statistics.median(tp_times):.2f}; CPU time ours "
        f"{median['cpu']:.2f} s, torch-pruning {statistics.median(tp_cpu):.2f} s "
        f"(ratio {median['cpu'] / statistics.median(tp_cpu):.2f})"
    )

    models = {"dense": dense, "ours": pruned, "ours round_to=8": rounded, "torch-pruning": tp_model}
    latency = interleaved_latency(models, x, args.rounds, threads=2)
    latency_1t = interleaved_latency(models, x, args.rounds, threads=1)
    rows = {
        name: (count_params(m), count_macs(m, x), model_size_bytes(m), latency[name], latency_1t[name])
        for name, m in models.items()
    }
    base = rows["dense"]
    print(
        f"{'model':<16} {'params':>11} {'GMACs':>6} {'MB':>6} {'ms 2thr':>8} {'ms 1thr':>8}  "
        "vs dense: params / MACs / latency 2thr / latency 1thr"
    )
    for name, (params, macs, size, lat, lat1) in rows.items():
        print(
            f"{name:<16} {params:>11,} {macs / 1e9:>6.2f} {size / 2**20:>6.1f} {lat * 1e3:>8.1f} {lat1 * 1e3:>8.1f}  "
            f"{params / base[0]:.3f} / {macs / base[1]:.3f} / {lat / base[3]:.3f} / {lat1 / base[4]:.3f}"
        )
    for name in ("ours", "ours round_to=8", "torch-pruning"):
        _, macs, _, lat, lat1 = rows[name]
        macs_cut = 1 - macs / base[1]
        print(
            f"{name}: latency cut / MACs cut = {(1 - lat / base[3]) / macs_cut:.2f} (2 threads), "
            f"{(1 - lat1 / base[4]) / macs_cut:.2f} (1 thread)"
        )
    print(
        f"latency (2 threads) ours / torch-pruning: {rows['ours'][3] / rows['torch-pruning'][3]:.2f}, "
        f"ours round_to=8 / torch-pruning: {rows['ours round_to=8'][3] / rows['torch-pruning'][3]:.2f} "
        f"(params {rows['ours'][0] / dense_params:.3f} vs {rows['torch-pruning'][0] / dense_params:.3f})"
    )


if __name__ == "__main__":
    main()
