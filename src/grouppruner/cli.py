"""The ``grouppruner`` command.

- ``grouppruner inspect`` prints the channel groups and layer groups of a YOLOv4, ``grouppruner profile`` its
  parameters, MACs, fp32 size and latency; both take the built-in model options, ``--weights`` (a ``state_dict``
  or ``save_pruned`` file) or ``--run`` (a run folder: its options and its last checkpoint; a ``grouppruner yolo``
  folder gives its last Ultralytics stage).
- ``grouppruner compress --data VOC --weights teacher.pt --out runs/x`` runs the method on the user's trained
  YOLOv4 and data: dynamic sparse training, group pruning, distilled recovery; ``grouppruner demo`` runs the
  same on generated VOC-format data with a teacher trained from scratch. Both take ``--config recipe.toml``
  (fields of :class:`~grouppruner.recipe.RecipeConfig`; flags override it), resume after a crash, and show
  progress per stage and epoch.
- ``grouppruner report RUN_DIR`` writes a Markdown report with figures for a run folder (recipe or ``yolo``).
- ``grouppruner yolo --model best.pt --data data.yaml --target-macs 0.5 --out runs/yolo`` compresses an Ultralytics
  YOLO inside the Ultralytics trainer (extra ``grouppruner[ultralytics]``, see
  :mod:`grouppruner.integrations.ultralytics.cli`).

Errors are one line on stderr with exit status 2; Ctrl-C exits with 130 after saving what finished.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from ._utils.errors import GroupPrunerError
from .runtime import RUNTIMES

__all__ = ["build_parser", "ensure_passive_openmp", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``grouppruner`` command (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="grouppruner", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    # The same flags after the subcommand; SUPPRESS keeps a subcommand from resetting what came before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings")
    parser.add_argument("--version", action="version", version=f"grouppruner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text, handler in (
        ("inspect", "print the channel groups and layer groups of a YOLOv4", _inspect),
        ("profile", "print params, MACs, fp32 size and latency of a YOLOv4", _profile),
    ):
        sub = commands.add_parser(name, parents=[common], help=help_text)
        sub.add_argument("--backbone", choices=("cspdarknet53", "mobilenetv2"), default=None)
        sub.add_argument("--num-classes", type=int, default=None, help="default 20 (VOC)")
        sub.add_argument("--width", type=float, default=None, help="channel multiplier (default 0.25; 1.0: full)")
        sub.add_argument("--depth", type=float, default=None, help="residual-block multiplier (default 0.34)")
        sub.add_argument("--image-size", type=int, default=None, help="square input side in pixels (default 256)")
        sub.add_argument(
            "--weights", "--checkpoint", dest="weights", help="a state_dict or grouppruner.save_pruned file to load"
        )
        sub.add_argument(
            "--run", help="a demo / compress / yolo run folder: its model options and last stage checkpoint"
        )
        sub.add_argument("--cfg", help="a darknet .cfg instead of the built-in YOLOv4 (--weights: its .weights)")
        sub.set_defaults(handler=handler)
    commands.choices["inspect"].add_argument("--all", action="store_true", help="list every channel group")
    commands.choices["profile"].add_argument(
        "--threads", type=int, default=None, help="torch threads for the latency (default: OMP_NUM_THREADS, if set)"
    )
    commands.choices["inspect"].add_argument(
        "--min-channels",
        type=int,
        default=8,
        help="the pruner's min_channels for the list of convs that cannot shrink (default 8, GroupPruner's)",
    )
    commands.choices["profile"].add_argument("--repeats", type=int, default=10)

    demo = commands.add_parser(
        "demo", parents=[common], help="run dense -> sparse -> pruned -> recovered on generated VOC data"
    )
    _add_recipe_options(demo, default_out="runs/demo")
    demo.add_argument("--data", default=None, help="a VOCdevkit-style folder (default: generate one in --out)")
    demo.add_argument("--weights", default=None, help="start from this trained YOLOv4 instead of training one")
    demo.add_argument("--cfg", default=None, help="a darknet .cfg to train and compress instead of the built-in YOLOv4")
    demo.set_defaults(handler=_recipe)

    compress = commands.add_parser(
        "compress", parents=[common], help="compress your trained YOLOv4 on your VOC-format data"
    )
    _add_recipe_options(compress, default_out=None)
    compress.add_argument("--data", required=True, help="a VOCdevkit-style folder with train and val splits")
    compress.add_argument(
        "--weights", required=True, help="your trained YOLOv4: a state_dict or save_pruned file (with --cfg: .weights)"
    )
    compress.add_argument(
        "--cfg", default=None, help="your darknet .cfg (classes from --data); writes pruned.cfg / recovered.cfg too"
    )
    compress.set_defaults(handler=_recipe)

    report = commands.add_parser(
        "report", parents=[common], help="write a Markdown report with figures for a demo / compress / yolo run folder"
    )
    report.add_argument("run_dir", help="the --out folder of a run (holds results.json and the stage checkpoints)")
    report.add_argument("--latency", action="store_true", help="also measure each stage model's batch-1 latency")
    report.add_argument("--threads", type=int, default=None, help="torch threads for --latency")
    report.set_defaults(handler=_report)

    from .integrations.ultralytics.cli import add_command  # parser only: Ultralytics is imported when run

    add_command(commands, common).set_defaults(handler=_yolo)
    return parser


def _yolo(args: argparse.Namespace) -> int:
    from .integrations.ultralytics.cli import run_command

    print(run_command(args))
    return 0


def _add_recipe_options(parser: argparse.ArgumentParser, *, default_out: str | None) -> None:
    # Defaults (None) come from the config file or RecipeConfig, so the help stays right and flags override.
    parser.add_argument("--config", help="a TOML file of RecipeConfig fields (see the CLI guide)")
    parser.add_argument(
        "--out", default=default_out, required=default_out is None, help="run folder; rerunning resumes"
    )
    parser.add_argument("--classes", help="comma-separated class names (demo: the synthetic ones; compress: VOC)")
    parser.add_argument("--num-images", type=int, help="images to generate (demo, default 600, half of them val)")
    parser.add_argument("--image-size", type=int, help="square input side (default 128)")
    parser.add_argument("--backbone", choices=("cspdarknet53", "mobilenetv2"))
    parser.add_argument("--width", type=float, help="channel multiplier (default 0.25)")
    parser.add_argument("--depth", type=float, help="residual-block multiplier (default 0.34)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument(
        "--epochs", type=int, nargs=3, metavar=("DENSE", "SPARSE", "RECOVER"), help="epochs per training stage"
    )
    parser.add_argument(
        "--finetune-epochs", type=int, help="recovery epochs without distillation first (default: a quarter)"
    )
    parser.add_argument("--sparsity", type=float, help="rate s of the L1 term on BatchNorm scales")
    parser.add_argument("--sparse-optimizer", choices=("sgd", "adamw"), help="optimizer of the sparse stage (sgd)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--target-params", type=float, help="fraction of parameters to keep (default 0.35)")
    budget.add_argument("--target-macs", type=float, help="fraction of MACs at --image-size to keep")
    budget.add_argument(
        "--target-latency", type=float, help="fraction of the latency to keep, measured in --runtime (verified)"
    )
    parser.add_argument(
        "--search-candidates",
        type=int,
        help="choose the plan among this many candidates by measured mAP (PlanSearch; default 0: no search)",
    )
    parser.add_argument(
        "--distill-off-epochs", type=int, help="the last recovery epochs without distillation (default 0)"
    )
    parser.add_argument("--teacher", choices=("dense", "sparse"), help="teacher of the recovery (dense)")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="runtime the pruned detector ships on: its channel block and latency (default onnxruntime)",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), help="mixed precision (fp16: CUDA only)")


def _model_from_args(args: argparse.Namespace) -> tuple[nn.Module, int, str]:
    """The model the options describe, its input size, and a one-line description."""
    from .recipe import STAGES, load_weights
    from .recipe.report import read_run
    from .run_folder import run_kind

    options: dict[str, Any] = {"backbone": "cspdarknet53", "num_classes": 20, "width": 0.25, "depth": 0.34}
    size: int | None = None
    cfg = args.cfg
    weights = Path(args.weights) if args.weights else None
    run_dir = Path(args.run) if args.run else (weights.parent if weights is not None else None)
    if run_dir is not None and (run_dir / "results.json").is_file() and run_kind(run_dir) == "yolo":
        return _yolo_stage_model(run_dir, weights, args.image_size)
    if run_dir is not None and (run_dir / "results.json").is_file():
        config, records = read_run(run_dir)
        options = {k: config[k] for k in ("backbone", "width", "depth")} | {"num_classes": len(config["classes"])}
        size = int(config["image_size"])
        cfg = cfg or config.get("cfg")
        if weights is None:
            finished = [r["stage"] for r in records if (run_dir / f"{r['stage']}.pt").is_file()]
            if not finished:
                raise FileNotFoundError(f"{run_dir}: no finished stage checkpoint ({', '.join(STAGES)})")
            weights = run_dir / f"{finished[-1]}.pt"
    elif args.run:
        raise FileNotFoundError(f"{args.run}: no results.json; is it a grouppruner run folder?")
    given = {"backbone": args.backbone, "num_classes": args.num_classes, "width": args.width, "depth": args.depth}
    options.update({k: v for k, v in given.items() if v is not None})
    if cfg is not None:
        from .recipe.darknet import load_darknet

        darknet, title = load_darknet(cfg, weights)
        size = args.image_size or size or darknet.input_size[0]
        return darknet.eval(), size, f"{title} at {size}x{size}"
    size = args.image_size or size or 256
    from .detection import yolov4

    model = yolov4(options["num_classes"], backbone=options["backbone"], width=options["width"], depth=options["depth"])
    if weights is not None:
        load_weights(model, weights)
    described = ", ".join(f"{k} {v}" for k, v in options.items())
    return model.eval(), size, f"YOLOv4 ({described}) at {size}x{size}" + (f", weights {weights}" if weights else "")


def _yolo_stage_model(run_dir: Path, weights: Path | None, image_size: int | None) -> tuple[nn.Module, int, str]:
    """The last finished stage of a YOLO run folder (or ``weights``), at the run's ``imgsz``."""
    from .integrations.ultralytics.report import read_run, stage_model

    options, records = read_run(run_dir)
    if weights is None:
        finished = [Path(r.checkpoint) for r in records if Path(r.checkpoint).is_file()]
        if not finished:
            raise FileNotFoundError(f"{run_dir}: no finished stage checkpoint")
        weights = finished[-1]
    size = image_size or int(options["imgsz"])
    return stage_model(weights), size, f"Ultralytics YOLO {weights} at {size}x{size}"


