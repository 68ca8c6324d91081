"""PASCAL VOC style detection data: the folder reader, letterbox resizing and the batch collate function.

The data format is the one used everywhere in :mod:`grouppruner.detection`:

- images: float tensor ``(N, 3, H, W)`` in ``[0, 1]``, letterboxed to the model input size;
- targets: list of ``N`` dicts with ``"boxes"`` float ``(M, 4)`` xyxy in input pixels, ``"labels"`` int64
  ``(M,)`` in ``[0, num_classes)`` and ``"difficult"`` bool ``(M,)``.

Box convention: VOC XML stores 1-based inclusive pixel indices (``xmin=1`` is the first column,
``xmax=W`` the last). They are read as continuous coordinates ``(xmin - 1, ymin - 1, xmax, ymax)``, so a box
covering the whole ``W x H`` image is ``(0, 0, W, H)``; :func:`grouppruner.detection.make_synthetic_voc`
writes the inverse mapping.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._utils.errors import DataError, InvalidOptionError
from .images import Letterbox, _as_hw, hsv_jitter, image_to_tensor, letterbox_image, letterbox_params

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The 20 PASCAL VOC class names in the standard order (label ``i`` is ``VOC_CLASSES[i]``)."""

Target = dict[str, Tensor]


class VOCDataError(DataError):
    """A VOC folder, split file, annotation or image is malformed; the message names the file."""


class VOCFileNotFoundError(VOCDataError, FileNotFoundError):
    """A file the VOC folder must contain (split file, annotation, image) does not exist."""


@dataclass(frozen=True)
class VOCAnnotation:
    """The parsed annotation of one image, in original image pixels.

    Attributes:
        image_id: The id from the split file (file stem of the image and of the XML).
        boxes: float32 ``(M, 4)`` xyxy continuous pixel coordinates of the original image.
        labels: int64 ``(M,)`` class indices.
        difficult: bool ``(M,)`` VOC ``difficult`` flags.
        width: Image width from the XML ``<size>`` element (``None`` if absent).
        height: Image height from the XML ``<size>`` element (``None`` if absent).
    """

    image_id: str
    boxes: Tensor
    labels: Tensor
    difficult: Tensor
    width: int | None
    height: int | None


