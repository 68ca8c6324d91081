"""What the yolov8n benchmarks on generated cluttered data share: settings, records, training, validation, pruning.

``ultralytics_distill.py`` (recovery schedules) and ``ultralytics_baselines.py`` (the community baselines) train
one dense yolov8n on :func:`make_cluttered_yolo` data, then their arms inside the Ultralytics trainer (grouppruner's
subclass, which keeps a module handed to it as it is). Records are one JSON file per seed, written atomically.
Torch-Pruning's recipes live here too (``ultralytics_yolo.py`` uses the magnitude one): each bisects its pruning
ratio so that the pruned model has the target fraction of the MACs, counted by ``grouppruner.profile.count_macs``
as ``gpu.compress`` counts them.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grouppruner._utils.io import atomic_write

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
RESULTS = Path(__file__).resolve().parent / "results"
#: The settings both scripts record (a record made under other settings does not count).
#: The float32 EMA weights :func:`train` saves beside ``last.pt``.
FLOAT_WEIGHTS = "last_fp32.pt"
SETTING_KEYS = ("images", "imgsz", "dense_epochs", "sparse_epochs", "recover_epochs", "target_macs")


def settings(args: argparse.Namespace, keys: tuple[str, ...] = SETTING_KEYS) -> dict[str, Any]:
    return {k: getattr(args, k) for k in keys}


def read_record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        file.write(json.dumps(record, indent=1).encode())


def trainer_kwargs(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "imgsz": args.imgsz,
        "batch": 16,
        "workers": 0,
        "plots": False,
        "device": "cpu",
        "amp": False,
        "verbose": False,
        "seed": seed,
        "optimizer": "SGD",
    }


def add_common_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--dense-epochs", type=int, default=40)
    parser.add_argument("--sparse-epochs", type=int, default=6)
    parser.add_argument("--recover-epochs", type=int, default=12)
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, help="the data.yaml (default: <out>/data/data.yaml, made if missing)")
    parser.add_argument("--dense", type=Path, help="a dense yolov8n trained on this data (default: train one)")
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only print the table from the records")
    parser.add_argument("--write-docs", action="store_true", help="replace the table in docs/benchmarks.md")


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The data.yaml and the dense weights: reused when given or present, else made as the first runs made them."""
    from ultralytics import YOLO

    from grouppruner.integrations import ultralytics as gpu

    data = args.data or args.out / "data" / "data.yaml"
    if not data.is_file():
        gpu.make_cluttered_yolo(data.parent, args.images, image_size=args.imgsz, seed=0)
    dense = args.dense or args.out / "dense" / "weights" / "last.pt"
    if not dense.is_file():
        kwargs = {k: v for k, v in trainer_kwargs(args, 0).items() if k != "optimizer"}  # the user's default
        YOLO("yolov8n.yaml").train(
            data=str(data), epochs=args.dense_epochs, project=str(args.out), name="dense", exist_ok=True, **kwargs
        )
    return data.resolve(), dense.resolve()


def validate(weights: Path, data: Path, kwargs: dict[str, Any]) -> dict[str, float]:
    """mAP50-95 and mAP50 of a weights file by Ultralytics' validator on the val split."""
    from grouppruner.integrations import ultralytics as gpu

    yolo = gpu.load(weights)
    keys = ("imgsz", "batch", "device", "workers")
    metrics = yolo.val(data=str(data), plots=False, verbose=False, **{k: kwargs[k] for k in keys})
    return {"map50_95": float(metrics.box.map), "map50": float(metrics.box.map50)}


def train(
    model: nn.Module,
    data: Path,
    epochs: int,
    folder: Path,
    kwargs: dict[str, Any],
    callback: Any = None,
    *,
    reuse: bool = False,
    **extra: Any,
) -> Path:
    """Train a module as it is (its architecture kept) with grouppruner's trainer (and a callback object with an
    ``attach(trainer)``); its last weights. ``reuse``: a folder whose run finished all epochs is kept as it is.

    Beside ``last.pt`` (half precision, as Ultralytics saves it) goes ``last_fp32.pt``, the EMA weights in float32
    (see :func:`trained_model`)."""
    from grouppruner.integrations import ultralytics as gpu

    last = folder / "weights" / "last.pt"
    results = folder / "results.csv"
    finished = results.is_file() and len(results.read_text().splitlines()) == epochs + 1
    if reuse and finished and (folder / "weights" / FLOAT_WEIGHTS).is_file():
        return last
    if folder.exists():
        shutil.rmtree(folder)  # a run killed mid-way starts over (an arm's record is written only at its end)
    trainer = gpu.DetectionTrainer(
        overrides={
            "model": "yolov8n.yaml",
            "data": str(data),
            "epochs": epochs,
            "project": str(folder.parent),
            "name": folder.name,
            "exist_ok": True,
            **kwargs,
            **extra,
        }
    )
    trainer.model = model.float().train()
    if callback is not None:
        callback.attach(trainer)
    trainer.train()
    with atomic_write(folder / "weights" / FLOAT_WEIGHTS) as file:
        torch.save({k: v.float() for k, v in trainer.ema.ema.state_dict().items()}, file)
    return last


