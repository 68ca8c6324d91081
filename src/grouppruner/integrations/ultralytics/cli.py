"""``grouppruner yolo``: :func:`~grouppruner.integrations.ultralytics.compress` from the command line.

``grouppruner yolo --model best.pt --data data.yaml --target-macs 0.5 --out runs/yolo`` runs the five stages
in the run folder (rerunning resumes); ``--train KEY=VALUE`` passes any other keyword to the Ultralytics trainer
(``--train lr0=0.005 --train mosaic=0``). The parser is built without importing Ultralytics, so that
``grouppruner --help`` works without the extra.
"""

from __future__ import annotations

import argparse
import ast
from typing import Any

from ...runtime import DEFAULT_RUNTIME, RUNTIMES

__all__ = ["add_command", "parse_train_options", "run_command"]


def add_command(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``yolo`` subcommand to the ``grouppruner`` parser's subcommands; returns its parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "yolo",
        parents=[common],
        help="compress an Ultralytics YOLO inside the Ultralytics trainer (extra grouppruner[ultralytics])",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="the trained dense model: its Ultralytics .pt weights (e.g. runs/detect/train/weights/best.pt); it is "
        "the distillation teacher, so a model .yaml (untrained) or an exported file is refused",
    )
    parser.add_argument("--data", required=True, help="its data.yaml")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--target-macs", type=float, help="fraction of the MACs to keep, e.g. 0.5")
    budget.add_argument("--target-params", type=float, help="fraction of the parameters to keep")
    budget.add_argument("--target-latency", type=float, help="fraction of the latency to keep, measured in --runtime")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=DEFAULT_RUNTIME,
        help="runtime the model ships on: its channel block and where latency is measured (default onnxruntime)",
    )
    parser.add_argument(
        "--split-free",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ship the pruned model with its C2f / C3k2 blocks rewritten without a Split (same outputs; fewer "
        "layout reorders in onnxruntime), target latency measured through it (default: on with onnxruntime)",
    )
    parser.add_argument("--out", required=True, help="run folder; rerunning resumes")
    parser.add_argument("--sparse-epochs", type=int, default=30)
    parser.add_argument("--recover-epochs", type=int, default=60)
    parser.add_argument(
        "--finetune-epochs", type=int, default=None, help="default: all of --recover-epochs, 0 when distilling"
    )
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--sparsity", type=float, default=5e-3, help="L1 rate s on the BatchNorm scales")
    parser.add_argument(
        "--distill-attention", type=float, default=0.0, help="weight of the attention term (default 0; e.g. 0.1)"
    )
    parser.add_argument(
        "--distill-output", type=float, default=0.0, help="weight of the output-level term (default 0; e.g. 0.2)"
    )
    parser.add_argument(
        "--distill-channel",
        type=float,
        default=0.0,
        help="weight of the channel-wise term on the kept channels of the head inputs (default 0)",
    )
    parser.add_argument(
        "--distill-off-epochs", type=int, default=0, help="the last epochs of distillation on the stock loss alone"
    )
    parser.add_argument(
        "--search-candidates",
        type=int,
        default=0,
        metavar="N",
        help="choose the pruning plan among N plans of the budget by Ultralytics' validator on a sample of the "
        "train split (resumable in OUT/search; default 0: the solver's plan)",
    )
    parser.add_argument("--batch", type=int, default=None, help="Ultralytics batch size")
    parser.add_argument("--device", default=None, help="Ultralytics device: cpu, 0, 0,1 (DDP), ...")
    parser.add_argument("--workers", type=int, default=None, help="data loader workers")
    parser.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another Ultralytics trainer keyword (repeatable), e.g. --train lr0=0.005",
    )
    return parser


def parse_train_options(items: list[str]) -> dict[str, Any]:
    """``["lr0=0.005", "amp=False", "optimizer=SGD"]`` -> ``{"lr0": 0.005, "amp": False, "optimizer": "SGD"}``.

    Values are Python literals where they parse as one (numbers, ``True``/``False``/``None``, lists), else text.

    Raises:
        ValueError: an item without ``=``, naming it.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--train {item!r}: expected KEY=VALUE (e.g. --train lr0=0.005)")
        try:
            value: Any = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        options[key.strip()] = value
    return options


def run_command(args: argparse.Namespace) -> str:
    """Run the ``yolo`` subcommand; returns the per-stage summary to print.

    Raises:
        MissingExtraError: Ultralytics is not installed.
        and every error of :func:`~grouppruner.integrations.ultralytics.compress`.
    """

    from ._require import require_ultralytics

    require_ultralytics()
    from .flow import compress

    given = {"batch": args.batch, "device": args.device, "workers": args.workers}
    trainer = {k: v for k, v in given.items() if v is not None}
    result = compress(
        args.model,
        data=args.data,
        target_macs=args.target_macs,
        target_params=args.target_params,
        target_latency=args.target_latency,
        sparse_epochs=args.sparse_epochs,
        recover_epochs=args.recover_epochs,
        finetune_epochs=args.finetune_epochs,
        out=args.out,
        imgsz=args.imgsz,
        sparsity=args.sparsity,
        distill_attention=args.distill_attention,
        distill_output=args.distill_output,
        distill_off_epochs=args.distill_off_epochs,
        distill_channel=args.distill_channel,
        runtime=args.runtime,
        split_free=args.split_free,
        search_candidates=args.search_candidates,
        **trainer,
        **parse_train_options(args.train),
    )
    return f"{result.summary()}\ncompressed model: {result.checkpoint}"
