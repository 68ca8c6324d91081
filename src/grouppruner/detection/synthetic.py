"""Generated PASCAL VOC style detection data: shapes on cluttered backgrounds, written as a real VOC folder.

:func:`make_synthetic_voc` renders images of geometric objects (one shape per class, each class with its own hue
range, random textures) at scales from a few pixels to most of the image, so that the stride-8, stride-16 and
stride-32 heads of a detector all have work. Background gradients, low-contrast clutter, distractor shapes that
belong to no class (ellipses, hexagons, half discs, bars), foreground occluders, pixel noise and JPEG compression
make it hard enough that a small detector trained for a few CPU minutes reaches a mAP@0.5 well below 1, so
compression methods can be told apart on it. Tiny and heavily occluded objects are marked ``difficult``.

The output is byte-identical for the same arguments (same seed) on the same Pillow / libjpeg build.
"""

from __future__ import annotations

import colorsys
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np

from .._utils.errors import InvalidOptionError
from .._utils.io import atomic_write

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
"""The shape classes :func:`make_synthetic_voc` can draw (its default ``classes``)."""

# Base hue (degrees) of each class: with the spread of make_synthetic_voc's hue_spread, colour is a hint, not
# a give-away.
_CLASS_HUE = {"circle": 0.0, "square": 60.0, "triangle": 120.0, "star": 180.0, "cross": 240.0, "ring": 300.0}
_SUPERSAMPLE = 2
_JPEG_QUALITY = 85


@dataclass(frozen=True)
class SyntheticObject:
    """One annotated object: class name, VOC box ``(xmin, ymin, xmax, ymax)`` (1-based inclusive), difficult."""

    name: str
    box: tuple[int, int, int, int]
    difficult: bool


@dataclass(frozen=True)
class SyntheticVOC:
    """What :func:`make_synthetic_voc` wrote.

    Attributes:
        root: The VOC folder (pass it to :class:`~grouppruner.detection.VOCDetection` with ``classes``).
        classes: Class names in label order.
        splits: Split name -> image ids (``train``, ``val``, ``trainval``, ``test``; empty splits not written).
        objects: Image id -> its annotated objects.
    """

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, list[str]]
    objects: dict[str, list[SyntheticObject]] = field(repr=False)

    @property
    def num_objects(self) -> int:
        """Total number of annotated objects."""
        return sum(len(v) for v in self.objects.values())

    @property
    def num_difficult(self) -> int:
        """Number of objects marked difficult."""
        return sum(o.difficult for v in self.objects.values() for o in v)


def _rgb(hue_deg: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val), dtype=np.float32) * 255.0


