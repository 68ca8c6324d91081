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

__all__ = ["COLOURS", "SHAPES", "make_cluttered_yolo", "make_synthetic_yolo"]

#: The class colours (RGB), one per class.
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40), (200, 60, 220), (40, 210, 210))

#: The shapes of :func:`make_cluttered_yolo`'s classes.
SHAPES = ("rectangle", "ellipse", "triangle", "cross")
# Two hues per shape make the classes; distractors take the other hues, so that neither shape nor colour alone
# names a class.
_CLASS_HUES = ((225, 60, 50), (60, 190, 70))
_DISTRACTOR_HUES = ((70, 90, 225), (215, 200, 60), (190, 190, 190))


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


def _draw_shape(draw: object, shape: str, box: tuple[float, float, float, float], colour: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if shape == "rectangle":
        draw.rectangle(box, fill=colour)  # type: ignore[attr-defined]
    elif shape == "ellipse":
        draw.ellipse(box, fill=colour)  # type: ignore[attr-defined]
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)  # type: ignore[attr-defined]
    else:  # a cross: two bars a third of the box wide
        w3, h3 = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle((x0 + w3, y0, x1 - w3, y1), fill=colour)  # type: ignore[attr-defined]
        draw.rectangle((x0, y0 + h3, x1, y1 - h3), fill=colour)  # type: ignore[attr-defined]


def make_cluttered_yolo(
    root: str | os.PathLike[str],
    num_images: int = 800,
    *,
    image_size: int = 128,
    num_classes: int = 8,
    val_fraction: float = 0.25,
    max_objects: int = 10,
    distractors: int = 6,
    size_range: tuple[float, float] = (0.06, 0.3),
    seed: int = 0,
) -> Path:
    """Write a harder YOLO-format detection set: ``root/images/{train,val}``, ``root/labels/...``, ``data.yaml``.

    A class is one of :data:`SHAPES` in one of two hues (class ``k``: shape ``k % 4``, hue ``k // 4``), drawn with
    a colour jitter on a textured background (noise plus a random gradient). Every image has 1 to ``max_objects``
    labelled objects, small (a side drawn in ``size_range`` of the image, log-uniform) and free to overlap (a
    later object hides part of an earlier one; the label keeps the whole box), and 0 to ``distractors``
    unlabelled shapes in other hues. Objects must be told apart by shape and colour together, so methods that
    lose capacity lose accuracy: ``benchmarks/ultralytics_yolo.py --data cluttered`` trains on it.

    Args:
        root: the folder (created).
        num_images: images in both splits together (at least 4 go to each split).
        image_size: square image side in pixels.
        num_classes: classes, 1 to ``2 * len(SHAPES)``.
        val_fraction: the share of images in ``val``.
        max_objects: labelled objects per image, 1 to this.
        distractors: unlabelled shapes per image, 0 to this.
        size_range: the smallest and largest object side, as fractions of the image side.
        seed: the random seed; the same arguments give the same files.

    Returns:
        The path of ``data.yaml``.

    Raises:
        ValueError: ``num_classes`` outside ``1 .. 8``, fewer than 8 images, a bad fraction or size range.
    """
    from PIL import Image, ImageDraw

    classes = len(SHAPES) * len(_CLASS_HUES)
    if not 1 <= num_classes <= classes:
        raise ValueError(f"make_cluttered_yolo: num_classes must be in 1..{classes}, got {num_classes}")
    if num_images < 8 or not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"make_cluttered_yolo: need num_images >= 8 and 0 < val_fraction < 1, got {num_images}, {val_fraction}"
        )
    low, high = size_range
    if not 0.0 < low <= high < 1.0 or max_objects < 1 or distractors < 0:
        raise ValueError(
            f"make_cluttered_yolo: need 0 < size_range[0] <= size_range[1] < 1, max_objects >= 1 and "
            f"distractors >= 0, got {size_range}, {max_objects}, {distractors}"
        )
    root = Path(root)
    rng = np.random.default_rng(seed)
    val = max(4, round(num_images * val_fraction))
    grid = np.linspace(0.0, 1.0, image_size)

    def jitter(hue: tuple[int, int, int]) -> tuple[int, ...]:
        return tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in hue)

    def place() -> tuple[float, float, float, float]:
        w, h = np.exp(rng.uniform(np.log(low), np.log(high), 2))
        cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
        return cx, cy, w, h

    for split, count in (("train", num_images - val), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            ramp = np.outer(grid, np.ones(image_size)) if rng.random() < 0.5 else np.outer(np.ones(image_size), grid)
            base = rng.integers(20, 90, 3)[None, None, :] + 60 * ramp[:, :, None] * rng.uniform(-1, 1, 3)
            image = np.clip(base + rng.normal(0, 18, (image_size, image_size, 3)), 0, 255).astype(np.uint8)
            canvas = Image.fromarray(image)
            draw = ImageDraw.Draw(canvas)
            objects = [
                ("object", int(rng.integers(0, num_classes))) for _ in range(int(rng.integers(1, max_objects + 1)))
            ]
            objects += [("distractor", -1) for _ in range(int(rng.integers(0, distractors + 1)))]
            lines = []
            for order in rng.permutation(len(objects)):
                kind, cls = objects[order]
                cx, cy, w, h = place()
                box = (
                    (cx - w / 2) * image_size,
                    (cy - h / 2) * image_size,
                    (cx + w / 2) * image_size - 1,
                    (cy + h / 2) * image_size - 1,
                )
                if kind == "object":
                    _draw_shape(draw, SHAPES[cls % len(SHAPES)], box, jitter(_CLASS_HUES[cls // len(SHAPES)]))
                    lines.append(f"{cls} {cx:.5f} {cy:.5f} {w:.5f} {h:.5f}")
                else:
                    shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
                    _draw_shape(draw, shape, box, jitter(_DISTRACTOR_HUES[int(rng.integers(0, len(_DISTRACTOR_HUES)))]))
            canvas.save(root / "images" / split / f"{index:05d}.png")
            (root / "labels" / split / f"{index:05d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = "".join(f"  {k}: {SHAPES[k % len(SHAPES)]}{k // len(SHAPES)}\n" for k in range(num_classes))
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}", encoding="utf-8")
    return data
