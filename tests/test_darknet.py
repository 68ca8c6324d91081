"""Darknet cfg + weights in: parsing, the model it builds, the weights reader, and every bad-input case."""

import functools
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import grouppruner as gp
from darknet_files import DATA, conv_layout, reduced_cfg, set_option, write_weights
from grouppruner._utils.errors import DataError, OptionTypeError
from grouppruner.detection import YoloLoss, yolov4
from grouppruner.detection.darknet import (
    DarknetModel,
    from_darknet,
    parse_cfg,
    parse_cfg_text,
    read_header,
    to_darknet,
    weights_floats,
    yolov4_state_dict,
)
from grouppruner.detection.darknet.model import ConvLayer, MaxPoolLayer
from grouppruner.detection.decode import BoxCoding, decode
from grouppruner.profile import count_params


@functools.cache
def _model(name):
    """The model of a shipped cfg, built once per test session (0.5 s for yolov4.cfg); tests must not change it."""
    return from_darknet(DATA / f"{name}.cfg")


def test_yolov4_cfg_counts_match_yolov4_80_and_the_published_file_size():
    model = _model("yolov4")
    assert count_params(model) == 64_363_101  # yolov4(80)'s count, compared in the slow test below
    running = sum(b.numel() for name, b in model.named_buffers() if "running_" in name)
    assert running == 66_304
    assert weights_floats(model) == 64_429_405
    # the size the independent layout gives, with darknet's 20-byte header (uint64 seen)
    layout_floats = sum(
        math.prod(shape) for _, tensors in conv_layout((DATA / "yolov4.cfg").read_text()) for _, shape in tensors
    )
    assert 20 + 4 * layout_floats == 257_717_640 == 20 + 4 * weights_floats(model)


@pytest.mark.parametrize(
    ("name", "params", "size"),
    # file sizes of the published yolov3 / yolov4-tiny / yolov3-tiny weights
    [
        ("yolov4-tiny", 6_056_606, 24_251_276),
        ("yolov3", 61_949_149, 248_007_048),
        ("yolov3-tiny", 8_852_366, 35_434_956),
    ],
)
def test_other_cfg_counts_match_their_published_weights(name, params, size):
    model = _model(name)
    assert count_params(model) == params
    assert 20 + 4 * weights_floats(model) == size


@pytest.mark.parametrize(
    ("name", "strides", "heads"),
    [
        ("yolov4", (8, 16, 32), (139, 150, 161)),
        ("yolov4-tiny", (16, 32), (37, 30)),
        ("yolov3", (8, 16, 32), (106, 94, 82)),
        ("yolov3-tiny", (16, 32), (23, 16)),
    ],
)
def test_heads_anchors_and_feature_info_follow_the_yolo_layers(name, strides, heads):
    model = _model(name)
    assert model.strides == strides and model.head_layers == heads and model.num_classes == 80
    assert model.anchors.shape == (len(strides), 3, 2)
    # feature_info: the input of each head conv, named as a module and with its channels / stride
    for info, head, stride in zip(model.feature_info, heads, strides, strict=True):
        assert info.module == f"layers.{head - 2}" and info.stride == stride
        conv = model.layers[head - 1]
        assert isinstance(conv, ConvLayer) and conv.conv.in_channels == info.channels
    assert model.distill_layers == [info.module for info in model.feature_info]
    if name == "yolov4":  # the cfg's stride-8 yolo layer: mask 0,1,2 of the nine anchors, scale_x_y 1.2
        assert model.anchors[0].tolist() == [[12, 16], [19, 36], [40, 28]]
        assert model.coding[0] == BoxCoding(new_coords=False, scale_x_y=1.2)
    if name == "yolov4-tiny":  # stride 16: mask 1,2,3 of the six anchors; stride 32: mask 3,4,5
        assert model.anchors.tolist() == [[[23, 27], [37, 58], [81, 82]], [[81, 82], [135, 169], [344, 319]]]


