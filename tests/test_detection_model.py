"""YOLOv4 model: exact sizes, structure as in yolov4.cfg, output shapes, names, predict, prunability."""

import pytest
import torch
import torch_pruning as tp
from torch import nn

from grouppruner.detection import DEFAULT_ANCHORS, YOLOv4, yolov4
from grouppruner.detection.models.backbones import (
    ConvBNAct,
    CSPStage,
    DarkResidual,
    InvertedResidual,
    scale_channels,
    scale_depth,
)
from grouppruner.detection.models.neck import SPP, ConvSet, PANet

TINY = {"width": 0.125, "depth": 0.34}


# Tiny models gain nothing from a second intra-op thread.
pytestmark = pytest.mark.usefixtures("one_thread")


def conv_macs(model: nn.Module, size: int) -> int:
    """Sum over convs of out_h * out_w * out_c * in_c / groups * k * k for one (1, 3, size, size) image."""
    total = 0

    def hook(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output[0].numel() * module.in_channels // module.groups * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return total


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def voc_model() -> YOLOv4:
    return yolov4(20)


def test_voc_parameter_count(voc_model):
    assert n_params(voc_model) == 64_040_001


def test_coco_parameter_count():
    assert n_params(yolov4(80)) == 64_363_101


def test_voc_macs_at_416(voc_model):
    # All feature maps divide exactly for inputs that are multiples of 32, so conv MACs scale with H*W:
    # a 32x32 trace times (416/32)^2 equals the 416x416 count.
    macs_416 = conv_macs(voc_model, 32) * (416 // 32) ** 2
    assert abs(macs_416 - 29.83e9) <= 0.005e9


def test_mac_scaling_is_exact_for_multiples_of_32():
    model = yolov4(20, **TINY)
    assert conv_macs(model, 96) == conv_macs(model, 32) * 9


def test_cfg_structure(voc_model):
    modules = dict(voc_model.named_modules())
    blocks = [len(modules[f"backbone.stage{i}"].blocks) for i in range(1, 6)]
    assert blocks == [1, 2, 8, 8, 4]
    stage_out = [modules[f"backbone.stage{i}"].fuse.conv.out_channels for i in range(1, 6)]
    assert stage_out == [64, 128, 256, 512, 1024]
    convs = [m for m in voc_model.modules() if isinstance(m, nn.Conv2d)]
    heads = [voc_model.head.p3, voc_model.head.p4, voc_model.head.p5]
    # 107 convs with BN + 3 heads = the 110 [convolutional] layers of yolov4.cfg
    assert len(convs) == 110
    for conv in convs:
        if any(conv is h for h in heads):
            assert conv.bias is not None and conv.kernel_size == (1, 1)
        else:
            assert conv.bias is None
    assert [h.in_channels for h in heads] == [256, 512, 1024]
    assert all(h.out_channels == 3 * (5 + 20) for h in heads)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in voc_model.modules()) == 107
    assert sum(isinstance(m, nn.Mish) for m in voc_model.backbone.modules()) == 72
    assert not any(isinstance(m, nn.LeakyReLU) for m in voc_model.backbone.modules())
    leaky = [m for m in voc_model.neck.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 35 and all(m.negative_slope == 0.1 for m in leaky)
    pools = [m.kernel_size for m in voc_model.neck.spp.modules() if isinstance(m, nn.MaxPool2d)]
    assert sorted(pools) == [5, 9, 13]


def test_readable_names_and_distill_layers(voc_model):
    names = dict(voc_model.named_modules())
    expected = ["backbone.stem", *(f"backbone.stage{i}" for i in range(1, 6))]
    expected += ["neck.spp", "neck.lateral16", "neck.lateral8", "neck.fpn16", "neck.fpn8"]
    expected += ["neck.pan16", "neck.pan32", "neck.pan_out8", "neck.pan_out16", "neck.pan_out32"]
    expected += ["head.p3", "head.p4", "head.p5"]
    for name in expected:
        assert name in names, name
    assert len(voc_model.distill_layers) == 9
    assert all(layer in names for layer in voc_model.distill_layers)


def test_distill_layer_strides():
    model = yolov4(20, **TINY).eval()
    modules = dict(model.named_modules())
    shapes: dict[str, int] = {}
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[-1]))
        for name in model.distill_layers
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    for handle in handles:
        handle.remove()
    strides = [64 // shapes[name] for name in model.distill_layers]
    assert strides == [2, 4, 8, 16, 32, 32, 8, 16, 32]


def test_attributes(voc_model):
    assert voc_model.num_classes == 20
    assert voc_model.strides == (8, 16, 32)
    assert voc_model.anchors.shape == (3, 3, 2)
    assert torch.equal(voc_model.anchors, torch.tensor(DEFAULT_ANCHORS))
    assert "anchors" in dict(voc_model.named_buffers())


@pytest.mark.parametrize("backbone", ["cspdarknet53", "mobilenetv2"])
@pytest.mark.parametrize("size", [320, 416, 608])
def test_output_shapes(backbone, size):
    model = yolov4(20, backbone=backbone, **TINY).eval()
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, size, size))
    assert [tuple(o.shape) for o in outputs] == [(1, 75, size // s, size // s) for s in (8, 16, 32)]


def test_rectangular_input_and_batch():
    model = yolov4(3, **TINY).eval()
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outputs] == [(2, 24, 8, 12), (2, 24, 4, 6), (2, 24, 2, 3)]


def test_mobilenetv2_backbone_structure():
    model = yolov4(20, backbone="mobilenetv2")
    backbone = model.backbone
    assert backbone.out_channels == (32, 96, 320)
    depthwise = [
        m for m in backbone.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups > 1
    ]
    assert len(depthwise) == 17  # one per inverted residual block
    assert any(isinstance(m, nn.ReLU6) for m in backbone.modules())
    assert not any(isinstance(m, nn.Mish) for m in backbone.modules())
    # same neck and heads as the CSPDarknet53 model, on 32/96/320-channel taps
    assert model.neck.lateral8.conv.in_channels == 32
    assert model.neck.lateral16.conv.in_channels == 96
    assert model.neck.spp.pre[0].conv.in_channels == 320


def test_width_depth_variants():
    model = yolov4(20, **TINY)
    blocks = [len(getattr(model.backbone, f"stage{i}").blocks) for i in range(1, 6)]
    assert blocks == [1, 1, 3, 3, 1]
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features >= 8 and m.num_features % 8 == 0
    # parameters shrink roughly with width^2 (64.04 M at width 1)
    assert 0.5 * 64.04e6 / 64 < n_params(model) < 1.5 * 64.04e6 / 64
    assert 0.5 * 64.04e6 / 16 < n_params(yolov4(20, width=0.25, depth=0.34)) < 1.5 * 64.04e6 / 16
    mobile = yolov4(20, backbone="mobilenetv2", **TINY)
    assert n_params(mobile) < 1_000_000


def test_custom_anchors():
    anchors = torch.arange(1, 19, dtype=torch.float32).view(3, 3, 2)
    assert torch.equal(yolov4(2, anchors=anchors.tolist(), **TINY).anchors, anchors)
    with pytest.raises(ValueError, match="anchors"):
        yolov4(2, anchors=torch.ones(3, 2), **TINY)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="backbone"):
        yolov4(20, backbone="resnet50")
    with pytest.raises(ValueError, match="num_classes"):
        yolov4(0)
    model = yolov4(20, **TINY)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.zeros(1, 1, 64, 64))