def _polygon(kind: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Unit-size outline of a polygonal shape, centred at the origin, radius about 1."""
    if kind == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if kind == "triangle":
        return [(math.cos(a), math.sin(a)) for a in np.deg2rad([-90.0, 30.0, 150.0])]
    if kind == "star":
        inner = float(rng.uniform(0.38, 0.5))
        return [
            (
                (1.0 if k % 2 == 0 else inner) * math.cos(math.pi * k / 5 - math.pi / 2),
                (1.0 if k % 2 == 0 else inner) * math.sin(math.pi * k / 5 - math.pi / 2),
            )
            for k in range(10)
        ]
    if kind == "cross":
        a = float(rng.uniform(0.25, 0.38))
        return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                (-1, -a), (-a, -a)]  # fmt: skip
    if kind == "hexagon":
        return [(math.cos(a), math.sin(a)) for a in np.deg2rad(np.arange(0, 360, 60))]
    if kind == "halfdisc":
        return [(math.cos(a), math.sin(a) * 0.9 + 0.45) for a in np.deg2rad(np.linspace(180, 360, 19))]
    if kind == "bar":
        return [(-1, -0.12), (1, -0.12), (1, 0.12), (-1, 0.12)]
    raise InvalidOptionError(f"unknown shape {kind!r}")


def _shape_mask(
    kind: str,
    size: tuple[int, int],
    centre: tuple[float, float],
    radius: float,
    aspect: float,
    angle: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render a shape as a float coverage mask ``(H, W)`` in [0, 1], anti-aliased by supersampling."""
    from PIL import Image, ImageDraw

    height, width = size
    s = _SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = centre[0] * s, centre[1] * s
    rx, ry = radius * s * aspect, radius * s / aspect
    if kind in ("circle", "ring", "ellipse"):
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        if kind == "ring":
            inner = float(rng.uniform(0.5, 0.65))
            draw.ellipse([cx - rx * inner, cy - ry * inner, cx + rx * inner, cy + ry * inner], fill=0)
    else:
        cos, sin = math.cos(angle), math.sin(angle)
        points = [(x * rx, y * ry) for x, y in _polygon(kind, rng)]
        draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points], fill=255)
    small = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _texture(size: tuple[int, int], colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random texture ``(H, W, 3)`` float in [0, 255] around ``colour``: solid, stripes, checker or speckle."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = int(rng.integers(0, 4))
    other = np.clip(colour * float(rng.uniform(0.45, 0.8)), 0, 255)
    if kind == 0:
        # Solid with a gentle shading gradient.
        gx, gy = rng.uniform(-0.4, 0.4, size=2) / max(height, width)
        shade = np.clip(1.0 + gx * (xx - width / 2) + gy * (yy - height / 2), 0.6, 1.3)
        solid: np.ndarray = np.clip(colour[None, None, :] * shade[..., None], 0, 255)
        return solid
    if kind == 1:
        period = float(rng.uniform(3.0, 8.0))
        theta = float(rng.uniform(0, math.pi))
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        pattern = (np.floor(phase) % 2)[..., None]
    elif kind == 2:
        period = float(rng.uniform(3.0, 7.0))
        pattern = ((np.floor(xx / period) + np.floor(yy / period)) % 2)[..., None]
    else:
        pattern = (rng.random((height, width)) < 0.3).astype(np.float32)[..., None]
    mixed: np.ndarray = colour[None, None, :] * (1 - pattern) + other[None, None, :] * pattern
    return mixed


def _background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0 = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.85))
    c1 = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.85))
    theta = float(rng.uniform(0, 2 * math.pi))
    t = (xx * math.cos(theta) + yy * math.sin(theta)) / math.hypot(width, height) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    gradient: np.ndarray = c0 * (1 - t) + c1 * t
    return gradient


def _paint(canvas: np.ndarray, mask: np.ndarray, texture: np.ndarray, opacity: float = 1.0) -> None:
    alpha = (mask * opacity)[..., None]
    canvas *= 1 - alpha
    canvas += texture * alpha


def _clutter(canvas: np.ndarray, rng: np.random.Generator, count: int, *, contrast: tuple[float, float]) -> None:
    """Low-contrast blobs and distractor shapes (no class) drawn onto ``canvas`` in place."""
    height, width = canvas.shape[:2]
    for _ in range(count):
        kind = ["ellipse", "hexagon", "halfdisc", "bar", "ellipse"][int(rng.integers(0, 5))]
        radius = float(np.exp(rng.uniform(math.log(3), math.log(0.35 * min(height, width)))))
        aspect = float(rng.uniform(0.45, 0.65)) if kind == "ellipse" else float(rng.uniform(0.8, 1.25))
        centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
        mask = _shape_mask(kind, (height, width), centre, radius, aspect, float(rng.uniform(0, math.pi)), rng)
        colour = _rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.9), rng.uniform(0.25, 0.95))
        _paint(canvas, mask, _texture((height, width), colour, rng), float(rng.uniform(*contrast)))


