"""A generated YOLO-format data set (images, label files, data.yaml) for tests, examples and benchmarks.

Each image is a noisy background with one to ``max_objects`` filled rectangles; the class of a rectangle is its
colour. Labels are Ultralytics' text format (``class cx cy w h``, normalised); with ``segments=True`` each line
is a polygon (the rectangle's corners) instead, for segmentation models; with ``rotated=True`` the rectangles
are turned by a random angle and each line holds their four corners (``class x1 y1 ... x4 y4``), the format of
oriented-box (OBB) models; with ``keypoints=True`` each box line is followed by its four corners as visible
keypoints (``kpt_shape: [4, 3]`` in the data.yaml), for pose models.
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
    rotated: bool = False,
    keypoints: bool = False,
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
        rotated: rotated rectangles with their four corners as labels (oriented boxes).
        keypoints: the rectangle's corners as four keypoints after each box (pose).
        seed: the random seed; the same arguments give the same files.

    Raises:
        ValueError: ``num_classes`` outside ``1 .. len(COLOURS)``, fewer than 8 images, a bad fraction, or more
            than one of ``segments``, ``rotated``, ``keypoints``.
    """
    from PIL import Image, ImageDraw

    if not 1 <= num_classes <= len(COLOURS):
        raise ValueError(f"num_classes must be in 1..{len(COLOURS)}, got {num_classes}")
    if num_images < 8 or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"need num_images >= 8 and 0 < val_fraction < 1, got {num_images}, {val_fraction}")
    if segments + rotated + keypoints > 1:
        raise ValueError("give at most one of segments, rotated, keypoints")
    root = Path(root)
    rng = np.random.default_rng(seed)
    val = max(4, round(num_images * val_fraction))
    for split, count in (("train", num_images - val), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = rng.integers(0, 60, (image_size, image_size, 3)).astype(np.uint8)
            lines = []
            canvas = Image.fromarray(image)
            draw = ImageDraw.Draw(canvas)
            for _ in range(int(rng.integers(1, max_objects + 1))):
                cls = int(rng.integers(0, num_classes))
                w, h = rng.uniform(0.15, 0.45, 2)
                angle = float(rng.uniform(0, np.pi / 2)) if rotated else 0.0
                # the turned rectangle's half extents along x and y, so that it stays inside the image
                ex = (w * abs(np.cos(angle)) + h * abs(np.sin(angle))) / 2
                ey = (w * abs(np.sin(angle)) + h * abs(np.cos(angle))) / 2
                cx, cy = rng.uniform(ex, 1 - ex), rng.uniform(ey, 1 - ey)
                c, s = np.cos(angle), np.sin(angle)
                corners = [
                    (cx + dx * c - dy * s, cy + dx * s + dy * c)
                    for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))
                ]
                if rotated:
                    draw.polygon([(x * image_size, y * image_size) for x, y in corners], fill=COLOURS[cls])
                else:
                    x0, y0 = round((cx - w / 2) * image_size), round((cy - h / 2) * image_size)
                    x1, y1 = round((cx + w / 2) * image_size), round((cy + h / 2) * image_size)
                    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=COLOURS[cls])  # the pixels [y0:y1, x0:x1]
                if segments or rotated:
                    lines.append(f"{cls} " + " ".join(f"{x:.5f} {y:.5f}" for x, y in corners))
                elif keypoints:
                    points = " ".join(f"{x:.5f} {y:.5f} 2" for x, y in corners)
                    lines.append(f"{cls} {cx:.5f} {cy:.5f} {w:.5f} {h:.5f} {points}")
                else:
                    lines.append(f"{cls} {cx:.5f} {cy:.5f} {w:.5f} {h:.5f}")
            image = np.asarray(canvas)
            Image.fromarray(image).save(root / "images" / split / f"{index:05d}.png")
            (root / "labels" / split / f"{index:05d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = "".join(f"  {i}: class{i}\n" for i in range(num_classes))
    # a horizontal flip swaps the left and the right corners
    pose = "kpt_shape: [4, 3]\nflip_idx: [1, 0, 3, 2]\n" if keypoints else ""
    data = root / "data.yaml"
    text = f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n{pose}names:\n{names}"
    data.write_text(text, encoding="utf-8")
    return data