@pytest.mark.parametrize("name", ["yolov4-tiny", "yolov3-tiny"])
def test_weights_load_into_every_tensor(tmp_path, name):
    text = (DATA / f"{name}.cfg").read_text()
    written = write_weights(tmp_path / "w.weights", text, seed=1)
    model = from_darknet(DATA / f"{name}.cfg", tmp_path / "w.weights")
    assert read_header(tmp_path / "w.weights").seen == 12345
    checked = 0
    for layer, tensors in conv_layout(text):
        conv = model.layers[layer]
        assert isinstance(conv, ConvLayer)
        ours = (
            {"beta": conv.bn.bias, "gamma": conv.bn.weight, "mean": conv.bn.running_mean, "var": conv.bn.running_var}
            if conv.bn is not None
            else {"bias": conv.conv.bias}
        )
        ours["weight"] = conv.conv.weight
        for label, _ in tensors:
            assert np.array_equal(ours[label].detach().numpy(), written[(layer, label)]), (layer, label)
            checked += 1
    assert checked == len(written)


def test_old_header_with_a_32_bit_seen_counter_is_read(tmp_path):
    text = reduced_cfg("yolov3-tiny", 2)
    (tmp_path / "v3.cfg").write_text(text)
    written = write_weights(tmp_path / "old.weights", text, version=(0, 1, 0))
    model = from_darknet(tmp_path / "v3.cfg", tmp_path / "old.weights")
    assert (tmp_path / "old.weights").stat().st_size == 16 + 4 * weights_floats(model)
    assert read_header(tmp_path / "old.weights").size == 16
    assert np.array_equal(model.layers[0].conv.weight.detach().numpy(), written[(0, "weight")])


@pytest.mark.slow
def test_yolov4_cfg_gives_the_outputs_of_yolov4_80_with_the_same_weights(tmp_path):
    write_weights(tmp_path / "yolov4.weights", (DATA / "yolov4.cfg").read_text(), seed=2)
    assert (tmp_path / "yolov4.weights").stat().st_size == 257_717_640
    model = from_darknet(DATA / "yolov4.cfg", tmp_path / "yolov4.weights").eval()
    reference = yolov4(80).eval()
    assert count_params(reference) == count_params(model) == 64_363_101
    reference.load_state_dict(yolov4_state_dict(model))
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert a.abs().max() > 0.1  # the weights reached the outputs


def _naive_darknet_maxpool(x, size, stride, padding):
    # darknet's forward_maxpool_layer: out = (w + padding - size) / stride + 1, window (i, j) starts at
    # (i * stride - padding / 2, j * stride - padding / 2); cells outside the input never win
    n, c, h, w = x.shape
    out_h, out_w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    canvas = torch.full((n, c, h + 2 * size + padding, w + 2 * size + padding), -math.inf)
    canvas[:, :, size : size + h, size : size + w] = x
    out = torch.full((n, c, out_h, out_w), -math.inf)
    for di in range(size):
        for dj in range(size):
            top, left = size - padding // 2 + di, size - padding // 2 + dj
            window = canvas[:, :, top : top + stride * out_h : stride, left : left + stride * out_w : stride]
            out = torch.maximum(out, window)
    return out


@pytest.mark.parametrize(("size", "stride", "padding", "hw"), [(2, 2, 1, 13), (2, 1, 1, 6), (5, 1, 4, 7), (3, 2, 2, 9)])
def test_maxpool_follows_darknets_padding_rule(size, stride, padding, hw):
    x = torch.randn(2, 3, hw, hw)
    torch.testing.assert_close(MaxPoolLayer(size, stride, padding)(x), _naive_darknet_maxpool(x, size, stride, padding))


_SMALL_CFG = """
[net]
width=64
height=64
channels=3
# a comment, and training-only keys
momentum=0.9
mosaic=1

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=swish

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
groups=16
activation=mish

[shortcut]
from=-2
activation=linear

[route]
layers=-1
groups=2
group_id=1

[maxpool]
size=2
stride=2

[route]
layers=-1,-3

[convolutional]
filters=14
size=1
stride=1
activation=logistic

[yolo]
mask=0,1
anchors=8,8, 16,16, 24,24, 40,40
classes=2
num=4
new_coords=1
scale_x_y=2.0
ignore_thresh=.7
iou_loss=ciou
"""


