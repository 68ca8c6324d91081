"""Reach on real timm / torchvision models: convs that ``plan(target_params=0.5)`` shrinks, and why the rest stay.

Random init (``pretrained=False`` / ``weights=None``), 64x64 input, the default ``GroupPruner`` (min_channels 8).
Each conv that keeps its width is listed with the reason ``ChannelGraph.fixed_convs`` gives. Needs timm and
torchvision (the second environment of .ci/run).

    python benchmarks/reach.py [--size 64] [--reasons]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reach import measure_reach

MODELS = [
    ("timm", "cspdarknet53"), ("timm", "hrnet_w18_small"), ("torchvision", "resnext50_32x4d"),
    ("torchvision", "regnet_y_400mf"), ("torchvision", "shufflenet_v2_x0_5"), ("timm", "mobilevitv2_050"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reasons", action="store_true", help="list every whole conv with its reason")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import timm
    import torchvision

    print("| model | convs that shrink | params after | why the others stay whole |")
    print("|---|---|---|---|")
    for lib, arch in MODELS:
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False) if lib == "timm" else getattr(torchvision.models, arch)()
        reach = measure_reach(model, torch.randn(1, 3, args.size, args.size))
        kinds = Counter(_kind(r) for r in reach.whole.values())
        why = ", ".join(f"{k} {n}" for k, n in kinds.most_common()) or "-"
        print(f"| {lib} {arch} | {reach.shrunk} of {reach.convs} | {reach.params_ratio:.3f} | {why} |")
        if args.reasons:
            for name, reason in reach.whole.items():
                print(f"    {name}: {reason or 'the solver left it whole'}")


def _kind(reason: str | None) -> str:
    if reason is None:
        return "solver"
    for key, label in (
        ("breaks the forward", "probe"), ("shuffle", "shuffle"), ("min_channels", "min_channels"),
        ("single channel unit", "one unit"),
        ("model output", "output"), ("split", "split"), ("reshape", "reshape"), ("regroups", "reshape"),
    ):
        if key in reason:
            return label
    return "other"


if __name__ == "__main__":
    main()
