"""Meta-device passes on every Ultralytics head leave the model exactly as it was (issue 25, "Also").

Detect and its kin cache ``anchors`` / ``strides`` / ``shape`` in plain attributes on the first forward at a size;
a pass on the meta device (count_macs, record_positions, the graph's probe) used to leave meta tensors there, and
the next real forward at that size failed.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.libraries
pytest.importorskip("ultralytics")

from ultralytics.nn.tasks import DetectionModel, OBBModel, PoseModel, SegmentationModel  # noqa: E402

import grouppruner as gp  # noqa: E402
from grouppruner._utils.calls import tensors_in  # noqa: E402

HEADS = {
    "Detect": (DetectionModel, "yolov8n.yaml"),
    "Segment": (SegmentationModel, "yolov8n-seg.yaml"),
    "Pose": (PoseModel, "yolov8n-pose.yaml"),
    "OBB": (OBBModel, "yolov8n-obb.yaml"),
    "v10Detect": (DetectionModel, "yolov10n.yaml"),
    "Detect (yolo11)": (DetectionModel, "yolo11n.yaml"),
}


def _state(model: nn.Module) -> dict[str, Any]:
    """Every tensor the model holds (parameters, buffers, plain attributes) by identity, and every plain attribute."""
    state: dict[str, Any] = {}
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            if key in ("_parameters", "_buffers"):
                state.update({f"{name}.{k}": (id(v), v.device.type) for k, v in value.items() if v is not None})
            elif not key.startswith("_") and not isinstance(value, nn.Module):
                state[f"{name}:{key}"] = (id(value), getattr(value, "device", None), repr(value)[:200])
    return state


@pytest.mark.parametrize("head", list(HEADS))
def test_meta_passes_leave_every_head_as_it_was(head: str) -> None:
    kind, cfg = HEADS[head]
    model = kind(cfg, verbose=False).eval()
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)  # the head caches its anchors for 64 x 64 here
    before = _state(model)
    gp.profile.count_macs(model, x)
    gp.profile.count_macs(model, torch.zeros(1, 3, 96, 96))  # another size: the cache is rebuilt on meta
    gp.profile.record_positions(model, x)
    assert _state(model) == before
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                assert value.device.type == "cpu", f"{name}.{key} left on {value.device}"
    with torch.no_grad():
        again = model(x)
        model(torch.zeros(1, 3, 96, 96))  # the size seen only on meta runs for real
    flat, flat_again = tensors_in(reference), tensors_in(again)
    assert len(flat) == len(flat_again) and all(torch.equal(a, b) for a, b in zip(flat, flat_again, strict=True))


def test_graph_build_and_probe_leave_no_meta_tensor() -> None:
    """The graph's probe runs its trials on the meta device; the head must keep CPU tensors only."""
    from grouppruner.integrations.ultralytics import channel_graph

    model = DetectionModel("yolov8n.yaml", verbose=False).eval()
    channel_graph(model, imgsz=64)
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                assert value.device.type == "cpu", f"{name}.{key} left on {value.device}"
    with torch.no_grad():
        assert all(torch.isfinite(t).all() for t in tensors_in(model(torch.zeros(1, 3, 64, 64))))
