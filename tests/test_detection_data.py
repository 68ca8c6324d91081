"""VOC folder reading, letterboxing, augmentation, collate and the synthetic VOC generator."""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as StdET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grouppruner.detection import VOC_CLASSES, VOCDetection, collate, make_synthetic_voc
from grouppruner.detection.data import VOCDataError
from grouppruner.detection.images import PAD_VALUE, letterbox_params
from grouppruner.detection.synthetic import SYNTHETIC_CLASSES


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synvoc")
    make_synthetic_voc(root, 24, image_size=96, seed=3)
    return root


def _xml_objects(path: Path) -> list[tuple[str, list[float], bool]]:
    root = StdET.parse(path).getroot()
    out = []
    for obj in root.iter("object"):
        box = [float(obj.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
        out.append((obj.find("name").text, box, obj.find("difficult").text == "1"))
    return out


def _write_voc(root: Path, items: dict[str, tuple[Image.Image, str]], split: str = "train") -> None:
    """A hand-made VOC folder: id -> (image, XML text)."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (image, xml) in items.items():
        image.save(root / "JPEGImages" / f"{image_id}.png")
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(items) + "\n")


def _xml(width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return f"<annotation><size><width>{width}</width><height>{height}</height></size>{body}</annotation>"


@pytest.fixture
def red_box_root(tmp_path: Path) -> Path:
    """One 200x100 black PNG with a red rectangle at columns 20..59, rows 30..69 (VOC box 21,31,60,70)."""
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[30:70, 20:60] = (255, 0, 0)
    _write_voc(tmp_path, {"a": (Image.fromarray(pixels), _xml(200, 100, [("dog", (21, 31, 60, 70), 0)]))})
    return tmp_path


def _red_extent(image: torch.Tensor) -> tuple[int, int, int, int]:
    red = (image[0] > 0.6) & (image[1] < 0.3) & (image[2] < 0.3)
    ys, xs = torch.nonzero(red, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_letterbox_maps_box_onto_image_content(red_box_root: Path) -> None:
    ds = VOCDetection(red_box_root, "train", 64)
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    # 200x100 -> 64x32, padded by 16 rows above and below.
    assert ds.letterbox(0) == letterbox_params(200, 100, 64)
    torch.testing.assert_close(target["boxes"], torch.tensor([[20 * 0.32, 30 * 0.32 + 16, 60 * 0.32, 70 * 0.32 + 16]]))
    extent = _red_extent(image)
    assert all(abs(e - b) <= 1.0 for e, b in zip(extent, target["boxes"][0].tolist(), strict=True))
    assert torch.allclose(image[:, :15], torch.full_like(image[:, :15], PAD_VALUE / 255))
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog")]
    assert target["difficult"].tolist() == [False]
    # Non-square input (height, width): the box still lands on the content, and invert() goes back.
    ds2 = VOCDetection(red_box_root, "train", (96, 128))
    image2, target2 = ds2[0]
    assert image2.shape == (3, 96, 128)
    assert all(abs(e - b) <= 1.0 for e, b in zip(_red_extent(image2), target2["boxes"][0].tolist(), strict=True))
    torch.testing.assert_close(ds2.letterbox(0).invert(target2["boxes"]), torch.tensor([[20.0, 30.0, 60.0, 70.0]]))


def test_flip_moves_boxes_with_the_pixels(red_box_root: Path) -> None:
    plain = VOCDetection(red_box_root, "train", 64)
    flipped = VOCDetection(red_box_root, "train", 64, augment=True, hsv_gains=(0.0, 0.0, 0.0), flip_prob=1.0)
    image, target = plain[0]
    image_f, target_f = flipped[0]
    torch.testing.assert_close(image_f, image.flip(-1))
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    torch.testing.assert_close(target_f["boxes"], torch.tensor([[64 - x1, y0, 64 - x0, y1]]))
    assert all(abs(e - b) <= 1.0 for e, b in zip(_red_extent(image_f), target_f["boxes"][0].tolist(), strict=True))


def test_augment_is_seeded_and_plain_is_deterministic(synthetic_root: Path) -> None:
    classes = SYNTHETIC_CLASSES
    plain = VOCDetection(synthetic_root, "train", 96, classes=classes)
    a, ta = plain[0]
    b, tb = plain[0]
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])

    def run(seed: int) -> list[torch.Tensor]:
        ds = VOCDetection(
            synthetic_root, "train", 96, classes=classes, augment=True, generator=torch.Generator().manual_seed(seed)
        )
        return [ds[i][0] for i in range(4)]

    first, again, other = run(1), run(1), run(2)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, other, strict=True))
    # HSV jitter changes colours but not the geometry: without flip the boxes stay put.
    hsv = VOCDetection(
        synthetic_root,
        "train",
        96,
        classes=classes,
        augment=True,
        flip_prob=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    image_j, target_j = hsv[0]
    assert not torch.equal(image_j, a)
    torch.testing.assert_close(target_j["boxes"], ta["boxes"])


def test_generator_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    r1 = make_synthetic_voc(tmp_path / "a", 10, image_size=80, seed=7)
    r2 = make_synthetic_voc(tmp_path / "b", 10, image_size=80, seed=7)
    r3 = make_synthetic_voc(tmp_path / "c", 10, image_size=80, seed=8)
    files = sorted(p.relative_to(r1.root) for p in r1.root.rglob("*") if p.is_file())
    assert len(files) == 10 + 10 + len(r1.splits)
    for rel in files:
        assert (r1.root / rel).read_bytes() == (r2.root / rel).read_bytes(), rel
    assert (r1.root / "JPEGImages/000000.jpg").read_bytes() != (r3.root / "JPEGImages/000000.jpg").read_bytes()
    # Image i depends only on (seed, i), not on how many images are generated.
    r4 = make_synthetic_voc(tmp_path / "d", 4, image_size=80, seed=7)
    for i in range(4):
        rel = Path("JPEGImages") / f"{i:06d}.jpg"
        assert (r4.root / rel).read_bytes() == (r1.root / rel).read_bytes(), rel
    assert set(r1.splits) == {"train", "val", "test", "trainval"}
    assert sorted(r1.splits["trainval"] + r1.splits["test"]) == [f"{i:06d}" for i in range(10)]

    ds = VOCDetection(r1.root, "trainval", 64, classes=r1.classes)
    assert ds.num_classes == len(r1.classes) == len(SYNTHETIC_CLASSES)
    all_written = [o for i in range(10) for o in _xml_objects(r1.root / "Annotations" / f"{i:06d}.xml")]
    assert r1.num_objects == len(all_written) and r1.num_difficult == sum(d for _, _, d in all_written)
    for index, image_id in enumerate(ds.ids):
        image, target = ds[index]
        written = _xml_objects(r1.root / "Annotations" / f"{image_id}.xml")
        assert [o.name for o in r1.objects[image_id]] == [w[0] for w in written]
        with Image.open(r1.root / "JPEGImages" / f"{image_id}.jpg") as im:
            width, height = im.size
        scale = min(64 / width, 64 / height)
        new_w, new_h = round(width * scale), round(height * scale)
        pad_x, pad_y = (64 - new_w) // 2, (64 - new_h) // 2
        expected = torch.tensor(
            [
                [
                    (b[0] - 1) * new_w / width + pad_x,
                    (b[1] - 1) * new_h / height + pad_y,
                    b[2] * new_w / width + pad_x,
                    b[3] * new_h / height + pad_y,
                ]
                for _, b, _ in written
            ]
        ).reshape(-1, 4)
        torch.testing.assert_close(target["boxes"], expected)
        assert target["labels"].tolist() == [r1.classes.index(n) for n, _, _ in written]
        assert target["difficult"].tolist() == [d for _, _, d in written]
        assert image.shape == (3, 64, 64) and float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_generator_covers_scales_classes_and_difficult(synthetic_root: Path) -> None:
    ds = VOCDetection(synthetic_root, "trainval", 96, classes=SYNTHETIC_CLASSES)
    test = VOCDetection(synthetic_root, "test", 96, classes=SYNTHETIC_CLASSES)
    boxes = torch.cat([a.boxes for a in ds.annotations + test.annotations])
    labels = torch.cat([a.labels for a in ds.annotations + test.annotations])
    difficult = torch.cat([a.difficult for a in ds.annotations + test.annotations])
    side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values
    assert len(boxes) >= 24
    assert (side < 16).any() and ((side >= 16) & (side < 40)).any() and (side >= 40).any()
    assert len(set(labels.tolist())) == len(SYNTHETIC_CLASSES)
    assert 0 < int(difficult.sum()) < len(difficult) // 2
    # Every box lies inside its image.
    for ann in ds.annotations:
        assert ann.width is not None and ann.height is not None
        assert (ann.boxes[:, 0] >= 0).all() and (ann.boxes[:, 2] <= ann.width).all()
        assert (ann.boxes[:, 1] >= 0).all() and (ann.boxes[:, 3] <= ann.height).all()


def test_collate_shapes(synthetic_root: Path) -> None:
    ds = VOCDetection(synthetic_root, "train", 64, classes=SYNTHETIC_CLASSES)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert len(targets) == 4
    for t in targets:
        m = len(t["labels"])
        assert t["boxes"].shape == (m, 4) and t["boxes"].dtype == torch.float32
        assert t["labels"].dtype == torch.int64 and t["difficult"].shape == (m,) and t["difficult"].dtype == torch.bool
    with pytest.raises(ValueError, match="different shapes"):
        collate([(torch.zeros(3, 32, 32), {}), (torch.zeros(3, 64, 32), {})])
    with pytest.raises(ValueError, match="empty"):
        collate([])


def _one_good(root: Path) -> None:
    _write_voc(root, {"ok": (Image.new("RGB", (50, 40)), _xml(50, 40, [("cat", (2, 3, 20, 30), 1)]))})


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<annotation><object><name>cat</name>", "malformed XML"),
        (
            '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            "<annotation><object><name>&lol2;</name></object></annotation>",
            "hostile XML",
        ),
        (_xml(50, 40, [("unicorn", (2, 3, 20, 30), 0)]), "unknown class 'unicorn'"),
        (_xml(50, 40, [("cat", (20, 3, 2, 30), 0)]).replace("<xmin>20</xmin>", "<xmin>2x</xmin>"), "not a number"),
        (_xml(50, 40, [("cat", (20, 3, 2, 30), 0)]), "empty box"),
    ],
)
def test_bad_annotation_names_the_file(tmp_path: Path, xml: str, message: str) -> None:
    _one_good(tmp_path)
    bad = tmp_path / "Annotations" / "ok.xml"
    bad.write_text(xml)
    with pytest.raises(VOCDataError, match=re.escape(str(bad))) as info:
        VOCDetection(tmp_path, "train", 64)
    assert message in str(info.value)


def test_missing_or_empty_files_name_the_file(tmp_path: Path) -> None:
    _one_good(tmp_path)
    ds = VOCDetection(tmp_path, "train", 64)
    assert ds[0][1]["difficult"].tolist() == [True]

    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "ImageSets" / "Main" / "val.txt"))):
        VOCDetection(tmp_path, "val", 64)

    empty = tmp_path / "ImageSets" / "Main" / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(VOCDataError, match=re.escape(str(empty))):
        VOCDetection(tmp_path, "empty", 64)

    (tmp_path / "ImageSets" / "Main" / "ghost.txt").write_text("ghost\n")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "Annotations" / "ghost.xml"))):
        VOCDetection(tmp_path, "ghost", 64)

    (tmp_path / "Annotations" / "ghost.xml").write_text(_xml(10, 10, []))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "JPEGImages" / "ghost.jpg"))) as info:
        VOCDetection(tmp_path, "ghost", 64)
    assert isinstance(info.value, VOCDataError)

    (tmp_path / "JPEGImages" / "ok.png").write_bytes(b"not an image")
    with pytest.raises(VOCDataError, match=re.escape(str(tmp_path / "JPEGImages" / "ok.png"))):
        ds[0]


def test_size_mismatch_and_bad_options(tmp_path: Path) -> None:
    _write_voc(tmp_path, {"x": (Image.new("RGB", (50, 40)), _xml(60, 40, []))})
    ds = VOCDetection(tmp_path, "train", 64)
    with pytest.raises(VOCDataError, match="says 60x40"):
        ds[0]
    with pytest.raises(ValueError, match="image_size"):
        VOCDetection(tmp_path, "train", 0)
    with pytest.raises(ValueError, match="classes"):
        make_synthetic_voc(tmp_path / "s", 2, classes=("circle", "hexagon"))
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_voc(tmp_path / "s", 0)


def test_boxes_outside_the_image_are_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    objects = [("cat", (2, 3, 20, 30), 0), ("dog", (60, 5, 80, 20), 0), ("cat", (-30, -30, -5, -5), 1)]
    _write_voc(tmp_path, {"ok": (Image.new("RGB", (50, 40)), _xml(50, 40, objects))})
    with caplog.at_level(logging.WARNING, logger="grouppruner.detection.data"):
        ds = VOCDetection(tmp_path, "train", 64)
    xml = str(tmp_path / "Annotations" / "ok.xml")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(xml in w and "outside the 50x40 image" in w for w in warnings)
    assert "object 1 (dog)" in warnings[0] and "object 2 (cat)" in warnings[1]
    _, target = ds[0]
    assert target["labels"].tolist() == [VOC_CLASSES.index("cat")] and target["difficult"].tolist() == [False]
    boxes = target["boxes"]
    assert bool(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0).all())


def test_boxes_outside_an_image_without_size_are_dropped_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    xml = _xml(50, 40, [("cat", (2, 3, 20, 30), 0), ("dog", (60, 5, 80, 20), 0)])
    xml = re.sub(r"<size>.*</size>", "", xml)
    _write_voc(tmp_path, {"ok": (Image.new("RGB", (50, 40)), xml)})
    ds = VOCDetection(tmp_path, "train", 64)
    with caplog.at_level(logging.WARNING, logger="grouppruner.detection.data"):
        _, target = ds[0]
        ds[0]
    assert target["labels"].tolist() == [VOC_CLASSES.index("cat")] and len(target["boxes"]) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(tmp_path / "Annotations" / "ok.xml") in warnings[0]  # once per image


def test_non_utf8_split_file_and_negative_size_name_the_file(tmp_path: Path) -> None:
    _one_good(tmp_path)
    split = tmp_path / "ImageSets" / "Main" / "latin.txt"
    split.write_bytes("ok\nbild_\xe4\n".encode("latin-1"))
    with pytest.raises(VOCDataError, match=re.escape(str(split)) + ".*not UTF-8"):
        VOCDetection(tmp_path, "latin", 64)
    bad = tmp_path / "Annotations" / "ok.xml"
    bad.write_text(_xml(-50, 40, [("cat", (2, 3, 20, 30), 0)]))
    with pytest.raises(VOCDataError, match=re.escape(str(bad)) + r".*<size> must be positive"):
        VOCDetection(tmp_path, "train", 64)