def test_a_hand_written_cfg_computes_what_darknet_computes():
    """Routes with groups, a depthwise conv, a shortcut, swish / mish, a new_coords head, and the kept keys."""
    with pytest.raises(DataError, match="joins maps of strides"):  # the route above mixes strides 2 and 4
        parse_and_build(_SMALL_CFG)
    text = _SMALL_CFG.replace("layers=-1,-3", "layers=-1,-2").replace(
        "[maxpool]\nsize=2\nstride=2", "[maxpool]\nsize=3\nstride=1"
    )
    model = parse_and_build(text).eval()
    assert model.cfg[0].options["mosaic"] == "1" and model.cfg[-1].options["iou_loss"] == "ciou"
    assert model.coding == (BoxCoding(new_coords=True, scale_x_y=2.0),)
    x = torch.randn(1, 3, 64, 64)
    l0, l1 = model.layers[0], model.layers[1]
    a0 = F.silu(l0.bn(l0.conv(x)))
    a1 = F.mish(l1.bn(l1.conv(a0)))
    a2 = a1 + a0
    a3 = a2[:, 8:]  # group_id 1 of 2 groups: the second half
    a4 = _naive_darknet_maxpool(a3, 3, 1, 2)
    a5 = torch.cat([a4, a3], dim=1)
    head = model.layers[6].conv(a5)  # the head's logistic is left to the decoding: raw logits out
    with torch.no_grad():
        (out,) = model(x)
    torch.testing.assert_close(out, head.detach())
    assert out.shape == (1, 14, 32, 32)


def parse_and_build(text):
    return DarknetModel(parse_cfg_text(text, "small.cfg"))


def test_classic_coordinates_decode_as_darknet_does():
    # one anchor (10, 20) at stride 8, raw tx = ty = 0, tw = log 2, th = 0, high objectness and class 0
    raw = torch.zeros(1, 6, 2, 2)
    raw[0, 2] = math.log(2.0)
    raw[0, 4] = 10.0
    raw[0, 5] = 10.0
    anchors = torch.tensor([[[2.0, 1.0]]])
    (det,) = decode([raw], anchors, (8,), conf=0.5, coding=[BoxCoding(new_coords=False, scale_x_y=1.2)])
    # darknet: x = (i + sigmoid(tx) * 1.2 - 0.1) * 8 = (i + 0.5) * 8, w = exp(tw) * 2 = 4, h = exp(0) * 1 = 1
    centres = ((det["boxes"][:, :2] + det["boxes"][:, 2:]) / 2).tolist()
    assert sorted(centres) == [[4.0, 4.0], [4.0, 12.0], [12.0, 4.0], [12.0, 12.0]]
    torch.testing.assert_close(det["boxes"][:, 2:] - det["boxes"][:, :2], torch.tensor([[4.0, 1.0]] * 4))


def test_classic_coding_trains_the_own_cell_only():
    loss = YoloLoss(1, anchors=torch.tensor([[[16.0, 16.0]]]), strides=(8,), coding=[BoxCoding(False, 1.05)])
    scaled = YoloLoss(1, anchors=torch.tensor([[[16.0, 16.0]]]), strides=(8,))
    gt = torch.tensor([[0.0, 0.0, 21.0, 21.0, 16.0, 16.0]])  # image, label, cx, cy, w, h (pixels)
    assert loss._assign(gt, 0, 8, 8, 8)[0].numel() == 1
    assert scaled._assign(gt, 0, 8, 8, 8)[0].numel() == 3  # own cell and the two nearest neighbours
    outputs = [torch.zeros(1, 6, 8, 8, requires_grad=True)]
    total, _ = loss(outputs, [{"boxes": torch.tensor([[13.0, 13.0, 29.0, 29.0]]), "labels": torch.tensor([0])}])
    total.backward()
    assert torch.isfinite(total) and outputs[0].grad.abs().sum() > 0


