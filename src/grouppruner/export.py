"""The deployment form of a (pruned) model: BatchNorm folded into convolutions, eval mode, ONNX.

A pruned model still runs every BatchNorm as a separate pass over its output: in eval mode a BN is an affine map
per channel that folds exactly into the preceding convolution's weight and bias. :func:`fuse_for_inference` does
that fold with torch's own :func:`torch.nn.utils.fusion.fuse_conv_bn_eval` (no fusion math of our own) for every
convolution whose output tensor goes straight into a BatchNorm (found by one traced pass,
:func:`grouppruner.profile.record_positions`), replaces those BatchNorms by ``nn.Identity`` and checks the fused
model against the original on the example inputs. The result is a plain module in eval mode without hooks, so
``torch.jit.trace``, ``torch.compile`` and :func:`export_onnx` take it as is.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.jit._trace import TracerWarning
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ._utils.calls import ForwardFn, call_model, eval_mode, split_inputs, tensors_in
from ._utils.errors import GroupPrunerError, InvalidOptionError
from .profile import record_positions

__all__ = ["ExportError", "export_onnx", "fuse_for_inference"]

logger = logging.getLogger(__name__)


class ExportError(GroupPrunerError, RuntimeError):
    """The deployment form differs from the model it was made from (the message gives the largest difference)."""


def _max_difference(a: Any, b: Any) -> float:
    left, right = tensors_in(a), tensors_in(b)
    if len(left) != len(right) or any(x.shape != y.shape for x, y in zip(left, right, strict=True)):
        return float("inf")
    return max((float((x.float() - y.float()).abs().max()) for x, y in zip(left, right, strict=True)), default=0.0)


def fuse_for_inference(
    model: nn.Module,
    example_inputs: Any,
    *,
    forward_fn: ForwardFn | None = None,
    inplace: bool = False,
    atol: float = 1e-4,
) -> nn.Module:
    """The inference form of ``model``: eval mode, every conv -> BatchNorm pair folded into one conv.

    A pair is folded when the BatchNorm's input is exactly the convolution's output tensor (as in
    ``Conv2d -> BatchNorm2d -> act``). The fused model is compared with the original on ``example_inputs``.

    Args:
        model: the model (pruned or not); its BatchNorm running statistics are folded as they are.
        example_inputs: inputs for the trace and the check, e.g. a (1, 3, 416, 416) tensor.
        forward_fn: ``forward_fn(model, example_inputs)`` instead of calling the model.
        inplace: fuse ``model`` itself instead of a deep copy.
        atol: largest absolute output difference accepted by the check.

    Returns:
        The fused model in eval mode (``model`` itself when ``inplace``). Without ``inplace``, ``model`` keeps
        its own train / eval mode, submodule by submodule.

    Raises:
        ExportError: the fused model's outputs differ from the original's by more than ``atol`` (e.g. a
            convolution output that feeds both its BatchNorm and another layer), naming the difference.
    """
    return _fuse(model, example_inputs, forward_fn, inplace, atol, logging.INFO)


def _fuse(
    model: nn.Module, example_inputs: Any, forward_fn: ForwardFn | None, inplace: bool, atol: float, level: int
) -> nn.Module:
    with eval_mode(model), torch.no_grad():  # the caller's train / eval flags come back (unless inplace)
        reference = call_model(model, example_inputs, forward_fn)
    fused = model if inplace else copy.deepcopy(model)
    fused.eval()
    _, successor_bn = record_positions(fused, example_inputs, forward_fn=forward_fn)
    count = 0
    for conv_name, bn_name in successor_bn.items():
        conv = fused.get_submodule(conv_name)
        bn = fused.get_submodule(bn_name)
        if not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed or not isinstance(bn, _BatchNorm):
            continue
        if bn.running_mean is None or bn.running_var is None or conv.out_channels != bn.num_features:
            continue  # a BN without running statistics normalises by the batch: nothing to fold
        fused.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
        fused.set_submodule(bn_name, nn.Identity())
        count += 1
    with torch.no_grad():
        difference = _max_difference(reference, call_model(fused, example_inputs, forward_fn))
    if not difference <= atol:
        raise ExportError(
            f"fuse_for_inference: the fused model differs from the original by {difference:.3g} (> atol={atol:g}) "
            "on the example inputs; a folded convolution output is probably also used without its BatchNorm"
        )
    logger.log(level, "fuse_for_inference: folded %d BatchNorms (max output difference %.2g)", count, difference)
    return fused


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path | None = None,
    *,
    fuse: bool = True,
    opset_version: int = 17,
    input_names: list[str] | None = None,
    check: bool = True,
    atol: float = 1e-4,
) -> bytes:
    """Export the deployment form of ``model`` to ONNX and check it with onnxruntime.

    Args:
        model: the model (pruned or not).
        example_inputs: a tensor such as (1, 3, 416, 416) or a tuple of positional tensors (the export trace).
        path: if given, the ONNX file to write.
        fuse: fold BatchNorms first (:func:`fuse_for_inference`, on a copy).
        opset_version: the ONNX opset.
        input_names: graph input names (default ``input0, input1, ...``).
        check: run the ONNX graph with onnxruntime (if installed) and compare with the exported module.
        atol: largest absolute difference accepted by the check.

    Returns:
        The serialized ONNX model. ``model`` keeps its own train / eval mode.

    Raises:
        ExportError: onnxruntime's outputs differ from the module's by more than ``atol``.
    """
    with eval_mode(model):  # export in eval mode; the caller's model gets its own flags back
        return _export_onnx(model, example_inputs, path, fuse, opset_version, input_names, check, atol)


def _export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path | None,
    fuse: bool,
    opset_version: int,
    input_names: list[str] | None,
    check: bool,
    atol: float,
) -> bytes:
    # unchecked exports are the latency model's and the runtime timer's, hundreds per plan: their folding is a detail
    module = (
        _fuse(model, example_inputs, None, False, atol, logging.INFO if check else logging.DEBUG) if fuse else model
    )
    args, kwargs = split_inputs(example_inputs)
    if kwargs:
        raise InvalidOptionError(
            "export_onnx: keyword inputs are not supported by the ONNX trace; pass a tensor or a tuple"
        )
    names = input_names or [f"input{i}" for i in range(len(args))]
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # A fixed-shape export: shape checks in forward() becoming constants is what is meant, not worth a warning.
        warnings.simplefilter("ignore", TracerWarning)
        # TorchScript-based exporter: the dynamo one needs onnxscript, which the deployment target may lack.
        torch.onnx.export(  # a file-like target is supported by the TorchScript exporter, not by its annotation
            module,
            args,
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=opset_version,
            input_names=names,
        )
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            logger.warning("export_onnx: onnxruntime is not installed; the ONNX graph was not checked")
            return data
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        feeds = {name: arg.detach().cpu().numpy() for name, arg in zip(names, args, strict=True)}
        ours = session.run(None, feeds)
        with torch.no_grad():
            theirs = tensors_in(module(*args))
        difference = _max_difference([torch.from_numpy(o) for o in ours], theirs)
        if not difference <= atol:
            raise ExportError(f"export_onnx: onnxruntime differs from the module by {difference:.3g} (> {atol:g})")
        logger.info("export_onnx: onnxruntime parity %.2g", difference)
    return data