def _inspect(args: argparse.Namespace) -> int:
    """Print the channel groups, layer groups and protected groups of the model."""
    from .graph import ChannelGraph

    model, size, title = _model_from_args(args)
    graph = ChannelGraph(model, torch.randn(1, 3, size, size))
    groups = graph.channel_groups
    prunable = [g for g in groups if g.prunable]
    print(title)
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
    fixed = graph.fixed_convs(min_channels=args.min_channels)
    n_convs = sum(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    print()
    print(f"convs that cannot shrink (min_channels={args.min_channels}): {len(fixed)} of {n_convs}")
    for name, reason in fixed.items():
        print(f"  {name}: {reason}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    """Print the model's parameters, MACs, fp32 size and batch-1 latency."""
    from .profile import profile_model

    model, size, title = _model_from_args(args)
    threads = args.threads if args.threads is not None else _omp_threads() or torch.get_num_threads()
    prof = profile_model(model, torch.randn(1, 3, size, size), latency=True, threads=threads, repeats=args.repeats)
    assert prof.latency_s is not None
    print(title)
    print(f"params     {prof.params:,}")
    print(f"GMACs      {prof.macs / 1e9:.3f}")
    print(f"fp32 size  {prof.size_bytes / 2**20:.1f} MiB")
    print(f"latency    {prof.latency_s * 1e3:.1f} ms (batch 1, {threads} threads, median of {args.repeats})")
    return 0


def _omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive int (its first value, as OpenMP reads a list), or ``None``."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _recipe(args: argparse.Namespace) -> int:
    from .detection.data import VOC_CLASSES
    from .recipe import run_recipe
    from .recipe.config_file import load_recipe_config

    overrides: dict[str, Any] = {
        "out_dir": args.out,
        "data_root": args.data,
        "weights": args.weights,
        "num_images": args.num_images,
        "image_size": args.image_size,
        "backbone": args.backbone,
        "width": args.width,
        "depth": args.depth,
        "batch_size": args.batch_size,
        "sparsity": args.sparsity,
        "sparse_optimizer": args.sparse_optimizer,
        "target_params": args.target_params,
        "target_macs": args.target_macs,
        "target_latency": args.target_latency,
        "search_candidates": args.search_candidates,
        "distill_off_epochs": args.distill_off_epochs,
        "teacher": args.teacher,
        "runtime": args.runtime,
        "seed": args.seed,
        "device": args.device,
        "amp": args.amp,
        "cfg": args.cfg,
    }
    for unit in ("params", "macs", "latency"):
        if getattr(args, f"target_{unit}") is not None:
            overrides["prune_by"] = unit
    if args.classes is not None:
        overrides["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    elif args.command == "compress" and (args.config is None or "classes" not in _config_keys(args.config)):
        if args.cfg is None:
            overrides["classes"] = list(VOC_CLASSES)
        else:  # a darknet cfg: the classes come from the data (checked against its [yolo] layers)
            from .detection.data import data_classes

            overrides["classes"] = list(data_classes(args.data))
    if args.epochs is not None:
        overrides.update(dense_epochs=args.epochs[0], sparse_epochs=args.epochs[1], recover_epochs=args.epochs[2])
        # the default schedule's share: a quarter of the recovery fine-tunes, the rest distils
        overrides["finetune_epochs"] = args.epochs[2] // 4
    if args.finetune_epochs is not None:
        overrides["finetune_epochs"] = args.finetune_epochs
    # Every option is checked here, before any data is generated or any epoch runs.
    config = load_recipe_config(args.config, overrides=overrides)
    try:
        results = run_recipe(config, progress=not args.quiet)
    except KeyboardInterrupt:
        print(
            f"grouppruner {args.command}: interrupted; finished stages and epochs are saved in {config.out_dir}: "
            "run the same command to resume",
            file=sys.stderr,
        )
        return 130
    if not _main_process():
        return 0  # under torchrun, the first process reports
    dense = results[0]
    print()
    print(
        f"{'stage':<10} {'mAP@0.5':>8} {'mAP kept':>9} {'params':>12} {'params %':>9} {'GMACs':>8} {'MACs %':>7}"
        "  checkpoint"
    )
    for r in results:
        kept = f"{100 * r.map50 / dense.map50:.1f}%" if dense.map50 > 0 else "-"
        print(
            f"{r.stage:<10} {r.map50:>8.3f} {kept:>9} {r.params:>12,} {100 * r.params / dense.params:>8.1f}% "
            f"{r.macs / 1e9:>8.3f} {100 * r.macs / dense.macs:>6.1f}%  {r.checkpoint}"
        )
    below = results[1].extra.get("below_threshold", {})
    if below:
        fractions = ", ".join(f"{name} {100 * value:.0f}%" for name, value in below.items())
        print(f"\n|gamma| < {results[1].extra['gamma_threshold']:g} after sparse training: {fractions}")
    sparse, pruned, recovered = results[1:]
    kept = f"{100 * recovered.map50 / dense.map50:.1f}% of the dense mAP" if dense.map50 > 0 else "dense mAP is 0"
    print(
        f"pruned before recovery: mAP {pruned.map50:.3f} (sparse model {sparse.map50:.3f}); recovered: "
        f"{recovered.map50:.3f}, {kept} at {100 * recovered.params / dense.params:.1f}% of the params and "
        f"{100 * recovered.macs / dense.macs:.1f}% of the MACs"
    )
    latency = pruned.extra.get("latency")
    if latency:  # a latency budget: what the pruned stage measured against the dense model
        print(
            f"latency x{latency['ratio']:.3f} of the dense model's, measured in {latency['runtime']} "
            f"({latency['threads']} threads, load average {latency['load_average'][0]:.2f})"
        )
    return 0


def _main_process() -> bool:
    """Not one of the other processes of a ``torchrun`` launch (they train, but neither log nor print)."""
    return os.environ.get("RANK", "0") == "0"


def _config_keys(path: str) -> set[str]:
    import tomllib

    try:
        return set(tomllib.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return set()  # load_recipe_config reports the problem with the file


def _report(args: argparse.Namespace) -> int:
    from .run_folder import run_kind

    if run_kind(args.run_dir) == "yolo":  # Ultralytics is imported only for a YOLO run
        from .integrations.ultralytics.report import write_report
    else:
        from .recipe.report import write_report
    path = write_report(args.run_dir, latency=args.latency, threads=args.threads)
    print(f"report written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``grouppruner`` command.

    Args:
        argv: command-line arguments without the program name (``sys.argv[1:]`` when ``None``).

    Returns:
        The process exit status: 0, 2 for an error (one line on stderr), 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    # The long-running commands show their progress (stage, epoch, plan, sparsity statistics) by default.
    if args.quiet or not _main_process():
        level = logging.WARNING
    elif args.verbose >= 2:
        level = logging.DEBUG
    elif args.verbose or args.command in ("demo", "compress", "yolo"):
        level = logging.INFO
    else:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        code: int = args.handler(args)
        return code
    except KeyboardInterrupt:
        print(f"grouppruner {args.command}: interrupted", file=sys.stderr)
        return 130
    except (GroupPrunerError, ValueError, TypeError, KeyError, OSError) as error:
        print(f"grouppruner {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error: Exception) -> str:
    """The error as one line that names the file / layer at fault (no traceback)."""
    if isinstance(error, OSError) and error.errno is not None and error.filename is not None:
        # "[Errno 28] No space left on device: 'x'" -> "x: No space left on device (ENOSPC)"
        text = f"{error.filename}: {error.strerror} ({errno.errorcode.get(error.errno, error.errno)})"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            text += "; nothing written before is lost: free some space and run the same command to resume"
        return text
    # KeyError would repr its text
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def ensure_passive_openmp() -> None:
    """Re-run this command with ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set.

    OpenMP threads that busy-wait between parallel regions (the default policy) starve each other on a shared
    CPU: a training step of the demo's YOLOv4 took 8.8 s instead of 1.5 s with four busy processes on two
    cores. The policy is read once, when torch starts its thread pool, so it must be set before torch loads,
    hence the re-exec (the user's explicit setting always wins).
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable, "-m", "grouppruner", *sys.argv[1:]])


def run() -> None:
    """The ``grouppruner`` console script: :func:`ensure_passive_openmp`, then :func:`main`."""
    ensure_passive_openmp()
    sys.exit(main())


if __name__ == "__main__":
    run()
