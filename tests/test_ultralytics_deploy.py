"""Deployment rewrites of a (pruned) YOLO: C2f blocks without a Split, the forward exact."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.libraries
pytest.importorskip("ultralytics")
os.environ.setdefault("YOLO_OFFLINE", "1")

from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.modules.block import C2f  # noqa: E402

from grouppruner.integrations import ultralytics as gpu  # noqa: E402

IMGSZ = 64


@pytest.mark.slow  # a prune and two exports per model: 2-5 s each
@pytest.mark.parametrize(
    ("cfg", "pruned"), [("yolov8n.yaml", True), ("yolo11n.yaml", True), ("yolov8n-seg.yaml", False)]
)
def test_split_free_keeps_the_forward_and_drops_every_split(cfg: str, pruned: bool) -> None:
    torch.manual_seed(0)
    yolo = YOLO(cfg)
    if pruned:
        gpu.prune(yolo, target_macs=0.5, imgsz=IMGSZ, runtime="torch")  # odd widths too: the halves stay equal
    blocks = sum(isinstance(m, C2f) for m in yolo.model.modules())
    rewritten = gpu.split_free(yolo)
    assert sum(isinstance(m, C2f) for m in yolo.model.modules()) == blocks  # the user's model is untouched
    assert not any(isinstance(m, C2f) for m in rewritten.modules())
    assert sum(isinstance(m, gpu.SplitFreeC2f) for m in rewritten.modules()) == blocks > 0
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.inference_mode():
        expected, got = yolo.model.eval()(x), rewritten(x)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-4)
    onnx = pytest.importorskip("onnx")
    from grouppruner.export import export_onnx

    def splits(model: torch.nn.Module) -> int:
        graph = onnx.load_from_string(export_onnx(model, x, check=False)).graph
        return sum(node.op_type in ("Split", "Slice") for node in graph.node)  # chunk exports as two Slices

    assert splits(rewritten) == splits(yolo.model) - 2 * blocks


def test_split_free_refuses_an_odd_cv1() -> None:
    yolo = YOLO("yolov8n.yaml")
    block = next(m for m in yolo.model.modules() if isinstance(m, C2f))
    conv = block.cv1.conv
    block.cv1.conv = torch.nn.Conv2d(conv.in_channels, conv.out_channels - 1, 1, bias=False)
    with pytest.raises(ValueError, match=r"C2f: cv1 has \d+ channels, which do not split in halves"):
        gpu.split_free(yolo)
