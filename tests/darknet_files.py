"""Test helpers for darknet files, written independently of grouppruner.detection.darknet.

The weights writer computes the tensor layout from the cfg text alone and writes the bytes with struct, so a bug
shared with the library's reader or writer cannot hide: the tests load what it wrote and compare every tensor.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "darknet"
CFGS = ("yolov4", "yolov4-tiny", "yolov3", "yolov3-tiny")


def sections(text: str) -> list[tuple[str, dict[str, str]]]:
    """``[(name, {key: value})]`` of a cfg text (whitespace removed, comments skipped)."""
    out: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            out.append((line[1:-1], {}))
        else:
            key, _, value = line.partition("=")
            out[-1][1][key] = value
    return out


def conv_layout(text: str) -> list[tuple[int, list[tuple[str, tuple[int, ...]]]]]:
    """Per convolution in layer order: (layer index, [(tensor label, shape)]) in darknet's file order."""
    parsed = sections(text)
    prev = int(parsed[0][1].get("channels", 3))
    outs: list[int] = []
    layout = []
    for index, (name, options) in enumerate(parsed[1:]):
        if name == "convolutional":
            filters, size = int(options["filters"]), int(options.get("size", 1))
            groups = int(options.get("groups", 1))
            if int(options.get("batch_normalize", 0)):
                tensors = [("beta", (filters,)), ("gamma", (filters,)), ("mean", (filters,)), ("var", (filters,))]
            else:
                tensors = [("bias", (filters,))]
            tensors.append(("weight", (filters, prev // groups, size, size)))
            layout.append((index, tensors))
            channels = filters
        elif name == "route":
            refs = [int(x) for x in options["layers"].split(",") if x]
            channels = sum(outs[index + r if r < 0 else r] for r in refs) // int(options.get("groups", 1))
        else:
            channels = prev
        outs.append(channels)
        prev = channels
    return layout


def write_weights(
    path: Path, cfg_text: str, *, seed: int = 0, version: tuple[int, int, int] = (0, 2, 5), extra: int = 0
) -> dict[tuple[int, str], np.ndarray]:
    """Write random weights for a cfg; returns ``{(layer, label): values}``.

    Values keep a deep network's activations moderate: weights ~ N(0, 1 / fan_in), gamma and variance around 1.
    ``extra`` appends that many zero floats (a file too long for the cfg).
    """
    rng = np.random.default_rng(seed)
    major, minor, revision = version
    blobs = [struct.pack("<iii", major, minor, revision)]
    blobs.append(struct.pack("<Q", 12345) if major * 10 + minor >= 2 else struct.pack("<I", 12345))
    written = {}
    for layer, tensors in conv_layout(cfg_text):
        for label, shape in tensors:
            if label == "weight":
                values = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])), size=shape)
            elif label in ("gamma", "var"):
                values = rng.uniform(0.5, 1.5, size=shape)
            else:
                values = rng.normal(0.0, 0.1, size=shape)
            values = values.astype("<f4")
            written[(layer, label)] = values
            blobs.append(values.tobytes())
    blobs.append(np.zeros(extra, dtype="<f4").tobytes())
    path.write_bytes(b"".join(blobs))
    return written


def reduced_cfg(name: str, classes: int, *, width_divisor: int = 8, scale: float = 128 / 416) -> str:
    """A shipped cfg with every width divided by ``width_divisor``, ``classes`` classes and anchors scaled for
    ``416 * scale``-pixel inputs (``reduced_cfg("yolov4-tiny", 3)``: a yolov4-tiny-like cfg a CPU trains in
    seconds)."""
    text = (DATA / f"{name}.cfg").read_text()
    parsed = sections(text)
    heads = {i for i, (kind, _) in enumerate(parsed) if i + 1 < len(parsed) and parsed[i + 1][0] == "yolo"}
    lines = []
    for i, (kind, options) in enumerate(parsed):
        options = dict(options)
        if kind == "convolutional":
            filters = int(options["filters"])
            options["filters"] = str(3 * (5 + classes) if i in heads else max(4, filters // width_divisor))
        if kind == "yolo":
            options["classes"] = str(classes)
            anchors = [float(a) for a in options["anchors"].split(",") if a]
            options["anchors"] = ",".join(f"{max(2.0, a * scale):.0f}" for a in anchors)
        lines += [f"[{kind}]", *(f"{k}={v}" for k, v in options.items()), ""]
    return "\n".join(lines)


def set_option(text: str, section_index: int, key: str, value: str) -> str:
    """The cfg text with ``key=value`` set in the ``section_index``-th section (0: ``[net]``)."""
    start = text.index("[")
    head, blocks = text[:start], [b for b in re.split(r"(?m)^(?=\[)", text[start:]) if b]
    block = blocks[section_index]
    pattern = rf"(?m)^[ \t]*{re.escape(key)}[ \t]*=.*$"
    if re.search(pattern, block):
        block = re.sub(pattern, f"{key}={value}", block)
    else:
        first, _, rest = block.partition("\n")
        block = f"{first}\n{key}={value}\n{rest}"
    blocks[section_index] = block
    return head + "".join(blocks)
