"""How hard is the generated VOC data? Train a small YOLOv4 for a few CPU minutes and print its mAP@0.5.

The generator is calibrated so that this run lands between 0.6 and 0.9 on the held-out split (not 1.0): pruning
and distillation methods must be distinguishable on it. The defaults are the calibration run::

    python benchmarks/synthetic_difficulty.py --images 400 --size 128 --width 0.25 --depth 0.34 --epochs 32 \
        --threads 1 --eval-every 8

(YOLOv4 width 0.25 / depth 0.34, 3.27 M parameters, 128 px, 340 training images, AdamW 5e-3 with cosine decay,
batch 16.) It prints the loss per epoch with wall and CPU seconds, the test mAP every ``--eval-every`` epochs,
then the mAP@0.5 (all-point, VOC 2010+) on the trainval and test splits and the per-class test AP. The test split
has only 60 images: expect about +-0.05 between seeds or settings.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from grouppruner.detection import (
    VOCDetection,
    YoloLoss,
    collate,
    evaluate,
    kmeans_anchors,
    make_synthetic_voc,
    train_one_epoch,
    yolov4,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="generated images (70%% train, 15%% val, 15%% test)")
    parser.add_argument("--size", type=int, default=128, help="image and model input size")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--depth", type=float, default=0.34)
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=8, help="also print test mAP every N epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clutter", type=int, default=3, help="make_synthetic_voc clutter")
    parser.add_argument("--noise", type=float, default=0.015, help="make_synthetic_voc noise")
    parser.add_argument("--min-size", type=float, default=8.0, help="make_synthetic_voc min_size")
    parser.add_argument("--hue-spread", type=float, default=12.0, help="make_synthetic_voc hue_spread")
    parser.add_argument("--max-objects", type=int, default=6, help="make_synthetic_voc max_objects")
    parser.add_argument("--root", type=Path, default=None, help="data folder (default: a temporary one)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "synthetic_voc"
        data = make_synthetic_voc(
            root,
            args.images,
            image_size=args.size,
            seed=args.seed,
            clutter=args.clutter,
            noise=args.noise,
            min_size=args.min_size,
            hue_spread=args.hue_spread,
            max_objects=args.max_objects,
        )
        print(
            f"data: {args.images} images, {data.num_objects} objects ({data.num_difficult} difficult), "
            f"splits { {k: len(v) for k, v in data.splits.items()} }"
        )
        train_set = VOCDetection(root, "trainval", args.size, classes=data.classes, augment=True)
        train_eval = VOCDetection(root, "trainval", args.size, classes=data.classes)
        test_set = VOCDetection(root, "test", args.size, classes=data.classes)

        boxes = torch.cat([train_set.letterbox(i).apply(a.boxes) for i, a in enumerate(train_set.annotations)])
        anchors = kmeans_anchors(boxes[:, 2:] - boxes[:, :2], 9, seed=args.seed).view(3, 3, 2)
        model = yolov4(len(data.classes), width=args.width, depth=args.depth, anchors=anchors)
        loss_fn = YoloLoss(len(data.classes), anchors=model.anchors)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
        loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, collate_fn=collate, drop_last=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.lr / 20)
        anchor_list = [tuple(round(v) for v in a) for a in anchors.view(-1, 2).tolist()]
        print(
            f"model: width {args.width}, depth {args.depth}, {sum(p.numel() for p in model.parameters()):,} "
            f"params, input {args.size}, anchors {anchor_list}"
        )

        start, cpu_start = time.perf_counter(), time.process_time()
        for epochs in range(1, args.epochs + 1):
            parts = train_one_epoch(model, loader, optimizer, loss_fn)
            scheduler.step()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            print(
                f"epoch {epochs:3d}  loss {parts['loss']:.4f}  (box {parts['box']:.4f} obj {parts['obj']:.4f} "
                f"cls {parts['cls']:.4f})  wall {elapsed:6.1f} s  cpu {cpu:6.1f} s"
            )
            if args.eval_every and epochs % args.eval_every == 0:
                res = evaluate(model, DataLoader(test_set, batch_size=32, collate_fn=collate), conf=0.001, iou=0.5)
                print(f"    test mAP@0.5 {res['map']:.3f}")
        train_time, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start

        eval_kwargs = {"conf": 0.001, "iou": 0.5}
        train_res = evaluate(model, DataLoader(train_eval, batch_size=32, collate_fn=collate), **eval_kwargs)
        test_res = evaluate(model, DataLoader(test_set, batch_size=32, collate_fn=collate), **eval_kwargs)
        # CPU seconds / threads = the wall time on an idle machine with that many cores.
        print(
            f"trained {args.epochs} epochs: wall {train_time:.0f} s, cpu {train_cpu:.0f} s "
            f"(= {train_cpu / args.threads / 60:.1f} min on {args.threads} idle cores)"
        )
        print(f"mAP@0.5 train {train_res['map']:.3f}  test {test_res['map']:.3f}")
        print(
            "per-class AP (test): "
            + ", ".join(f"{data.classes[c]} {ap:.3f}" for c, ap in sorted(test_res["ap"].items()))
        )


if __name__ == "__main__":
    main()
