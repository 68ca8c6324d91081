"""Cost of spatial-attention distillation in a YOLOv4 training step, against baselines in the same run.

Configurations, timed interleaved (one of each per round, so machine-load drift hits all alike), median of
``--repeats`` rounds after one warm-up round:

* ``plain``    student step without distillation: forward, YoloLoss, backward, SGD step;
* ``teacher``  the teacher forward (eval, no_grad) followed by the plain step, no hooks: the unavoidable cost
  of having a teacher at all;
* ``attn``     the step with ``AttentionDistiller`` (hooks keep only ``N x H*W`` fp32 maps);
* ``features`` the step with a feature-storing baseline (hooks keep whole feature maps of both models, as
  torchdistill / mmrazor recorders do, and the same loss is computed from them afterwards).

Printed: median wall and CPU times (process CPU time is less disturbed by other jobs on a shared machine), the
overhead of each distillation step beyond ``teacher`` (the teacher forward plus the plain step) as a fraction of
the ``plain`` step, and the bytes the recorders hold after a forward (maps vs features, per layer and in all).

    python benchmarks/distill_step.py                  # student width 0.5 vs teacher width 1.0, 320x320, batch 2
    python benchmarks/distill_step.py --teacher-width 0.5 --repeats 3
"""

from __future__ import annotations

import os

# Idle OpenMP threads must not spin: on a shared machine spinning makes 2-thread timings 100x noisier.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from grouppruner.detection import yolov4
from grouppruner.detection.loss import YoloLoss
from grouppruner.distill import AttentionDistiller, spatial_attention


class FeatureStore:
    """The baseline recorder: forward hooks keeping each layer's whole output feature map."""

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        self.active = False
        self.features: dict[str, Tensor] = {}
        self.channels: dict[str, int] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in layers]

    def _hook(self, name: str) -> Callable[[nn.Module, object, Tensor], None]:
        def hook(module: nn.Module, args: object, output: Tensor) -> None:
            if self.active:
                self.features[name] = output
                self.channels[name] = int(output.shape[1])

        return hook

    def nbytes(self) -> dict[str, int]:
        return {n: f.untyped_storage().nbytes() for n, f in self.features.items()}


def feature_loss(teacher: FeatureStore, student: FeatureStore, layers: list[str]) -> Tensor:
    """The same loss as AttentionDistiller (weights 1, mse), computed from stored features."""
    total = torch.zeros(())
    for name in layers:
        a_t = spatial_attention(teacher.features[name])
        a_s = spatial_attention(student.features[name])
        total = total + (a_t - a_s).square().mean()
    return total


def make_targets(batch: int, size: int, num_classes: int) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        xy = torch.rand(6, 2, generator=g) * size * 0.7
        wh = torch.rand(6, 2, generator=g) * size * 0.3 + 8
        targets.append(
            {
                "boxes": torch.cat([xy, (xy + wh).clamp(max=size)], dim=1),
                "labels": torch.randint(0, num_classes, (6,), generator=g),
            }
        )
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--student-width", type=float, default=0.5)
    parser.add_argument("--teacher-width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    num_classes = 20
    teacher = yolov4(num_classes, width=args.teacher_width).eval()
    student = yolov4(num_classes, width=args.student_width).train()
    layers = list(teacher.distill_layers)
    criterion = YoloLoss(num_classes)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9)
    images = torch.rand(args.batch, 3, args.size, args.size)
    targets = make_targets(args.batch, args.size, num_classes)

    distiller = AttentionDistiller(teacher, student, layers)
    store_t = FeatureStore(teacher, layers)
    store_s = FeatureStore(student, layers)
    recorded: dict[str, dict[str, int]] = {}

    def plain() -> None:
        loss, _ = criterion(student(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher(images)
        plain()

    def attn() -> None:
        outputs = distiller(images)
        kd, _ = distiller.loss()
        recorded["attn"] = distiller.recorded_bytes()
        loss, _ = criterion(outputs, targets)
        (loss + kd).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def features() -> None:
        store_t.active = store_s.active = True
        store_t.features.clear()
        store_s.features.clear()
        with torch.no_grad():
            teacher(images)
        outputs = student(images)
        kd = feature_loss(store_t, store_s, layers)
        recorded["features"] = {f"teacher/{k}": v for k, v in store_t.nbytes().items()}
        recorded["features"].update({f"student/{k}": v for k, v in store_s.nbytes().items()})
        loss, _ = criterion(outputs, targets)
        (loss + kd).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        store_t.features.clear()
        store_s.features.clear()
        store_t.active = store_s.active = False

    configs: dict[str, Callable[[], None]] = {
        "plain": plain,
        "teacher": teacher_forward,
        "attn": attn,
        "features": features,
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    cpu_times: dict[str, list[float]] = {name: [] for name in configs}
    # Both recorders produce the same loss (checked once, before timing).
    distiller(images)
    kd_attn = distiller.loss()[0].item()
    store_t.active = store_s.active = True
    with torch.no_grad():
        teacher(images)
        student(images)
        kd_feat = feature_loss(store_t, store_s, layers).item()
    store_t.active = store_s.active = False
    for round_index in range(args.repeats + 1):
        for name, fn in configs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if round_index > 0:  # round 0 warms up
                times[name].append(elapsed)
                cpu_times[name].append(elapsed_cpu)

    print(
        f"YOLOv4 student width {args.student_width} vs teacher width {args.teacher_width}, "
        f"{args.size}x{args.size}, batch {args.batch}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"distillation loss: attention recorder {kd_attn:.6g}, feature recorder {kd_feat:.6g}")
    for label, samples in (("wall", times), ("cpu", cpu_times)):
        median = {name: statistics.median(values) for name, values in samples.items()}
        print(f"{label} time, median of {args.repeats}:")
        for name, value in median.items():
            print(f"  {name:9s} {value * 1e3:9.1f} ms   ({value / median['plain']:.3f} x plain step)")
        teacher_share = (median["teacher"] - median["plain"]) / median["plain"]
        print(f"  teacher forward (teacher - plain): {teacher_share:.3f} x plain step")
        for name in ("attn", "features"):
            overhead = (median[name] - median["teacher"]) / median["plain"]
            print(f"  {name:9s} overhead beyond the teacher forward: {overhead * 100:+.1f} % of a plain step")
    maps, feats = recorded["attn"], recorded["features"]
    print("recorded bytes after a forward (maps / features, ratio, 1/C):")
    for key in feats:
        role, layer = key.split("/", 1)
        num_c = (store_t if role == "teacher" else store_s).channels[layer]
        ratio = maps[key] / feats[key]
        print(f"  {key:26s} {maps[key]:>10d} / {feats[key]:>11d}  ratio {ratio:.5f}  1/C {1 / num_c:.5f}")
    total_maps, total_feats = sum(maps.values()), sum(feats.values())
    print(f"  {'total':26s} {total_maps:>10d} / {total_feats:>11d}  ratio {total_maps / total_feats:.5f}")
    distiller.remove()


if __name__ == "__main__":
    main()
