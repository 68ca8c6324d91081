"""Does distillation beat fine-tuning alone for a pruned yolov8n? The recovery schedules, on data that separates them.

One dense yolov8n (trained here with Ultralytics' defaults, or ``--dense``) on :func:`make_cluttered_yolo` data
(8 classes told apart by shape and colour together, small overlapping objects, unlabelled distractors). Per seed,
one ``gpu.compress`` run folder makes the sparse and the pruned model (``--target-macs``); every recovery arm
starts from that pruned model (the folder is copied, so only the recovery stages run) and trains for
``--recover-epochs`` inside the Ultralytics trainer, SGD at ``lr0`` 0.01 as ``compress`` does:

- ``fine-tune``: the stock loss alone, one run (``distill_attention=0, distill_output=0``);
- ``fine-tune, then distil``: half the epochs fine-tuning, then a second trainer run distilling (the paper's order,
  and ``compress``'s default before 0.3): two warmups and two learning-rate decays;
- ``distil throughout, off at the end``: one run distilling, the last ``--off-epochs`` with the stock loss;
- the same with the terms' weights lowered so that each term's gradient norm is about a third of the stock loss's
  at the start of recovery (attention 0.1, output 0.2; measured: at weights 1 / 1 they are 2.9x and 1.6x);
- ``Ultralytics' own distillation``: the pruned model trained with the trainer's ``distill_model=`` (score-weighted
  L2 on the neck features through a projector, weight ``dis`` 6), the same epochs;
- ``dense, fine-tuned``: the dense model trained ``--sparse-epochs + --recover-epochs`` more (the reference of
  "mAP kept");
- the balanced arm again, distilled from that fine-tuned dense model instead: a teacher stronger than the
  students (the dense model of a short CPU run is weaker than its pruned and fine-tuned students).

Each finished arm is recorded in ``--results`` (default ``benchmarks/results/ultralytics_distill/seed<k>.json``,
committed): a rerun skips it, a killed arm reruns (Ultralytics resumes inside ``compress``). Prints mAP50-95 per
arm and seed, the mean, the difference to fine-tuning, and the minutes each arm took; ``--write-docs`` puts the
table into docs/benchmarks.md between the ``ultralytics-distill`` markers. Seeds can run in separate processes
(``--seeds 1`` and ``--seeds 2`` side by side); ``--report`` prints the table from the records only;
``--gradients`` prints each term's gradient norm over the stock loss's on a seed's pruned model, at the old
default and the balanced weights::

    YOLO_OFFLINE=1 nice -n 10 python benchmarks/ultralytics_distill.py --seeds 0 --out runs/udistill
    YOLO_OFFLINE=1 python benchmarks/ultralytics_distill.py --report --write-docs
    YOLO_OFFLINE=1 python benchmarks/ultralytics_distill.py --gradients --seeds 0 --out runs/udistill
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _ultralytics_arms import (
    RESULTS,
    SETTING_KEYS,
    add_common_arguments,
    prepare,
    replace_docs,
    settings,
    trainer_kwargs,
)
from _ultralytics_arms import read_record as _read
from _ultralytics_arms import train as _train
from _ultralytics_arms import validate as _validate
from _ultralytics_arms import write_record as _write

os.environ.setdefault("YOLO_OFFLINE", "1")

MARK = "<!-- ultralytics-distill -->"
FINETUNE = "fine-tune"
BALANCED = "distil throughout, off at the end, weights balanced (attention 0.1, output 0.2)"
STRONGER = "the same, from the dense model fine-tuned (a teacher stronger than the students)"
ARMS = (
    FINETUNE,
    "fine-tune, then distil",
    "distil throughout, off at the end",
    BALANCED,
    "Ultralytics' own distillation",
    "dense, fine-tuned",
    STRONGER,
)

FOLDERS = {
    FINETUNE: "fine-tune",
    "fine-tune, then distil": "fine-tune-then-distil",
    "distil throughout, off at the end": "distil-throughout",
    BALANCED: "distil-balanced",
}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return settings(args, (*SETTING_KEYS[:5], "off_epochs", SETTING_KEYS[5]))


def run_seed(args: argparse.Namespace, seed: int, dense: Path, data: Path) -> None:
    from ultralytics import YOLO

    from grouppruner.integrations import ultralytics as gpu

    record_path = args.results / f"seed{seed}.json"
    record = _read(record_path)
    if record.get("settings") != _settings(args):
        record = {"settings": _settings(args), "dense": _validate(dense, data, trainer_kwargs(args, seed)), "arms": {}}
        _write(record_path, record)
    kwargs = trainer_kwargs(args, seed)
    folder = args.out / f"seed{seed}"
    common = {"target_macs": args.target_macs, "sparse_epochs": args.sparse_epochs}
    common["recover_epochs"] = args.recover_epochs
    half = args.recover_epochs // 2
    compress_arms = {
        FINETUNE: {"distill_attention": 0.0, "distill_output": 0.0, "finetune_epochs": args.recover_epochs},
        "fine-tune, then distil": {"finetune_epochs": half},
        "distil throughout, off at the end": {"finetune_epochs": 0, "distill_off_epochs": args.off_epochs},
        BALANCED: {
            "finetune_epochs": 0,
            "distill_off_epochs": args.off_epochs,
            "distill_attention": 0.1,
            "distill_output": 0.2,
        },
    }
    base = folder / "base"
    for label in [ARMS[i] for i in args.arms] if args.arms else ARMS:
        if label in record["arms"]:
            print(f"seed {seed}: {label}: recorded earlier, {record['arms'][label]['map50_95']:.4f}", flush=True)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] seed {seed}: {label} ...", flush=True)
        started = time.perf_counter()
        if label in compress_arms:
            arm_folder = folder / FOLDERS[label]
            if not (arm_folder / "results.json").is_file() and (base / "results.json").is_file():
                shutil.copytree(base, arm_folder, dirs_exist_ok=True)  # dense, sparse and pruned are reused
            result = gpu.compress(
                YOLO(str(dense)), data=data, out=arm_folder, **common, **compress_arms[label], **kwargs
            )
            if not (base / "results.json").is_file():
                base.mkdir(parents=True, exist_ok=True)
                for name in ("dense.pt", "sparse.pt", "pruned.pt", "results.json"):
                    shutil.copy2(arm_folder / name, base / name)
            stages = {s.stage: s for s in result.stages}
            row = {"map50_95": stages["recovered"].map50_95, "map50": stages["recovered"].map50}
            row["params_ratio"] = stages["recovered"].params / stages["dense"].params
            row["macs_ratio"] = stages["recovered"].macs / stages["dense"].macs
        elif label == STRONGER:
            teacher = folder / "dense-ft" / "weights" / "last.pt"
            if "dense, fine-tuned" not in record["arms"] or not teacher.is_file():
                raise RuntimeError(f"{teacher}: run the 'dense, fine-tuned' arm of seed {seed} first")
            distillation = gpu.Distillation(teacher, attention=0.1, output=0.2, off_epochs=args.off_epochs)
            pruned = gpu.load(base / "pruned.pt").model
            last = _train(pruned, data, args.recover_epochs, folder / "stronger-teacher", kwargs, distillation)
            row = _validate(last, data, kwargs)
            row["teacher_map50_95"] = record["arms"]["dense, fine-tuned"]["map50_95"]
        elif label == "dense, fine-tuned":
            last = _train(
                YOLO(str(dense)).model, data, args.sparse_epochs + args.recover_epochs, folder / "dense-ft", kwargs
            )
            row = _validate(last, data, kwargs)
        else:
            if not (base / "pruned.pt").is_file():
                raise RuntimeError(f"{base / 'pruned.pt'} is missing: run the compress arms first")
            pruned = gpu.load(base / "pruned.pt").model
            try:
                last = _train(
                    pruned, data, args.recover_epochs, folder / "ultralytics-kd", kwargs, distill_model=str(dense)
                )
                row = _validate(last, data, kwargs)
            except Exception as error:  # a peer's feature failing on a pruned model is a result to report
                row = {"map50_95": float("nan"), "map50": float("nan"), "error": f"{type(error).__name__}: {error}"}
        row["minutes"] = (time.perf_counter() - started) / 60
        record["arms"][label] = row
        _write(record_path, record)
        print(f"seed {seed}: {label}: mAP50-95 {row['map50_95']:.4f} ({row['minutes']:.1f} min)", flush=True)


def gradient_ratios(args: argparse.Namespace, seed: int, weights: list[tuple[float, float, float]]) -> str:
    """Each term's gradient norm over the stock loss's, on the seed's pruned model (before recovery), per weights.

    Four batches of 16 training images (as files: no augmentation), the median ratio per term; ``weights`` are
    ``(attention, output, temperature)``.
    """
    import numpy as np
    from PIL import Image
    from ultralytics.cfg import get_cfg

    from grouppruner.distill import gradient_norms
    from grouppruner.integrations import ultralytics as gpu
    from grouppruner.integrations.ultralytics.distill import HeadDistillLoss

    files = sorted((args.out / "data" / "images" / "train").glob("*.png"))[:64]

    def batch(chunk: list[Path]) -> dict[str, torch.Tensor]:
        images, index, classes, boxes = [], [], [], []
        for i, file in enumerate(chunk):
            images.append(torch.from_numpy(np.array(Image.open(file))).permute(2, 0, 1).float() / 255)
            label = Path(str(file).replace("images", "labels")).with_suffix(".txt")
            for line in label.read_text().split("\n"):
                if line.strip():
                    values = [float(v) for v in line.split()]
                    index.append(i)
                    classes.append(values[:1])
                    boxes.append(values[1:])
        return {
            "img": torch.stack(images),
            "batch_idx": torch.tensor(index, dtype=torch.float32),
            "cls": torch.tensor(classes),
            "bboxes": torch.tensor(boxes),
        }

    student = gpu.load(args.out / f"seed{seed}" / "base" / "pruned.pt").model.float()
    dense = args.dense or args.out / "dense" / "weights" / "last.pt"
    teacher = gpu.load(dense).model.float().eval()
    student.args = get_cfg()  # the loss gains, as the trainer sets them
    student.train()
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    stock = student.init_criterion()
    lines = ["| attention | output | T | att / stock | kd / stock |", "|---|---|---|---|---|"]
    for attention, output, temperature in weights:
        terms = HeadDistillLoss(16, attention=attention, output=output, temperature=temperature)
        ratios: dict[str, list[float]] = {"att": [], "kd": []}
        for start in range(0, len(files), 16):
            b = batch(files[start : start + 16])
            preds = student(b["img"])
            loss, _ = stock(preds, b)
            with torch.no_grad():
                teacher_preds = teacher(b["img"])
            values = terms(preds, teacher_preds)
            size = b["img"].shape[0]
            norms = gradient_norms(
                {"stock": loss.sum(), "att": values["att"] * size, "kd": values["kd"] * size}, student.parameters()
            )
            for name in ratios:
                ratios[name].append(norms[name] / norms["stock"])
        att, kd = (statistics.median(ratios[name]) for name in ("att", "kd"))
        lines.append(f"| {attention:g} | {output:g} | {temperature:g} | {att:.3f} | {kd:.3f} |")
    return "\n".join(lines)


def report(args: argparse.Namespace) -> str:
    records = {int(p.stem[4:]): _read(p) for p in sorted(args.results.glob("seed*.json"))}
    records = {k: v for k, v in records.items() if v.get("settings") == _settings(args)}
    if not records:
        return "no finished seed with these settings"
    seeds = sorted(records)
    lines = [
        f"| arm | mAP50-95, seed {' / '.join(map(str, seeds))} | mean (seeds) | vs fine-tune (points) | minutes |",
        "|---|---|---|---|---|",
    ]
    for label in ARMS:
        rows = [records[s]["arms"].get(label) for s in seeds]
        if not any(rows):
            continue
        tune = [records[s]["arms"].get(FINETUNE, {}).get("map50_95") for s in seeds]
        values = [f"{r['map50_95']:.4f}" if r else "-" for r in rows]
        diffs = [
            f"{100 * (r['map50_95'] - t):+.2f}" if r and t is not None else "-" for r, t in zip(rows, tune, strict=True)
        ]
        present = [r["map50_95"] for r in rows if r]
        minutes = statistics.fmean(r["minutes"] for r in rows if r)
        error = next((r["error"] for r in rows if r and "error" in r), "")
        lines.append(
            f"| {label} | {' / '.join(values)} | {statistics.fmean(present):.4f} ({len(present)}) | "
            f"{' / '.join(diffs)} | {minutes:.1f} |" + (f" {error[:120]}" if error else "")
        )
    dense = " / ".join(f"{records[s]['dense']['map50_95']:.4f}" for s in seeds)
    s = _settings(args)
    head = (
        f"yolov8n on {s['images']} generated cluttered images (8 classes) at {s['imgsz']} px; the dense model "
        f"({s['dense_epochs']} epochs) scores {dense}; {s['sparse_epochs']} sparse epochs, pruned to "
        f"{s['target_macs']} of the MACs, then {s['recover_epochs']} recovery epochs per arm (off at the end: the "
        f"last {s['off_epochs']}); SGD lr0 0.01, batch 16, one CPU thread per process."
    )
    return "\n".join([head, "", *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "runs/udistill")
    parser.add_argument("--off-epochs", type=int, default=2, help="the last epochs without distillation")
    parser.add_argument("--results", type=Path, default=RESULTS / "ultralytics_distill")
    parser.add_argument(
        "--arms",
        type=int,
        nargs="+",
        choices=range(len(ARMS)),
        help="run only these arms, in this order (indices into ARMS)",
    )
    parser.add_argument(
        "--gradients", action="store_true", help="only print the terms' gradient norms on the first seed's pruned model"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.gradients:
        print(gradient_ratios(args, args.seeds[0], [(1.0, 1.0, 3.0), (0.1, 0.2, 3.0), (1.0, 1.0, 1.0)]))
        return
    if not args.report:
        data, dense = prepare(args)
        for seed in args.seeds:
            run_seed(args, seed, dense, data)
    text = report(args)
    print(text)
    if args.write_docs:
        replace_docs(MARK, text)


if __name__ == "__main__":
    main()