def test_graph_sparsity_and_distiller_run_on_a_darknet_model(one_thread):
    model = from_darknet(DATA / "yolov3-tiny.cfg")
    graph = gp.ChannelGraph(model, torch.zeros(1, 3, 64, 64))
    prunable = [g for g in graph.channel_groups if g.prunable]
    # the heads' output channels are fixed: their groups are protected
    heads = [g for g in graph.channel_groups if g.name in ("layers.15.conv", "layers.22.conv")]
    assert prunable and len(heads) == 2 and not any(g.prunable for g in heads)
    sparsity = gp.BNSparsity(graph, schedule=gp.sparsity.Constant(1e-3))
    outputs = model(torch.rand(2, 3, 64, 64))
    sum(o.square().mean() for o in outputs).backward()
    sparsity.step()
    teacher = from_darknet(DATA / "yolov3-tiny.cfg").eval()
    distiller = gp.AttentionDistiller(teacher, model, model.distill_layers)
    distiller(torch.rand(2, 3, 64, 64))
    loss, parts = distiller.loss()
    assert torch.isfinite(loss) and len(parts) == 2
    distiller.remove()


# ---- bad input: one clear line each -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  depth: 0.33\n", r"bad\.cfg:1: not a darknet cfg line"),
        ("[convolutional]\nfilters=3\n", r"bad\.cfg:1: not a darknet cfg: the first section must be \[net\]"),
        ("[net]\nwidth=64\n[lstm]\nbatch_normalize=1\n", r"bad\.cfg:3: unknown or unsupported section \[lstm\]"),
        (
            "[net]\nwidth=64\n\n[convolutional]\nfilters=8\nfilterz=4\n",
            r"bad\.cfg:6: unknown key 'filterz' in \[convolutional\]; close matches: 'filters'",
        ),
        (
            "[net]\n[convolutional]\nfilters=8\ndilation=2\n",
            r"bad\.cfg:4: \[convolutional\] dilation= is a darknet option grouppruner does not implement",
        ),
        ("[net]\n[convolutional]\nfilters=8\nfilters=4\n", r"bad\.cfg:4: \[convolutional\] filters given twice"),
    ],
)
def test_a_file_that_is_not_a_darknet_cfg_names_file_line_and_key(tmp_path, text, message):
    (tmp_path / "bad.cfg").write_text(text)
    with pytest.raises(DataError, match=message) as error:
        from_darknet(tmp_path / "bad.cfg")
    assert "\n" not in str(error.value)


def test_a_binary_file_is_not_a_cfg(tmp_path):
    (tmp_path / "x.cfg").write_bytes(b"\x00\xff\xfe" * 10)
    with pytest.raises(DataError, match=r"x\.cfg: not a darknet cfg \(not text"):
        parse_cfg(tmp_path / "x.cfg")


def test_a_route_to_a_layer_that_does_not_exist_names_the_line(tmp_path):
    text = (DATA / "yolov3-tiny.cfg").read_text().replace("layers = -4", "layers = 40", 1)
    (tmp_path / "r.cfg").write_text(text)
    line = next(i for i, raw in enumerate(text.splitlines(), 1) if raw.replace(" ", "") == "layers=40")
    with pytest.raises(
        DataError, match=rf"r\.cfg:{line}: \[route\] layers=40 refers to layer 40, which does not exist"
    ):
        from_darknet(tmp_path / "r.cfg")
    (tmp_path / "s.cfg").write_text(text.replace("layers = 40", "layers = -30"))
    with pytest.raises(DataError, match=r"\[route\] layers=-30 refers to layer -13"):
        from_darknet(tmp_path / "s.cfg")


