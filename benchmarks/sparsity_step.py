"""Cost of BNSparsity.step() on a full-size YOLOv4, against a training step and torch-pruning's regularizer.

Measures, in one process on the same model and gradients (median of repeats, interleaved):

- a full training step: forward + YoloLoss + backward + SGD step (batch 2, 320x320);
- ``BNSparsity.step()`` for a plain-model target (every BN), a ChannelGraph target (prunable channels only,
  per-channel masks) and the Dynamic schedule after warmup (per-channel rates from a global quantile);
- ``torch_pruning.pruner.BNScalePruner.regularize(model)`` (a Python loop over all modules).

Prints each time, BNSparsity as a percentage of the training step, and the ratio to torch-pruning
(< 1: faster). Targets: <= 0.5 % of a step, ratio <= 1.

``--busy N`` starts N busy-looping processes for the regularizer timings (an oversubscribed machine, as when
other jobs share the cores); ``--skip-train`` leaves out the (slow) training-step timing. The "no finite check"
variant runs the per-BatchNorm ``torch._foreach_*`` path; the others build the update on one flat host copy.

Usage: python benchmarks/sparsity_step.py [--threads 2] [--size 320] [--batch 2] [--repeats 5] [--busy 0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch_pruning as tp

from grouppruner.detection import yolov4
from grouppruner.detection.loss import YoloLoss
from grouppruner.graph import ChannelGraph
from grouppruner.sparsity import BNSparsity, Constant, Dynamic


def _median_ms(fn: Callable[[], object], repeats: int, inner: int) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` back-to-back calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times) * 1e3


def _spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="training-step repeats (regularizer: 5 x 50)")
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes during the regularizer timings")
    parser.add_argument("--skip-train", action="store_true", help="do not time the training step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = yolov4(20).train()
    images = torch.rand(args.batch, 3, args.size, args.size)
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(args.batch):
        xy = torch.rand(4, 2, generator=g) * args.size * 0.6
        wh = 16 + torch.rand(4, 2, generator=g) * args.size * 0.35
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 20, (4,), generator=g)})
    loss_fn = YoloLoss(20, anchors=model.anchors)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    example = torch.randn(1, 3, args.size, args.size)
    start = time.perf_counter()
    graph = ChannelGraph(model, example)
    graph_s = time.perf_counter() - start
    tp_pruner = tp.pruner.BNScalePruner(model, example, importance=tp.importance.BNScaleImportance(), reg=1e-4)
    model.train()

    ours = {
        "BNSparsity(model), Constant": BNSparsity(model, schedule=Constant(1e-4)),
        "BNSparsity(graph), Constant": BNSparsity(graph, schedule=Constant(1e-4)),
        "BNSparsity(graph), Dynamic active": BNSparsity(graph, schedule=Dynamic(1e-4, warmup=0.0), total_steps=10**9),
        "BNSparsity(graph), Constant, no finite check": BNSparsity(graph, schedule=Constant(1e-4), check_finite=False),
    }

    def train_step() -> None:
        opt.zero_grad()
        loss, _ = loss_fn(model(images), targets)
        loss.backward()
        opt.step()

    train_step()  # warm-up, and leaves gradients for the regularizers
    train_ms = float("nan") if args.skip_train else _median_ms(train_step, args.repeats, 1)

    regs: dict[str, Callable[[], object]] = {name: s.step for name, s in ours.items()}
    regs["torch-pruning BNScalePruner.regularize"] = lambda: tp_pruner.regularize(model)
    for fn in regs.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in regs}
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    try:
        for _ in range(5):  # interleaved so that machine load hits every variant alike
            for name, fn in regs.items():
                samples[name].append(_median_ms(fn, 1, 50))
    finally:
        for process in spinners:
            process.terminate()
    reg_ms = {name: statistics.median(v) for name, v in samples.items()}
    baseline = reg_ms["torch-pruning BNScalePruner.regularize"]

    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    print(f"YOLOv4 (CSPDarknet53), batch {args.batch}, {args.size}x{args.size}, {args.threads} threads")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.busy} extra busy processes")
    print(
        f"{n_bn} BatchNorms; ChannelGraph target: {ours['BNSparsity(graph), Constant'].num_channels} of "
        f"{ours['BNSparsity(model), Constant'].num_channels} BN channels regularized "
        f"(graph built in {graph_s:.1f} s)"
    )
    print(f"training step (forward + YoloLoss + backward + SGD): {train_ms:9.1f} ms (median of {args.repeats})")
    print(f"{'regularizer':46s} {'ms':>8s} {'% of step':>10s} {'vs torch-pruning':>17s}")
    for name, ms in reg_ms.items():
        print(f"{name:46s} {ms:8.3f} {100 * ms / train_ms:9.3f}% {ms / baseline:16.2f}x")


if __name__ == "__main__":
    main()
