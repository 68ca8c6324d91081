"""Darknet out: from_darknet -> GroupPruner -> to_darknet -> from_darknet gives the pruned model's outputs."""

import numpy as np
import pytest
import torch

import grouppruner as gp
from darknet_files import DATA, conv_layout, sections, write_weights
from grouppruner.detection.darknet import from_darknet, read_header, to_darknet
from grouppruner.detection.darknet.model import ConvLayer
from grouppruner.profile import count_params


def _sparse_like(model):
    """Spread the BatchNorm scales so that pruning by |gamma| removes channels that matter somewhat."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 1.5)


def _round_trip(tmp_path, name, size, target):
    cfg = DATA / f"{name}.cfg"
    write_weights(tmp_path / "in.weights", cfg.read_text(), seed=4)
    model = from_darknet(cfg, tmp_path / "in.weights")
    _sparse_like(model)
    model.eval()
    before = count_params(model)
    pruner = gp.GroupPruner(gp.ChannelGraph(model, torch.zeros(1, 3, size, size)), min_channels=4)
    # a parameter budget for the full cfgs; fixed per-group ratios (no budget search, faster) for the tiny ones
    plan = pruner.plan(target_params=target) if target else pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5))
    pruner.apply(plan)
    assert count_params(model) < 0.7 * before
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x)
    for fold in (False, True):
        stem = tmp_path / f"pruned-{'folded' if fold else 'bn'}"
        header = read_header(tmp_path / "in.weights")
        to_darknet(model, stem.with_suffix(".cfg"), stem.with_suffix(".weights"), fold_batchnorm=fold, header=header)
        assert read_header(stem.with_suffix(".weights")) == header  # darknet goes on counting the images seen
        text = stem.with_suffix(".cfg").read_text()
        # the file is as long as the written cfg says, counted without the library
        floats = sum(int(np.prod(shape)) for _, tensors in conv_layout(text) for _, shape in tensors)
        assert stem.with_suffix(".weights").stat().st_size == 20 + 4 * floats
        back = from_darknet(stem.with_suffix(".cfg"), stem.with_suffix(".weights")).eval()
        has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in back.modules())
        assert has_bn != fold
        if not fold:  # darknet's form: the same tensors (a conv bias pruning put before a BatchNorm is folded away)
            assert count_params(back) == count_params(model) - _biases_before_bn(model)
        with torch.no_grad():
            got = back(x)
        for a, b in zip(got, expected, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    return model, sections(text), sections(cfg.read_text())


def _biases_before_bn(model):
    return sum(
        layer.conv.bias.numel()
        for layer in model.layers
        if isinstance(layer, ConvLayer) and layer.bn is not None and layer.conv.bias is not None
    )


def _check_cfg(model, written, original):
    assert [name for name, _ in written] == [name for name, _ in original]  # same layers, same order
    for index, layer in enumerate(model.layers):
        name, options = written[index + 1]
        if isinstance(layer, ConvLayer):
            assert int(options["filters"]) == layer.conv.out_channels
        elif name in ("route", "shortcut", "yolo"):  # indices, masks, anchors and training keys unchanged
            assert options == original[index + 1][1]


@pytest.mark.parametrize("name", ["yolov4-tiny", "yolov3-tiny"])
def test_tiny_cfgs_round_trip_after_pruning(tmp_path, name, one_thread):
    model, written, original = _round_trip(tmp_path, name, 96, None)
    _check_cfg(model, written, original)
    assert written[0][1] == original[0][1]  # [net] with its training keys
    assert any(
        int(o["filters"]) < int(p["filters"])
        for (n, o), (_, p) in zip(written, original, strict=True)
        if n == "convolutional"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov4", "yolov3"])
def test_full_cfgs_round_trip_after_pruning_at_416(tmp_path, name):
    model, written, original = _round_trip(tmp_path, name, 416, 0.4)
    _check_cfg(model, written, original)
