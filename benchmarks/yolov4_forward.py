"""CPU forward cost of YOLOv4 (CSPDarknet53) and its MobileNetV2 variant: params, MACs, fp32 size, latency.

Batch 1, square input (416 by default), a fixed number of CPU threads (2 by default). Latency is the median
over rounds of grouppruner.profile.measure_latency medians; the two models are measured alternately in the
same process so that machine noise hits both, and ratios are against the CSPDarknet53 model.

    python benchmarks/yolov4_forward.py [--size 416] [--threads 2] [--repeats 5] [--rounds 3]
                                        [--num-classes 20] [--width 1.0] [--depth 1.0]

On a CPU shared with other jobs, run it with OMP_WAIT_POLICY=PASSIVE: busy-waiting OpenMP threads that lose
their core to another process make latencies erratic (several times slower, unstable ratios).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from grouppruner.detection import yolov4
from grouppruner.profile import count_macs, count_params, measure_latency, model_size_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=416, help="input height and width (multiple of 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds per model")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--depth", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x = torch.rand(1, 3, args.size, args.size)
    models = {
        backbone: yolov4(args.num_classes, backbone=backbone, width=args.width, depth=args.depth).eval()
        for backbone in ("cspdarknet53", "mobilenetv2")
    }
    latencies: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            latencies[name].append(measure_latency(model, x, repeats=args.repeats, warmup=2, threads=args.threads))

    print(
        f"YOLOv4 forward, batch 1, {args.size}x{args.size}, {args.num_classes} classes, width {args.width}, "
        f"depth {args.depth}, {args.threads} threads, median of {args.rounds} x {args.repeats} runs "
        f"(torch {torch.__version__})"
    )
    header = f"{'backbone':<14}{'params (M)':>12}{'GMACs':>9}{'fp32 MB':>9}{'latency ms':>12}"
    header += f"{'params x':>10}{'MACs x':>8}{'latency x':>11}"
    print(header)
    print("-" * len(header))
    base: tuple[int, int, float] | None = None
    for name, model in models.items():
        params, macs = count_params(model), count_macs(model, x)
        size_mb = model_size_bytes(model) / 2**20
        latency = statistics.median(latencies[name])
        base = base or (params, macs, latency)
        print(
            f"{name:<14}{params / 1e6:>12.3f}{macs / 1e9:>9.2f}{size_mb:>9.1f}{latency * 1e3:>12.1f}"
            f"{params / base[0]:>10.3f}{macs / base[1]:>8.3f}{latency / base[2]:>11.3f}"
        )


if __name__ == "__main__":
    main()