def trained_model(last: Path) -> nn.Module:
    """The module of ``last.pt`` with the float32 weights saved beside it: a half-precision checkpoint rounds
    BatchNorm scales near 1 to steps of 0.001, and their ties would make a global threshold jump past a budget."""
    from grouppruner.integrations import ultralytics as gpu

    model: nn.Module = gpu.load(last).model.float().cpu()
    model.load_state_dict(torch.load(last.parent / FLOAT_WEIGHTS, map_location="cpu", weights_only=True))
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def size_of(model: nn.Module, imgsz: int) -> tuple[int, int]:
    """Parameters and MACs (one ``(1, 3, imgsz, imgsz)`` image) as ``gpu.compress`` counts them."""
    from grouppruner.integrations.ultralytics.model import example_input
    from grouppruner.profile import count_macs, count_params

    model = copy.deepcopy(model).float().cpu().eval()
    return count_params(model), count_macs(model, example_input(model, imgsz))


def head_outputs(model: nn.Module) -> list[nn.Module]:
    """The Detect head's prediction convs and its DFL: what Torch-Pruning's YOLOv8 example leaves unpruned."""
    head = model.model[-1]  # type: ignore[index]
    return [branch[-1] for attr in ("cv2", "cv3") for branch in getattr(head, attr)] + [head.dfl]


def bisect_ratio(
    model: nn.Module, prune: Callable[[nn.Module, float], None], target: float, imgsz: int, *, halvings: int = 14
) -> tuple[nn.Module, float, float]:
    """The pruned copy of ``model`` whose MACs are the largest at or below ``target`` of the model's.

    ``prune(copy, ratio)`` prunes a copy in place at one Torch-Pruning ``pruning_ratio``; the ratio is bisected
    on [0, 0.95]. Returns the pruned copy, its ratio and its MACs fraction.
    """
    _, base = size_of(model, imgsz)
    low, high = 0.0, 0.95
    best: tuple[nn.Module, float] | None = None
    for _ in range(halvings):
        middle = (low + high) / 2
        trial = copy.deepcopy(model)
        prune(trial, middle)
        fraction = size_of(trial, imgsz)[1] / base
        if fraction > target:
            low = middle
        else:
            high, best = middle, (trial, fraction)
    if best is None:
        raise RuntimeError(f"no pruning ratio below 0.95 reaches {target} of the MACs")
    return best[0], high, best[1]


def split_free_trainable(model: nn.Module) -> nn.Module:
    """``gpu.split_free`` (C2f without ``chunk``, which Torch-Pruning cannot split), float and trainable."""
    from grouppruner.integrations import ultralytics as gpu

    free = gpu.split_free(model).float().cpu()
    for parameter in free.parameters():
        parameter.requires_grad_(True)
    return free


def torch_pruning_recipe(
    model: nn.Module, target_macs: float, imgsz: int, steps: int = 4
) -> tuple[nn.Module, float, float]:
    """Torch-Pruning's YOLOv8 recipe on a split-free copy: ``MagnitudePruner`` with L2 ``MagnitudeImportance``,
    the same ratio in every layer, reached in ``steps`` iterative steps; the ratio bisected to ``target_macs``.

    Returns the pruned copy, its ratio and its MACs fraction.
    """
    import torch_pruning as tp

    free = split_free_trainable(model)
    example = torch.zeros(1, 3, imgsz, imgsz)

    def prune(net: nn.Module, ratio: float) -> None:
        pruner = tp.pruner.MagnitudePruner(
            net,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            iterative_steps=steps,
            pruning_ratio=ratio,
            ignored_layers=head_outputs(net),
        )
        for _ in range(steps):
            pruner.step()

    return bisect_ratio(free.eval(), prune, target_macs, imgsz)


def replace_docs(mark: str, text: str) -> None:
    page = DOCS.read_text(encoding="utf-8")
    if page.count(mark) != 2:
        raise SystemExit(f"{DOCS}: needs two {mark} markers")
    head, _, rest = page.partition(mark)
    _, _, tail = rest.partition(mark)
    DOCS.write_text(f"{head}{mark}\n{text}\n{mark}{tail}", encoding="utf-8")
