"""A generated YOLO-format data set (images, label files, data.yaml) for tests, examples and benchmarks.

Each image is a noisy background with one to ``max_objects`` filled rectangles; the class of a rectangle is its
colour. Labels are Ultralytics' text format (``class cx cy w h``, normalised); with ``segments=True`` each line
is a polygon (the rectangle's corners) instead, for segmentation models.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["COLOURS", "make_synthetic_yolo"]

#: The class colours (RGB), one per class.
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40), (200, 60, 220), (40, 210, 210))


def make_synthetic_yolo(
    root: str | os.PathLike[str],
    num_images: int = 48,
    *,
    image_size: int = 64,
    num_classes: int = 2,
    val_fraction: float = 0.25,
    max_objects: int = 3,
    segments: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``root/images/{train,val}``, ``root/labels/{train,val}`` and ``root/data.yaml``; return the yaml.

    Args:
        root: the folder (created).
        num_images: images in both splits together (at least 4 go to each split).
        image_size: square image side in pixels.
        num_classes: classes (at most ``len(COLOURS)``).
        val_fraction: the share of images in ``val``.
        max_objects: rectangles per image, 1 to this.
        segments: write polygon labels (segmentation) instead of boxes.
        seed: the random seed; the same arguments give the same files.

    Raises:
        ValueError: ``num_classes`` outside ``1 .. len(COLOURS)``, fewer than 8 images, a bad fraction.
    """
    from PIL import Image

    if not 1 <= num_classes <= len(COLOURS):
        raise ValueError(f"num_classes must be in 1..{len(COLOURS)}, got {num_classes}")
    if num_images < 8 or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"need num_images >= 8 and 0 < val_fraction < 1, got {num_images}, {val_fraction}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    val = max(4, round(num_images * val_fraction))
    for split, count in (("train", num_images - val), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = rng.integers(0, 60, (image_size, image_size, 3)).astype(np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, max_objects + 1))):
                cls = int(rng.integers(0, num_classes))
                w, h = rng.uniform(0.15, 0.45, 2)
                cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
                x0, y0 = round((cx - w / 2) * image_size), round((cy - h / 2) * image_size)
                x1, y1 = round((cx + w / 2) * image_size), round((cy + h / 2) * image_size)
                image[y0:y1, x0:x1] = COLOURS[cls]
                if segments:
                    xa, ya, xb, yb = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                    lines.append(f"{cls} {xa:.5f} {ya:.5f} {xb:.5f} {ya:.5f} {xb:.5f} {yb:.5f} {xa:.5f} {yb:.5f}")
                else:
                    lines.append(f"{cls} {cx:.5f} {cy:.5f} {w:.5f} {h:.5f}")
            Image.fromarray(image).save(root / "images" / split / f"{index:05d}.png")
            (root / "labels" / split / f"{index:05d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = "".join(f"  {i}: class{i}\n" for i in range(num_classes))
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}", encoding="utf-8")
    return data