def _text(node: Any, tag: str, path: Path, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise VOCDataError(f"{path}: {where} has no <{tag}>")
    return str(child.text).strip()


def _number(node: Any, tag: str, path: Path, where: str) -> float:
    text = _text(node, tag, path, where)
    try:
        value = float(text)
    except ValueError:
        raise VOCDataError(f"{path}: {where} <{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise VOCDataError(f"{path}: {where} <{tag}> is not finite: {text!r}")
    return value


def parse_voc_xml(path: str | os.PathLike[str], class_to_index: dict[str, int]) -> VOCAnnotation:
    """Parse one VOC annotation file with defusedxml.

    Args:
        path: The XML file.
        class_to_index: Class name -> label index.

    Returns:
        The :class:`VOCAnnotation` (boxes ``(M, 4)`` in continuous original-image pixels).

    Raises:
        VOCFileNotFoundError: the file does not exist.
        VOCDataError: malformed XML, forbidden XML constructs (entity expansion, external entities, DTDs),
            unknown class names, missing or non-numeric coordinates, empty boxes, a non-positive ``<size>``.
            The message names the file. Boxes entirely outside a known ``<size>`` are dropped with a warning.
    """
    from defusedxml import DefusedXmlException
    from defusedxml import ElementTree as DefusedET

    path = Path(path)
    if not path.is_file():
        raise VOCFileNotFoundError(f"annotation file not found: {path}")
    try:
        root = DefusedET.parse(path, forbid_dtd=True).getroot()
    except DefusedXmlException as exc:
        raise VOCDataError(f"{path}: refused hostile XML ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # ElementTree.ParseError and expat errors have no common public base
        raise VOCDataError(f"{path}: malformed XML ({exc})") from exc
    if root.tag != "annotation":
        raise VOCDataError(f"{path}: root element is <{root.tag}>, expected <annotation>")

    width = height = None
    size = root.find("size")
    if size is not None:
        width = int(_number(size, "width", path, "<size>"))
        height = int(_number(size, "height", path, "<size>"))
        if width <= 0 or height <= 0:
            raise VOCDataError(f"{path}: <size> must be positive, got width {width}, height {height}")

    boxes: list[list[float]] = []
    labels: list[int] = []
    difficult: list[bool] = []
    for k, obj in enumerate(root.iter("object")):
        where = f"object {k}"
        name = _text(obj, "name", path, where)
        if name not in class_to_index:
            raise VOCDataError(f"{path}: {where} has unknown class {name!r}; known classes: {sorted(class_to_index)}")
        flag = obj.find("difficult")
        is_difficult = flag is not None and flag.text is not None and flag.text.strip() not in ("", "0")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise VOCDataError(f"{path}: {where} ({name}) has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bndbox, t, path, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        box = [xmin - 1.0, ymin - 1.0, xmax, ymax]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise VOCDataError(f"{path}: {where} ({name}) has an empty box {xmin, ymin, xmax, ymax}")
        if width is not None and height is not None and not _overlaps_image(box, width, height):
            # Clipped to the image it would be a zero-area training target (a NaN / useless box loss).
            logger.warning(
                "%s: %s (%s) box %s lies entirely outside the %dx%d image; dropped",
                path,
                where,
                name,
                (xmin, ymin, xmax, ymax),
                width,
                height,
            )
            continue
        boxes.append(box)
        labels.append(class_to_index[name])
        difficult.append(is_difficult)
    return VOCAnnotation(
        image_id=path.stem,
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        difficult=torch.tensor(difficult, dtype=torch.bool),
        width=width,
        height=height,
    )


def _overlaps_image(box: Sequence[float], width: float, height: float) -> bool:
    """Whether an xyxy box keeps a positive area once clipped to a ``width x height`` image."""
    return min(box[2], width) > max(box[0], 0.0) and min(box[3], height) > max(box[1], 0.0)


class VOCDetection(Dataset[tuple[Tensor, Target]]):
    """A VOCdevkit-style detection folder, letterboxed to the model input size.

    Layout under ``root`` (e.g. ``VOCdevkit/VOC2007`` or a folder written by ``make_synthetic_voc``)::

        JPEGImages/<id>.jpg   Annotations/<id>.xml   ImageSets/Main/<split>.txt

    All annotations are parsed (with defusedxml) and all image paths are checked when the dataset is built, so a
    broken folder fails at once with an error naming the file. Images are read with Pillow on access.

    Item ``i`` is ``(image, target)``: ``image`` float ``(3, H, W)`` in ``[0, 1]``; ``target`` a dict with
    ``"boxes"`` float32 ``(M, 4)`` xyxy in input pixels, ``"labels"`` int64 ``(M,)``, ``"difficult"`` bool
    ``(M,)`` (difficult objects are kept; :func:`~grouppruner.detection.voc_eval` ignores them).

    Args:
        root: The folder holding ``JPEGImages``, ``Annotations`` and ``ImageSets``.
        split: Name of the split file (``"train"``, ``"val"``, ``"trainval"``, ``"test"``...).
        image_size: Model input size, an int (square) or ``(height, width)``.
        augment: Random horizontal flip (p = 0.5) and HSV jitter. ``False`` gives deterministic items.
        classes: Class names; label ``i`` is ``classes[i]``. Defaults to the 20 VOC classes.
        hsv_gains: Maximum relative change of hue, saturation, value when augmenting.
        flip_prob: Probability of the horizontal flip when augmenting.
        generator: Random source of the augmentations. ``None`` uses torch's global generator, which
            ``DataLoader`` workers seed per worker (so runs are reproducible under ``torch.manual_seed``). Leave
            it ``None`` with ``num_workers > 0``: a generator object is copied into every worker, which would
            then draw the same augmentations.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        image_size: int | tuple[int, int],
        *,
        augment: bool = False,
        classes: Sequence[str] = VOC_CLASSES,
        hsv_gains: tuple[float, float, float] = (0.015, 0.7, 0.4),
        flip_prob: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.image_size = _as_hw(image_size)
        self.augment = augment
        self.classes = tuple(classes)
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise InvalidOptionError(f"classes must be non-empty and unique, got {self.classes!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise InvalidOptionError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.hsv_gains = tuple(float(g) for g in hsv_gains)
        self.flip_prob = flip_prob
        self.generator = generator
        self._warned_outside: set[int] = set()
        class_to_index = {name: i for i, name in enumerate(self.classes)}

        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise VOCFileNotFoundError(f"split file not found: {split_file}")
        self.ids: list[str] = []
        try:
            lines = split_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise VOCDataError(
                f"{split_file}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r}); "
                "a split file lists one image id per line"
            ) from exc
        for line in lines:
            fields = line.split()
            # VOC's per-class split files append a +-1 flag; only the id matters here.
            if fields:
                self.ids.append(fields[0])
        if not self.ids:
            raise VOCDataError(f"split file lists no images: {split_file}")

        self.annotations: list[VOCAnnotation] = []
        self.image_paths: list[Path] = []
        for image_id in self.ids:
            self.annotations.append(parse_voc_xml(self.root / "Annotations" / f"{image_id}.xml", class_to_index))
            image_path = self._find_image(image_id)
            self.image_paths.append(image_path)
        logger.info("VOCDetection %s/%s: %d images", self.root, split, len(self.ids))

    def _find_image(self, image_id: str) -> Path:
        folder = self.root / "JPEGImages"
        for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"):
            candidate = folder / f"{image_id}{ext}"
            if candidate.is_file():
                return candidate
        raise VOCFileNotFoundError(
            f"image not found: {folder / (image_id + '.jpg')} (listed in "
            f"{self.root / 'ImageSets' / 'Main' / (self.split + '.txt')})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, index: int) -> Any:
        """Read image ``index`` as an RGB PIL image of its original size.

        Raises:
            VOCDataError: the file is not a readable image, or its size differs from the XML ``<size>``.
        """
        from PIL import Image, UnidentifiedImageError

        path = self.image_paths[index]
        try:
            with Image.open(path) as raw:
                image = raw.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise VOCDataError(f"{path}: cannot read image ({exc})") from exc
        self._check_size(index, path, image.size)
        return image

    def check_images(self, known: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int]]:
        """Decode every image of the split once, so that a damaged file stops a run before it trains.

        A JPEG is decoded at 1/8 scale (the whole compressed stream is read, so a truncated or corrupt file
        fails, at about a third of the cost of a full decode); every image's size is compared with its XML.

        Args:
            known: ``{path: [bytes, mtime_ns]}`` of images checked before (what an earlier call returned); those
                whose size and modification time are unchanged are not decoded again.

        Returns:
            ``{path: [bytes, mtime_ns]}`` of every image of the split.

        Raises:
            VOCDataError: an image cannot be decoded or its size differs from the XML ``<size>`` (names the file).
        """
        from PIL import Image, UnidentifiedImageError

        checked: dict[str, list[int]] = {}
        for index, path in enumerate(self.image_paths):
            stat = path.stat()
            record = [stat.st_size, stat.st_mtime_ns]
            if known is None or list(known.get(str(path), ())) != record:
                try:
                    with Image.open(path) as raw:
                        size = raw.size
                        raw.draft("RGB", (max(1, raw.width // 8), max(1, raw.height // 8)))
                        raw.load()
                except (UnidentifiedImageError, OSError) as exc:
                    raise VOCDataError(f"{path}: cannot read image ({exc})") from exc
                self._check_size(index, path, size)
            checked[str(path)] = record
        return checked

    def _check_size(self, index: int, path: Path, size: tuple[int, int]) -> None:
        ann = self.annotations[index]
        if ann.width is not None and ann.height is not None and (ann.width, ann.height) != size:
            raise VOCDataError(
                f"{path}: image is {size[0]}x{size[1]} but "
                f"{self.root / 'Annotations' / (ann.image_id + '.xml')} says {ann.width}x{ann.height}"
            )

    def letterbox(self, index: int) -> Letterbox:
        """The :class:`Letterbox` of image ``index`` (to map detections back to original pixels)."""
        ann = self.annotations[index]
        if ann.width is not None and ann.height is not None:
            return letterbox_params(ann.width, ann.height, self.image_size)
        image = self.load_image(index)
        return letterbox_params(image.width, image.height, self.image_size)

    def _draw_augmentation(self) -> tuple[list[float], bool]:
        """The random HSV gains and flip of one item, drawn from ``generator`` (4 numbers, always)."""
        gains = [1.0 + g * (2.0 * float(torch.rand((), generator=self.generator)) - 1.0) for g in self.hsv_gains]
        return gains, float(torch.rand((), generator=self.generator)) < self.flip_prob

    def skip(self, index: int) -> None:
        """Draw the random numbers that loading item ``index`` would, without loading it.

        Lets several processes walk one augmentation stream and each load only its share of a batch
        (:class:`~grouppruner.detection.distributed.RankShard`).
        """
        if self.augment:
            self._draw_augmentation()

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        """Return ``(image (3, H, W) float in [0, 1], target dict)`` for image ``index``."""
        ann = self.annotations[index]
        image = self.load_image(index)
        size = torch.tensor([image.width, image.height, image.width, image.height], dtype=torch.float32)
        boxes = torch.minimum(ann.boxes.clamp(min=0), size)
        labels, difficult = ann.labels, ann.difficult
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not bool(inside.all()):
            # Only reachable without <size> in the XML (parse_voc_xml drops these boxes when it knows the size).
            if index not in self._warned_outside:
                self._warned_outside.add(index)
                logger.warning(
                    "%s: %d box(es) lie entirely outside the %dx%d image; dropped",
                    self.root / "Annotations" / f"{ann.image_id}.xml",
                    int((~inside).sum()),
                    image.width,
                    image.height,
                )
            boxes, labels, difficult = boxes[inside], labels[inside], difficult[inside]
        gains, flip = self._draw_augmentation() if self.augment else ([], False)
        if self.augment:
            image = hsv_jitter(image, gains)
        canvas, params = letterbox_image(image, self.image_size)
        boxes = params.apply(boxes)
        tensor = image_to_tensor(canvas)
        if flip:
            tensor = tensor.flip(-1)
            width = float(self.image_size[1])
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": labels.clone(), "difficult": difficult.clone()}
        return tensor, target

    def __repr__(self) -> str:
        return (
            f"VOCDetection(root={str(self.root)!r}, split={self.split!r}, image_size={self.image_size}, "
            f"augment={self.augment}, images={len(self)}, classes={self.num_classes})"
        )


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, list[Target]]:
    """Stack a list of ``(image, target)`` items into a batch.

    Args:
        batch: Items of :class:`VOCDetection`: ``image`` float ``(3, H, W)``, ``target`` dict of tensors.

    Returns:
        ``(images, targets)``: ``images`` float ``(N, 3, H, W)``; ``targets`` the list of ``N`` target dicts
        (boxes ``(M_i, 4)``, labels ``(M_i,)``, difficult ``(M_i,)``), unchanged.

    Raises:
        ValueError: empty batch, or images of different sizes.
    """
    if len(batch) == 0:
        raise InvalidOptionError("collate: empty batch")
    images = [item[0] for item in batch]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise InvalidOptionError(f"collate: images of different shapes in one batch: {sorted(shapes)}")
    return torch.stack(images), [item[1] for item in batch]


def data_classes(root: str | os.PathLike[str], splits: tuple[str, ...] = ("train", "val")) -> tuple[str, ...]:
    """The class names in a VOC-format folder's annotations, sorted (VOC's and darknet's ``voc.names`` order).

    Args:
        root: the folder (``ImageSets/Main/<split>.txt``, ``Annotations/<id>.xml``).
        splits: the splits whose annotations are read.

    Raises:
        FileNotFoundError: no split file or an annotation is missing.
        DataError: an annotation is not readable XML, or no object is named at all.
    """
    from defusedxml import ElementTree as DefusedET

    root = Path(root)
    names: set[str] = set()
    for split in splits:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"split file not found: {split_file}")
        for line in split_file.read_text(encoding="utf-8").splitlines():
            if not line.split():
                continue
            path = root / "Annotations" / f"{line.split()[0]}.xml"
            if not path.is_file():
                raise FileNotFoundError(f"annotation file not found: {path}")
            try:
                tree = DefusedET.parse(path, forbid_dtd=True)
            except Exception as error:  # defusedxml and expat errors share no public base
                raise DataError(f"{path}: not a VOC annotation ({error})") from error
            for obj in tree.getroot().findall("object"):  # not <part><name>: VOC's person parts
                name = obj.find("name")
                if name is not None and name.text and name.text.strip():
                    names.add(name.text.strip())
    if not names:
        raise DataError(f"{root}: the annotations of {', '.join(splits)} name no object class")
    return tuple(sorted(names))