def test_predict_format_and_mode_restored():
    model = yolov4(4, **TINY)
    model.train()
    images = torch.rand(2, 3, 64, 64)
    detections = model.predict(images, conf=0.0, iou=0.5, max_det=50)
    assert model.training
    assert len(detections) == 2
    for det in detections:
        assert set(det) == {"boxes", "scores", "labels"}
        k = det["boxes"].shape[0]
        assert 0 < k <= 50
        assert det["boxes"].shape == (k, 4) and det["scores"].shape == (k,) and det["labels"].shape == (k,)
        assert det["labels"].dtype == torch.int64
        assert bool(((det["labels"] >= 0) & (det["labels"] < 4)).all())
        assert bool((det["boxes"] >= 0).all() and (det["boxes"] <= 64).all())
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
    high = model.predict(images, conf=0.9)
    assert all(bool((d["scores"] >= 0.9).all()) for d in high)


def test_no_inplace_activations():
    model = yolov4(20, **TINY)
    for m in model.modules():
        assert not getattr(m, "inplace", False), type(m).__name__


@pytest.mark.parametrize("backbone", ["cspdarknet53", "mobilenetv2"])
def test_torch_pruning_traces_and_prunes(backbone):
    model = yolov4(3, backbone=backbone, width=0.25, depth=0.34).eval()
    example = torch.rand(1, 3, 64, 64)
    before = n_params(model)
    pruner = tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(),
        pruning_ratio=0.3,
        ignored_layers=[model.head.p3, model.head.p4, model.head.p5],
    )
    pruner.step()
    with torch.no_grad():
        outputs = model(example)
    assert [tuple(o.shape) for o in outputs] == [(1, 24, 8, 8), (1, 24, 4, 4), (1, 24, 2, 2)]
    assert n_params(model) < 0.75 * before


def test_scaling_helpers():
    assert scale_channels(1024, 1.0) == 1024
    assert scale_channels(32, 0.125) == 8  # floor
    assert scale_channels(256, 0.33) == 88  # 84.48 -> nearest multiple of 8
    assert scale_channels(20, 1.0) == 20  # width 1 keeps cfg values untouched
    assert [scale_depth(n, 0.34) for n in (1, 2, 8, 8, 4)] == [1, 1, 3, 3, 1]


def test_building_blocks_shapes():
    x = torch.rand(2, 16, 8, 8)
    assert CSPStage(16, 32, 16, 16, 2)(x).shape == (2, 32, 4, 4)
    assert DarkResidual(16, 8)(x).shape == x.shape
    block = InvertedResidual(16, 16, 1, 6)
    assert block.use_residual and block(x).shape == x.shape
    assert not InvertedResidual(16, 24, 2, 6).use_residual
    assert InvertedResidual(16, 24, 2, 6)(x).shape == (2, 24, 4, 4)
    assert SPP(16, 8)(x).shape == (2, 8, 8, 8)
    assert ConvSet(16, 8)(x).shape == (2, 8, 8, 8)
    neck = PANet((8, 16, 32), width=0.125)
    outs = neck([torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4), torch.rand(1, 32, 2, 2)])
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]
    assert neck.out_channels == (32, 64, 128)
    with pytest.raises(ValueError, match="activation"):
        ConvBNAct(3, 8, act="gelu")
