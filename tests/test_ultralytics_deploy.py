"""Deployment rewrites of a (pruned) YOLO: C2f blocks without a Split, the forward exact."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.libraries
pytest.importorskip("ultralytics")
os.environ.setdefault("YOLO_OFFLINE", "1")

from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.modules.block import C2f  # noqa: E402

from grouppruner.integrations import ultralytics as gpu  # noqa: E402
from grouppruner.integrations.ultralytics.model import plan_records  # noqa: E402

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


def _pruned(cfg: str, **options: object) -> YOLO:
    torch.manual_seed(0)
    yolo = YOLO(cfg)
    gpu.prune(yolo, target_macs=0.5, imgsz=IMGSZ, **options)  # type: ignore[arg-type]
    return yolo


@pytest.mark.slow  # two prunes of yolo11n: about 4 s
def test_prune_ships_split_free_with_onnxruntime_and_the_same_outputs() -> None:
    plain = _pruned("yolo11n.yaml", runtime="onnxruntime", split_free=False)
    shipped = _pruned("yolo11n.yaml", runtime="onnxruntime")  # the default with onnxruntime: split-free
    assert not any(isinstance(m, gpu.SplitFreeC2f) for m in plain.model.modules())
    assert not any(isinstance(m, C2f) for m in shipped.model.modules())
    assert sum(isinstance(m, gpu.SplitFreeC2f) for m in shipped.model.modules()) == 8
    assert gpu.is_pruned(shipped) and plan_records(shipped.model) == plan_records(plain.model)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.inference_mode():
        expected, got = plain.model.eval()(x)[0], shipped.model.eval()(x)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    eager = _pruned("yolov8n.yaml", runtime="torch")  # eager PyTorch: no rewrite unless asked
    assert any(isinstance(m, C2f) for m in eager.model.modules())
    with pytest.raises(TypeError, match="split_free must be True, False or None"):
        gpu.prune(YOLO("yolov8n.yaml"), target_macs=0.5, imgsz=IMGSZ, split_free="yes")  # type: ignore[arg-type]


def test_planning_runtime_times_through_the_rewrite() -> None:
    from grouppruner.integrations.ultralytics.deploy import planning_runtime, resolve_split_free
    from grouppruner.runtime import Runtime

    assert resolve_split_free(None, None) and resolve_split_free(None, "onnxruntime")
    assert not resolve_split_free(None, "torch") and resolve_split_free(True, "torch")
    shipped = planning_runtime("onnxruntime", True)
    assert shipped.deploy is gpu.split_free and shipped.describe()["deploy"] == "split_free"
    assert planning_runtime("onnxruntime", False).deploy is None
    with pytest.raises(ValueError, match="give one rewrite"):
        planning_runtime(Runtime("onnxruntime", deploy=lambda m: m), True)


@pytest.mark.slow  # a prune, a save, a weights_only load and an Ultralytics export: about 6 s
def test_split_free_model_saves_loads_weights_only_and_exports_with_ultralytics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from ultralytics.nn import tasks

    shipped = _pruned("yolov8n.yaml", runtime="onnxruntime", split_free=True)
    path = gpu.save(shipped, tmp_path / "pruned.pt")
    loads: list[object] = []
    real_load = torch.load

    def recording(*args: object, **kwargs: object) -> object:
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tasks, "SAFE_LOAD", True)  # what ULTRALYTICS_SAFE_LOAD=1 sets
    monkeypatch.setattr(torch, "load", recording)
    reloaded = gpu.load(path)
    assert loads == [True]  # Ultralytics' restricted, weights_only loading
    monkeypatch.setattr(tasks, "SAFE_LOAD", False)
    assert sum(isinstance(m, gpu.SplitFreeC2f) for m in reloaded.model.modules()) == 8
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    expected = reloaded.model.float().eval()(x)[0]
    onnx_file = reloaded.export(format="onnx", imgsz=IMGSZ, simplify=False, dynamic=False)
    graph = onnx.load(onnx_file).graph
    assert not any(node.op_type == "Split" for node in graph.node)  # the exporter kept the rewrite
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, expected.detach().numpy(), atol=2e-3 * float(expected.abs().max()))
