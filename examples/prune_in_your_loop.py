"""The three stages written out in a plain training loop, as you would add them to your own.

Runs on generated VOC-format data in a few minutes on a CPU:

    python examples/prune_in_your_loop.py --out runs/example

For the same pipeline as one resumable call, see ``grouppruner demo`` / ``grouppruner.detection.run_recipe``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import grouppruner as gp
from grouppruner.detection import (
    VOCDetection,
    YoloLoss,
    collate,
    evaluate,
    kmeans_anchors,
    make_synthetic_voc,
    yolov4,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/example")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each training stage")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = make_synthetic_voc(out / "data", args.images, image_size=args.size, seed=0)
    train_set = VOCDetection(data.root, "train", args.size, augment=True, classes=data.classes)
    val_set = VOCDetection(data.root, "val", args.size, classes=data.classes)
    train = DataLoader(train_set, batch_size=16, shuffle=True, collate_fn=collate)
    val = DataLoader(val_set, batch_size=16, collate_fn=collate)
    boxes = torch.cat([a.boxes for a in train_set.annotations])
    anchors = kmeans_anchors(boxes[:, 2:] - boxes[:, :2]).view(3, 3, 2)

    model = yolov4(len(data.classes), width=0.25, depth=0.34, anchors=anchors)
    loss_fn = YoloLoss(len(data.classes), anchors=anchors)

    def fit(net: torch.nn.Module, epochs: int, *, after_backward=None, forward=None, extra_loss=None) -> None:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        net.train()
        for _ in range(epochs):
            for images, targets in train:
                outputs = (forward or net)(images)
                loss, _ = loss_fn(outputs, targets)
                if extra_loss is not None:
                    loss = loss + extra_loss()
                optimizer.zero_grad()
                loss.backward()
                if after_backward is not None:
                    after_backward()
                optimizer.step()

    # 0. An ordinary detector (stands in for your trained model).
    fit(model, args.epochs)
    print(f"dense      mAP@0.5 {evaluate(model, val)['map']:.3f}")

    # 1. Dynamic sparse training: the regularizer acts on gradients between backward() and step().
    graph = gp.ChannelGraph(model, torch.zeros(1, 3, args.size, args.size))
    steps = args.epochs * len(train)
    sparsity = gp.BNSparsity(graph, schedule=gp.sparsity.Dynamic(1e-3, total_steps=steps))
    fit(model, args.epochs, after_backward=sparsity.step)
    print(f"sparse     mAP@0.5 {evaluate(model, val)['map']:.3f}")
    teacher = copy.deepcopy(model)

    # 2. Group channel pruning with one threshold per layer group, to 35 % of the parameters.
    pruner = gp.GroupPruner(graph, min_channels=8)
    plan = pruner.plan(target_params=0.35)
    print(plan.summary())
    pruner.apply(plan)
    print(f"pruned     mAP@0.5 {evaluate(model, val)['map']:.3f}")

    # 3. Recovery with spatial-attention distillation from the unpruned model.
    distiller = gp.AttentionDistiller(teacher, model, model.distill_layers)
    fit(model, args.epochs, forward=distiller, extra_loss=lambda: 10.0 * distiller.loss()[0])
    distiller.remove()
    print(f"recovered  mAP@0.5 {evaluate(model, val)['map']:.3f}")

    gp.save_pruned(model, out / "pruned.pt")
    restored = gp.load_pruned(yolov4(len(data.classes), width=0.25, depth=0.34, anchors=anchors), out / "pruned.pt")
    print(f"saved {out / 'pruned.pt'}: {gp.profile.count_params(restored):,} parameters")


if __name__ == "__main__":
    main()
