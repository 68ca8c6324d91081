"""A conv unit (conv, BatchNorm, activation) as a small ONNX graph, written directly: what the deployment export
gives for it (BatchNorm folded into the conv's bias, the activation as the ops torch exports it as), in
milliseconds instead of the second a TorchScript export of a tiny graph takes."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["OPSET", "unit_onnx"]

OPSET = 17
"""The opset of :func:`grouppruner.export.export_onnx`'s default, so that units run as the deployed model does."""


def _activation(module: nn.Module, name: str, source: str) -> tuple[list[Any], str] | None:
    """Nodes for a parameter-free activation and the name of its output, or ``None`` if it has no direct form."""
    from onnx import helper

    out = f"{name}_out"
    kind = type(module)
    if kind is nn.SiLU:  # torch exports SiLU as x * sigmoid(x)
        return [
            helper.make_node("Sigmoid", [source], [f"{name}_s"]),
            helper.make_node("Mul", [source, f"{name}_s"], [out]),
        ], out
    if kind is nn.ReLU:
        return [helper.make_node("Relu", [source], [out])], out
    if isinstance(module, nn.LeakyReLU) and kind is nn.LeakyReLU:
        return [helper.make_node("LeakyRelu", [source], [out], alpha=float(module.negative_slope))], out
    if kind is nn.Sigmoid:
        return [helper.make_node("Sigmoid", [source], [out])], out
    if kind is nn.Hardswish:
        return [helper.make_node("HardSwish", [source], [out])], out
    if kind is nn.Identity:
        return [], source
    return None


def unit_onnx(conv: nn.modules.conv._ConvNd, tail: tuple[nn.Module, ...], input_shape: tuple[int, ...]) -> bytes | None:
    """Serialized ONNX of ``conv`` followed by ``tail`` on an input of ``input_shape`` (N, C_in, *spatial).

    Weights are random (values do not change the time); a BatchNorm right after the conv is folded into a conv bias,
    as :func:`grouppruner.export.fuse_for_inference` does for deployment. Returns ``None`` where a part has no
    direct form here (string padding, non-zero padding modes, other tail modules): export the unit instead.
    """
    from onnx import NodeProto, TensorProto, helper, numpy_helper

    if isinstance(conv.padding, str) or conv.padding_mode != "zeros" or conv.transposed:
        return None
    nodes: list[NodeProto] = []
    source = "conv_out"
    has_bias = conv.bias is not None
    for index, module in enumerate(tail):
        if isinstance(module, _BatchNorm) and index == 0:
            has_bias = True
            continue
        made = _activation(module, f"t{index}", source)
        if made is None:
            return None
        extra, source = made
        nodes.extend(extra)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(
        (conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size), dtype=np.float32
    )
    initializers = [numpy_helper.from_array(weight * 0.05, "w")]
    inputs = ["x", "w"]
    if has_bias:
        initializers.append(numpy_helper.from_array(np.zeros(conv.out_channels, dtype=np.float32), "b"))
        inputs.append("b")
    pads = [int(p) for p in conv.padding] * 2
    conv_node = helper.make_node(
        "Conv",
        inputs,
        ["conv_out"],
        kernel_shape=[int(k) for k in conv.kernel_size],
        strides=[int(s) for s in conv.stride],
        pads=pads,
        dilations=[int(d) for d in conv.dilation],
        group=int(conv.groups),
    )
    graph = helper.make_graph(
        [conv_node, *nodes],
        "unit",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return bytes(model.SerializeToString())