def test_weights_too_short_too_long_or_from_another_cfg(tmp_path):
    text = reduced_cfg("yolov3-tiny", 2)
    (tmp_path / "v3.cfg").write_text(text)
    write_weights(tmp_path / "w.weights", text)
    full = (tmp_path / "w.weights").read_bytes()
    (tmp_path / "short.weights").write_bytes(full[: 20 + 4 * 500])
    # layer 0 holds 4 * 4 + 4 * 3 * 9 = 124 values, layer 2 (after a maxpool) 4 * 4 + 4 * 4 * 9 = 160: 500 ends in 4
    with pytest.raises(
        DataError,
        match=r"short\.weights: too short for the cfg: it ran out in layer 4 \(\[convolutional\] at .*v3\.cfg:\d+\)",
    ):
        from_darknet(tmp_path / "v3.cfg", tmp_path / "short.weights")
    write_weights(tmp_path / "long.weights", text, extra=3)
    with pytest.raises(DataError, match=r"long\.weights: 12 bytes left over after the last layer"):
        from_darknet(tmp_path / "v3.cfg", tmp_path / "long.weights")
    write_weights(tmp_path / "v4tiny.weights", reduced_cfg("yolov4-tiny", 2))
    with pytest.raises(DataError, match=r"is it the weights of another cfg\?"):
        from_darknet(tmp_path / "v3.cfg", tmp_path / "v4tiny.weights")
    with pytest.raises(DataError, match=r"v3\.cfg"):  # nothing was loaded: a fresh model is left as it was
        from_darknet(tmp_path / "v3.cfg", tmp_path / "short.weights")


def test_a_header_with_an_unknown_major_version_is_refused(tmp_path):
    text = reduced_cfg("yolov3-tiny", 2)
    (tmp_path / "v3.cfg").write_text(text)
    write_weights(tmp_path / "w.weights", text, version=(7, 0, 0))
    with pytest.raises(DataError, match=r"w\.weights: unknown darknet weights major version 7 \(header 7\.0\.0\)"):
        from_darknet(tmp_path / "v3.cfg", tmp_path / "w.weights")
    (tmp_path / "tiny.weights").write_bytes(struct.pack("<ii", 0, 2))
    with pytest.raises(DataError, match="shorter than its header"):
        from_darknet(tmp_path / "v3.cfg", tmp_path / "tiny.weights")


def test_to_darknet_refuses_a_model_from_elsewhere(tmp_path):
    with pytest.raises(
        OptionTypeError, match=r"to_darknet: the model must be a DarknetModel built by from_darknet, got YOLOv4"
    ):
        to_darknet(yolov4(2, width=0.125, depth=0.34), tmp_path / "x.cfg", tmp_path / "x.weights")
    with pytest.raises(OptionTypeError, match="got Sequential"):
        to_darknet(nn.Sequential(), tmp_path / "x.cfg", tmp_path / "x.weights")
    assert not (tmp_path / "x.cfg").exists()


def test_layers_that_do_not_fit_together_are_named(tmp_path):
    base = (DATA / "yolov3-tiny.cfg").read_text()
    cases = [
        (set_option(base, 16, "filters", "254"), r"\[yolo\] with 3 anchors and classes=80 needs filters=255"),
        (
            set_option(set_option(base, 24, "classes", "20"), 23, "filters", "75"),
            r"\[yolo\] layers disagree on classes: \[20, 80\]",
        ),
        (set_option(base, 1, "activation", "relu6"), r"activation=relu6 is not supported"),
        (set_option(base, 17, "mask", "3,4,9"), r"mask=\[3, 4, 9\] picks anchors outside 0\.\.5"),
        (set_option(base, 18, "layers", "-1,-2,-3,-4,-5"), r"\[route\] takes 1 to 4 layers, got 5"),
        (
            _insert_before_nth(base, "[maxpool]", 2, "[shortcut]\nfrom=-3\n\n"),
            r"\[shortcut\] adds layer 0 \(16 channels, stride 1\) to layer 2 \(32, 2\)",
        ),
    ]
    for index, (text, message) in enumerate(cases):
        (tmp_path / f"c{index}.cfg").write_text(text)
        with pytest.raises(DataError, match=message):
            from_darknet(tmp_path / f"c{index}.cfg")


def _insert_before_nth(text, marker, n, insert):
    at = -1
    for _ in range(n):
        at = text.index(marker, at + 1)
    return text[:at] + insert + text[at:]
