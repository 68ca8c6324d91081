"""The ``grouppruner`` command.

``grouppruner inspect`` prints the channel groups and layer groups of a built-in reduced YOLOv4 (or of the full
one with ``--width 1 --depth 1``); ``grouppruner profile`` prints its parameters, MACs, fp32 size and latency,
optionally after loading a pruned checkpoint; ``grouppruner demo`` runs the whole recipe (dense training,
dynamic sparse training, group pruning, attention-distilled recovery) on generated VOC-format data.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch
from torch import nn

from . import __version__

__all__ = ["build_parser", "main"]


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", choices=("cspdarknet53", "mobilenetv2"), default="cspdarknet53")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--width", type=float, default=0.25, help="channel multiplier (1.0: full YOLOv4)")
    parser.add_argument("--depth", type=float, default=0.34, help="residual-block multiplier (1.0: full YOLOv4)")
    parser.add_argument("--image-size", type=int, default=256, help="square input side in pixels")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``grouppruner`` command (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="grouppruner", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"grouppruner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="print the channel groups and layer groups of the example model")
    _add_model_options(inspect)
    inspect.add_argument("--all", action="store_true", help="list every channel group, not only a summary")

    profile = commands.add_parser("profile", help="print params, MACs, fp32 size and latency of the example model")
    _add_model_options(profile)
    profile.add_argument("--checkpoint", help="a file written by grouppruner.save_pruned to load first")
    profile.add_argument("--threads", type=int, default=2)
    profile.add_argument("--repeats", type=int, default=10)

    demo = commands.add_parser("demo", help="run dense -> sparse -> pruned -> recovered on generated VOC data")
    demo.add_argument("--out", default="runs/demo", help="output folder; rerunning resumes after the last stage")
    demo.add_argument("--data", default=None, help="a VOCdevkit-style folder (default: generate one in --out)")
    # Defaults (None) come from RecipeConfig, so the help stays right and the detection extra loads lazily.
    demo.add_argument("--num-images", type=int, help="images to generate (default 600, half of them validation)")
    demo.add_argument("--image-size", type=int, help="square input side (default 128)")
    demo.add_argument("--backbone", choices=("cspdarknet53", "mobilenetv2"))
    demo.add_argument("--width", type=float, help="channel multiplier (default 0.25)")
    demo.add_argument("--depth", type=float, help="residual-block multiplier (default 0.34)")
    demo.add_argument(
        "--epochs", type=int, nargs=3, metavar=("DENSE", "SPARSE", "RECOVER"), help="epochs per training stage"
    )
    demo.add_argument(
        "--finetune-epochs", type=int, help="recovery epochs without distillation first (default: a quarter)"
    )
    demo.add_argument("--sparsity", type=float, help="rate s of the L1 term on BatchNorm scales")
    demo.add_argument("--sparse-optimizer", choices=("sgd", "adamw"), help="optimizer of the sparse stage (sgd)")
    demo.add_argument("--target-params", type=float, help="fraction of parameters to keep (default 0.35)")
    demo.add_argument("--teacher", choices=("dense", "sparse"), help="teacher of the recovery (dense)")
    demo.add_argument("--seed", type=int)
    return parser


def _build_model(args: argparse.Namespace) -> nn.Module:
    from .detection import yolov4

    return yolov4(args.num_classes, backbone=args.backbone, width=args.width, depth=args.depth).eval()


def _inspect(args: argparse.Namespace) -> int:
    from .graph import ChannelGraph

    model = _build_model(args)
    graph = ChannelGraph(model, torch.randn(1, 3, args.image_size, args.image_size))
    groups = graph.channel_groups
    prunable = [g for g in groups if g.prunable]
    print(f"YOLOv4 ({args.backbone}, width {args.width}, depth {args.depth}) at {args.image_size}x{args.image_size}")
    print(f"{len(groups)} channel groups, {len(prunable)} prunable, {sum(g.size for g in prunable)} prunable channels")
    print()
    if args.all:
        print(graph.summary())
        print()
    print(f"{'layer group':<24} {'channel groups':>14} {'channels':>9}  strides")
    for name, members in graph.layer_groups().items():
        strides = sorted({g.stride for g in members if g.stride is not None})
        print(f"{name:<24} {len(members):>14} {sum(g.size for g in members):>9}  {strides}")
    protected = [g for g in groups if not g.prunable]
    if protected:
        print()
        print("not prunable:")
        for group in protected:
            print(f"  {group.name}: {group.reason}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from .profile import profile_model

    model = _build_model(args)
    if args.checkpoint:
        from .checkpoint import load_pruned

        load_pruned(model, args.checkpoint)
    x = torch.randn(1, 3, args.image_size, args.image_size)
    prof = profile_model(model, x, latency=True, threads=args.threads, repeats=args.repeats)
    assert prof.latency_s is not None
    print(f"params     {prof.params:,}")
    print(f"GMACs      {prof.macs / 1e9:.3f}")
    print(f"fp32 size  {prof.size_bytes / 2**20:.1f} MiB")
    print(f"latency    {prof.latency_s * 1e3:.1f} ms (batch 1, {args.threads} threads, median of {args.repeats})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .detection.recipe import RecipeConfig, run_recipe

    options = {
        "num_images": args.num_images,
        "image_size": args.image_size,
        "backbone": args.backbone,
        "width": args.width,
        "depth": args.depth,
        "sparsity": args.sparsity,
        "sparse_optimizer": args.sparse_optimizer,
        "target_params": args.target_params,
        "teacher": args.teacher,
        "seed": args.seed,
    }
    if args.epochs is not None:
        options.update(dense_epochs=args.epochs[0], sparse_epochs=args.epochs[1], recover_epochs=args.epochs[2])
        # the default schedule's share: a quarter of the recovery fine-tunes, the rest distils
        options["finetune_epochs"] = args.epochs[2] // 4
    if args.finetune_epochs is not None:
        options["finetune_epochs"] = args.finetune_epochs
    config = RecipeConfig(
        out_dir=args.out, data_root=args.data, **{k: v for k, v in options.items() if v is not None}
    )
    results = run_recipe(config, progress=True)
    dense = results[0]
    print()
    print(
        f"{'stage':<10} {'mAP@0.5':>8} {'mAP kept':>9} {'params':>12} {'params %':>9} {'GMACs':>8} {'MACs %':>7}"
        "  checkpoint"
    )
    for r in results:
        kept = 100 * r.map50 / dense.map50 if dense.map50 > 0 else float("nan")
        print(
            f"{r.stage:<10} {r.map50:>8.3f} {kept:>8.1f}% {r.params:>12,} {100 * r.params / dense.params:>8.1f}%"
            f" {r.macs / 1e9:>8.3f} {100 * r.macs / dense.macs:>6.1f}%  {r.checkpoint}"
        )
    below = results[1].extra.get("below_threshold", {})
    if below:
        fractions = ", ".join(f"{name} {100 * value:.0f}%" for name, value in below.items())
        print(f"\n|gamma| < {results[1].extra['gamma_threshold']:g} after sparse training: {fractions}")
    sparse, pruned, recovered = results[1:]
    print(
        f"pruned before recovery: mAP {pruned.map50:.3f} (sparse model {sparse.map50:.3f}); recovered: "
        f"{recovered.map50:.3f}, {100 * recovered.map50 / dense.map50:.1f}% of the dense mAP at "
        f"{100 * recovered.params / dense.params:.1f}% of the params and {100 * recovered.macs / dense.macs:.1f}% of "
        "the MACs"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``grouppruner`` console script.

    Args:
        argv: command-line arguments without the program name (``sys.argv[1:]`` when ``None``).

    Returns:
        The process exit status.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    handlers = {"inspect": _inspect, "profile": _profile, "demo": _demo}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
        print(f"grouppruner {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