def _render_image(
    rng: np.random.Generator,
    classes: Sequence[str],
    image_size: int,
    max_objects: int,
    min_size: float,
    difficult_size: float,
    clutter: int,
    noise: float,
    hue_spread: float,
) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Render one image ``(H, W, 3)`` uint8 and its objects."""
    long_side = image_size
    short_side = round(image_size * float(rng.uniform(0.6, 1.0)))
    height, width = (long_side, short_side) if rng.random() < 0.3 else (short_side, long_side)
    canvas = _background((height, width), rng)
    _clutter(canvas, rng, int(rng.integers(clutter // 2, clutter + 1)), contrast=(0.25, 0.9))

    ids = np.zeros((height, width), dtype=np.int32)  # object id + 1 of the visible object at each pixel
    areas: list[float] = []
    placed: list[str] = []
    num = int(rng.integers(1, max_objects + 1))
    max_radius = 0.45 * min(height, width)
    for _ in range(num):
        for _attempt in range(20):
            name = classes[int(rng.integers(0, len(classes)))]
            # Log-uniform object size: tiny to large, so every head stride gets objects.
            radius = float(np.exp(rng.uniform(math.log(min_size / 2), math.log(max_radius))))
            aspect = float(rng.uniform(0.9, 1.1)) if name in ("circle", "ring") else float(rng.uniform(0.75, 1.3))
            centre = (float(rng.uniform(radius, width - radius)), float(rng.uniform(radius, height - radius)))
            mask = _shape_mask(name, (height, width), centre, radius, aspect, float(rng.uniform(0, 2 * math.pi)), rng)
            solid = mask > 0.5
            area = float(solid.sum())
            if area < 4:
                continue
            trial = ids.copy()
            trial[solid] = len(areas) + 1
            # Keep earlier objects at least 35 % visible: a fully hidden object cannot be annotated honestly.
            if all((trial == k + 1).sum() >= 0.35 * a for k, a in enumerate(areas)):
                break
        else:
            continue
        hue = _CLASS_HUE.get(name, 360.0 * classes.index(name) / len(classes)) + rng.normal(0, hue_spread)
        colour = _rgb(hue, float(rng.uniform(0.45, 1.0)), float(rng.uniform(0.45, 1.0)))
        _paint(canvas, mask, _texture((height, width), colour, rng))
        ids = trial
        areas.append(area)
        placed.append(name)

    # Foreground occluders (bars and blobs of no class) in front of the objects.
    for _ in range(int(rng.integers(0, 3))):
        kind = "bar" if rng.random() < 0.6 else "hexagon"
        radius = float(rng.uniform(0.1, 0.35)) * min(height, width)
        centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
        mask = _shape_mask(kind, (height, width), centre, radius, 1.0, float(rng.uniform(0, math.pi)), rng)
        trial = ids.copy()
        trial[mask > 0.5] = 0
        if all((trial == k + 1).sum() >= 0.35 * a for k, a in enumerate(areas)):
            colour = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.8), rng.uniform(0.2, 0.95))
            _paint(canvas, mask, _texture((height, width), colour, rng))
            ids = trial

    canvas += rng.normal(0.0, noise * 255.0, size=canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    objects: list[SyntheticObject] = []
    for k, (name, area) in enumerate(zip(placed, areas, strict=True)):
        ys, xs = np.nonzero(ids == k + 1)
        visible = len(xs) / area
        # VOC boxes are 1-based inclusive: pixel columns x0..x1 -> xmin = x0 + 1, xmax = x1 + 1.
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        extent = max(box[2] - box[0] + 1, box[3] - box[1] + 1)
        objects.append(SyntheticObject(name, box, bool(extent < difficult_size or visible < 0.6)))
    return image, objects


def _xml(image_id: str, width: int, height: int, objects: Sequence[SyntheticObject]) -> str:
    parts = [
        "<annotation>",
        "\t<folder>synthetic</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source><database>grouppruner synthetic VOC</database></source>",
        f"\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj.box
        parts += [
            "\t<object>",
            f"\t\t<name>{obj.name}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            f"\t\t<difficult>{int(obj.difficult)}</difficult>",
            f"\t\t<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as file:
        file.write(data)


def split_sizes(num_images: int, split_fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """The numbers of ``train``, ``val`` and ``test`` images :func:`make_synthetic_voc` writes for these arguments
    (the fractions normalized, the cumulative counts rounded half to even)."""
    fractions = np.asarray(split_fractions, dtype=np.float64)
    bounds = np.rint(np.cumsum(fractions / fractions.sum()) * num_images).astype(int)
    return int(bounds[0]), int(bounds[1] - bounds[0]), int(num_images - bounds[1])


def make_synthetic_voc(
    root: str | os.PathLike[str],
    num_images: int,
    *,
    image_size: int = 160,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    seed: int = 0,
    max_objects: int = 6,
    min_size: float = 8.0,
    difficult_size: float = 10.0,
    clutter: int = 3,
    noise: float = 0.015,
    hue_spread: float = 12.0,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> SyntheticVOC:
    """Write a VOC-format detection folder of rendered shapes.

    Layout written under ``root``: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` and
    ``ImageSets/Main/{train,val,trainval,test}.txt`` (ids ``000000``, ``000001``...). Read it back with
    ``VOCDetection(root, "train", image_size, classes=result.classes)``.

    Each image (longest side ``image_size``, the other side 60-100 % of it) holds 1 to ``max_objects`` objects of
    random classes, sizes log-uniform from ``min_size`` pixels to 90 % of the short side, random rotation,
    aspect, texture, and a colour drawn around a per-class hue with a wide spread. Objects overlap (each keeps at
    least 35 % of its area visible) and their boxes cover the visible part. An object is ``difficult`` when its
    box is smaller than ``difficult_size`` pixels or less than 60 % of it is visible.

    Image ``i`` depends only on ``(seed, i)`` and the rendering options, so a larger ``num_images`` extends a
    smaller set; the whole folder is byte-identical for the same arguments.

    Args:
        root: Output folder (created; existing files of the same names are overwritten).
        num_images: Number of images to write (>= 1).
        image_size: Longest image side in pixels (>= 32).
        classes: Class names, a subset of :data:`SYNTHETIC_CLASSES` (their order defines the labels).
        seed: Random seed.
        max_objects: Maximum number of annotated objects per image.
        min_size: Smallest object size (diameter) in pixels.
        difficult_size: Objects whose box side is below this are marked difficult.
        clutter: Approximate number of background distractor shapes per image.
        noise: Standard deviation of the Gaussian pixel noise, relative to the 0-255 range.
        hue_spread: Standard deviation (degrees) of an object's hue around its class hue (class hues are 60
            degrees apart): smaller makes colour a stronger cue and the data easier.
        split_fractions: Fractions of the images in ``train``, ``val``, ``test`` (normalized; ``trainval`` is
            ``train + val``).

    Returns:
        A :class:`SyntheticVOC` describing what was written.

    Raises:
        ValueError: a bad option (unknown class, non-positive sizes, negative fractions...).
    """
    from PIL import Image

    classes = tuple(classes)
    unknown = [c for c in classes if c not in SYNTHETIC_CLASSES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise InvalidOptionError(
            f"make_synthetic_voc: classes must be distinct names from {SYNTHETIC_CLASSES}, got {classes!r}"
        )
    if num_images < 1:
        raise InvalidOptionError(f"make_synthetic_voc: num_images must be >= 1, got {num_images}")
    if image_size < 32:
        raise InvalidOptionError(f"make_synthetic_voc: image_size must be >= 32, got {image_size}")
    if max_objects < 1 or min_size < 2 or clutter < 0 or noise < 0 or hue_spread < 0:
        raise InvalidOptionError(
            "make_synthetic_voc: need max_objects >= 1, min_size >= 2, clutter >= 0, noise >= 0, hue_spread >= 0; "
            f"got {max_objects}, {min_size}, {clutter}, {noise}, {hue_spread}"
        )
    fractions = np.asarray(split_fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or fractions.sum() <= 0:
        raise InvalidOptionError(
            f"make_synthetic_voc: split_fractions must be 3 non-negative numbers, got {split_fractions}"
        )

    root = Path(root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    objects: dict[str, list[SyntheticObject]] = {}
    for index in range(num_images):
        image_id = f"{index:06d}"
        rng = np.random.default_rng([seed, index])
        pixels, objs = _render_image(
            rng, classes, image_size, max_objects, min_size, difficult_size, clutter, noise, hue_spread
        )
        height, width = pixels.shape[:2]
        buffer = BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=_JPEG_QUALITY)
        _write_atomic(root / "JPEGImages" / f"{image_id}.jpg", buffer.getvalue())
        _write_atomic(root / "Annotations" / f"{image_id}.xml", _xml(image_id, width, height, objs).encode())
        objects[image_id] = objs

    ids = list(objects)
    order = np.random.default_rng([seed, num_images, 1]).permutation(num_images)
    bounds = np.cumsum(split_sizes(num_images, split_fractions))
    chosen = {
        "train": sorted(ids[i] for i in order[: bounds[0]]),
        "val": sorted(ids[i] for i in order[bounds[0] : bounds[1]]),
        "test": sorted(ids[i] for i in order[bounds[1] :]),
    }
    chosen["trainval"] = sorted(chosen["train"] + chosen["val"])
    splits = {name: members for name, members in chosen.items() if members}
    for name, members in splits.items():
        _write_atomic(root / "ImageSets" / "Main" / f"{name}.txt", ("\n".join(members) + "\n").encode())
    result = SyntheticVOC(root=root, classes=classes, splits=splits, objects=objects)
    logger.info(
        "make_synthetic_voc: wrote %d images, %d objects (%d difficult) to %s",
        num_images,
        result.num_objects,
        result.num_difficult,
        root,
    )
    return result
