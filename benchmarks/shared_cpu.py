"""Training steps on a shared CPU: dense vs sparse (BNSparsity.step) steps, busy-waiting vs passive OpenMP.

Issue 13 saw a sparse-training iteration of the demo take 4x a dense one on a busy 2-core machine. This script
times, on the demo's YOLOv4 (width 0.25, depth 0.34, batch 16, 128 x 128), a dense training step and a sparse one
(the same plus ``BNSparsity.step()`` with the Dynamic schedule) while ``--busy`` other processes load the cores,
once with OpenMP's default wait policy and once with ``OMP_WAIT_POLICY=PASSIVE`` (what the ``grouppruner``
command sets). The policy is read when torch starts its thread pool, so each policy runs in its own child process;
the two children run one after the other under the same busy load, and the script prints the medians and the
ratios (sparse / dense per policy, default / passive per step kind).

Usage: python benchmarks/shared_cpu.py [--busy 2] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

CHILD = r"""
import json, statistics, sys, time
import torch
from grouppruner.detection import yolov4
from grouppruner.detection.loss import YoloLoss
from grouppruner.graph import ChannelGraph
from grouppruner.sparsity import BNSparsity, Dynamic

steps, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = yolov4(6, width=0.25, depth=0.34)
loss_fn = YoloLoss(6)
images = torch.rand(16, 3, 128, 128)
targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.tensor([1])} for _ in range(16)]
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
sparsity = BNSparsity(ChannelGraph(model, images[:1]), schedule=Dynamic(1e-3, total_steps=2 * steps, warmup=0.0))

def step(sparse):
    start = time.perf_counter()
    optimizer.zero_grad()
    loss, _ = loss_fn(model(images), targets)
    loss.backward()
    if sparse:
        sparsity.step()
    optimizer.step()
    return time.perf_counter() - start

step(False)  # warm-up
times = {"dense": [], "sparse": []}
for _ in range(steps):  # interleaved, so that load changes hit both kinds alike
    times["dense"].append(step(False))
    times["sparse"].append(step(True))
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
"""


def _spin(stop: float) -> None:
    while time.time() < stop:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="busy-looping processes during the timings")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each kind per policy")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    busy = [
        multiprocessing.Process(target=_spin, args=(time.time() + 3600,), daemon=True) for _ in range(args.busy)
    ]
    for process in busy:
        process.start()
    results = {}
    try:
        for policy in ("default", "PASSIVE"):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy == "PASSIVE":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.steps), str(args.threads)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[policy] = json.loads(out.strip().splitlines()[-1])
    finally:
        for process in busy:
            process.terminate()
    print(f"demo YOLOv4 training step, batch 16, 128x128, {args.threads} threads, {args.busy} busy processes")
    print(f"{'OpenMP wait policy':<20} {'dense s':>9} {'sparse s':>9} {'sparse/dense':>13}")
    for policy, t in results.items():
        print(f"{policy:<20} {t['dense']:>9.3f} {t['sparse']:>9.3f} {t['sparse'] / t['dense']:>13.2f}")
    for kind in ("dense", "sparse"):
        ratio = results["default"][kind] / results["PASSIVE"][kind]
        print(f"{kind} step, default / passive: {ratio:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}; medians of {args.steps} interleaved steps")


if __name__ == "__main__":
    main()
