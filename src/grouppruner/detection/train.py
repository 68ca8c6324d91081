"""Plain training and evaluation loops for the detectors, shared by the pipeline, the CLI and the examples.

Order of one training step in :func:`train_one_epoch`::

    optimizer.zero_grad()
    outputs = forward_fn(images)              # under autocast when a GradScaler is given
    total, parts = loss_fn(outputs, targets)
    (scaler.scale(total) if scaler else total).backward()
    scaler.unscale_(optimizer)                # only with a GradScaler: hooks must see the true gradients
    for hook in step_hooks: hook(model)       # e.g. lambda m: sparsity.step()
    scaler.step(optimizer); scaler.update()   # or optimizer.step()

Because the gradients are unscaled before the hooks run, a hook that adds ``s * sign(gamma)`` to the gradients
(BN sparsity) applies the same update with and without mixed precision. ``scaler.step`` then skips the step when
the unscaled gradients contain inf/nan, as usual.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from .._utils.errors import InvalidOptionError, OptionTypeError
from .metrics import voc_eval

logger = logging.getLogger(__name__)

StepHook = Callable[[nn.Module], None]
LossFn = Callable[[Any, list[dict[str, Tensor]]], tuple[Tensor, Mapping[str, Any]]]


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype the images are given in: that of the model's first floating parameter (a model in float64 gets
    float64 images), float32 for a model without one."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _to_device(targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> list[dict[str, Tensor]]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def _scalar(value: Any) -> float:
    return float(value.detach()) if isinstance(value, Tensor) else float(value)


def _progress(iterable: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return iterable
    from tqdm import tqdm

    bar: Iterable[Any] = tqdm(iterable, desc=desc, leave=False)
    return bar


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, list[dict[str, Tensor]]]],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    *,
    scaler: torch.amp.GradScaler | None = None,
    step_hooks: Sequence[StepHook] = (),
    device: torch.device | str | None = None,
    max_steps: int | None = None,
    forward_fn: Callable[[Tensor], Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader`` (or ``max_steps`` batches).

    The model is put in train mode (and left there). See the module docstring for the exact order of a step.

    Args:
        model: The detector; its ``forward(images)`` output goes to ``loss_fn``.
        loader: Yields ``(images (N, 3, H, W) float in [0, 1], targets)`` (images are cast to the dtype of the
            model's parameters) with targets a list of ``N`` dicts
            (``"boxes"`` ``(M, 4)``, ``"labels"`` ``(M,)``, ...), e.g. a ``DataLoader`` with
            :func:`~grouppruner.detection.collate`.
        optimizer: The optimizer stepping ``model``'s parameters.
        loss_fn: ``loss_fn(outputs, targets) -> (total, parts)``, e.g. a ``YoloLoss``; ``total`` is a scalar
            tensor, ``parts`` a dict of scalars (tensors or floats) for logging.
        scaler: A ``torch.amp.GradScaler`` for mixed precision: the forward runs under ``torch.autocast`` and
            the gradients are unscaled before the hooks.
        step_hooks: Callables ``hook(model) -> None`` run after backward, before the optimizer step, in order.
        device: Where to run; default the device of the model's first parameter.
        max_steps: Stop after this many batches.
        forward_fn: Called as ``forward_fn(images)`` instead of ``model(images)`` (e.g. an
            ``AttentionDistiller`` that runs student and teacher); its output goes to ``loss_fn``.
        autocast_dtype: Run the forward under ``torch.autocast`` with this dtype (bfloat16 needs no scaler);
            with a ``scaler`` and no dtype: float16 on CUDA, bfloat16 elsewhere.
        progress: Show a tqdm progress bar.

    Returns:
        The mean over the steps of ``"loss"`` (the total) and of every entry of ``parts``, plus ``"steps"``.

    Raises:
        FloatingPointError: the loss is not finite (without a scaler; with one, ``scaler.step`` skips the
            step and training continues). The message gives the step and the loss parts.
        ValueError: the loader yields no batch.
    """
    device = _device_of(model, device)
    dtype = _dtype_of(model)
    forward = model if forward_fn is None else forward_fn
    model.train()
    use_amp = (scaler is not None and scaler.is_enabled()) or autocast_dtype is not None
    amp_dtype = autocast_dtype or (torch.float16 if device.type == "cuda" else torch.bfloat16)
    sums: dict[str, float] = {}
    steps = 0
    for images, targets in _progress(loader, progress, "train"):
        if max_steps is not None and steps >= max_steps:
            break
        images = images.to(device, dtype, non_blocking=True)
        targets = _to_device(targets, device)
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()
        with context:
            outputs = forward(images)
        total, parts = loss_fn(outputs, targets)
        if not torch.isfinite(total.detach()).all() and scaler is None:
            raise FloatingPointError(
                f"train_one_epoch: non-finite loss {float(total.detach())} at step {steps} (parts: "
                f"{ {k: _scalar(v) for k, v in parts.items()} })"
            )
        if scaler is not None:
            torch.autograd.backward(scaler.scale(total))
            scaler.unscale_(optimizer)
        else:
            torch.autograd.backward(total)
        for hook in step_hooks:
            hook(model)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + _scalar(value)
        steps += 1
    if steps == 0:
        raise InvalidOptionError("train_one_epoch: the loader yielded no batch")
    result = {key: value / steps for key, value in sums.items()}
    result["steps"] = float(steps)
    logger.info("train_one_epoch: %d steps, loss %.4f", steps, result["loss"])
    return result


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, list[dict[str, Tensor]]]],
    *,
    conf: float = 0.001,
    iou: float = 0.5,
    nms_iou: float = 0.45,
    use_07_metric: bool = False,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """VOC mAP of ``model`` on ``loader``.

    Runs ``model.predict(images, conf=conf, iou=nms_iou)`` in eval mode without gradients (the model's previous
    train/eval mode is restored afterwards), and scores all detections against the targets with
    :func:`~grouppruner.detection.voc_eval` (difficult objects ignored). Boxes are compared in input pixels.

    Args:
        model: A detector with ``predict(images, *, conf, iou) -> list of dicts`` (``"boxes"`` ``(K, 4)``,
            ``"scores"`` ``(K,)``, ``"labels"`` ``(K,)``), e.g. ``YOLOv4``; a DDP / DataParallel wrapper is
            unwrapped through ``.module``.
        loader: Yields ``(images (N, 3, H, W), targets)`` as for :func:`train_one_epoch`.
        conf: Score threshold of the detections (low, as VOC AP integrates over all scores).
        iou: IoU threshold of a correct detection (mAP@``iou``).
        nms_iou: IoU threshold of the NMS inside ``predict``.
        use_07_metric: 11-point AP instead of all-point.
        num_classes: Passed to ``voc_eval`` (default: ``model.num_classes`` when present).
        device: Where to run; default the device of the model's first parameter.
        max_steps: Evaluate only the first this many batches.
        progress: Show a tqdm progress bar.

    Returns:
        The dict of :func:`~grouppruner.detection.voc_eval` (``"map"``, ``"ap"`` per class index, ...) plus
        ``"images"`` (number of images evaluated).

    Raises:
        TypeError: the model has no ``predict`` method.
    """
    net = model.module if not hasattr(model, "predict") and hasattr(model, "module") else model
    predict = getattr(net, "predict", None)
    if not callable(predict):
        raise OptionTypeError(f"evaluate: {type(model).__name__} has no predict(images, *, conf, iou) method")
    net_classes = getattr(net, "num_classes", None)
    if num_classes is None and isinstance(net_classes, int):
        num_classes = net_classes
    device = _device_of(model, device)
    dtype = _dtype_of(model)
    was_training = model.training
    model.eval()
    detections: list[dict[str, Tensor]] = []
    annotations: list[dict[str, Tensor]] = []
    try:
        for step, (images, targets) in enumerate(_progress(loader, progress, "eval")):
            if max_steps is not None and step >= max_steps:
                break
            outputs = predict(images.to(device, dtype, non_blocking=True), conf=conf, iou=nms_iou)
            detections.extend({k: v.detach().cpu() for k, v in d.items()} for d in outputs)
            annotations.extend({k: v.detach().cpu() for k, v in t.items()} for t in targets)
    finally:
        model.train(was_training)
    result = voc_eval(detections, annotations, iou=iou, use_07_metric=use_07_metric, num_classes=num_classes)
    result["images"] = len(annotations)
    if not math.isnan(result["map"]):
        logger.info("evaluate: %d images, mAP@%.2f %.4f", len(annotations), iou, result["map"])
    return result
