"""Deployment rewrites of a (pruned) YOLO that keep its forward exact and suit onnxruntime's CPU kernels.

:func:`split_free` rewrites every C2f-kin block (``C2f``, ``C3k2``: ``cv1``'s output split in two halves) into
two convolutions, one per half. onnxruntime runs convolutions in its blocked NCHWc layout, but a ``Split`` has no
blocked form: each one costs a layout reorder out and one back in. On yolo11n that is 8 ``Split`` and 32 reorder
nodes, about a tenth of the one-thread latency at 320, and a part that pruning channels hardly shrinks (see
``benchmarks/runtime_profile.py``). The two convolutions read the same input and compute the same outputs, so the
rewrite changes the graph, not the numbers.

The flows ship the rewrite: :func:`~.model.prune` and :func:`~.flow.compress` take ``split_free`` (default: on when
the runtime is onnxruntime, :func:`resolve_split_free`), rewrite the pruned model in place, and measure
``target_latency`` through it (:func:`planning_runtime`: the runtime's ``deploy``), so that the ONNX a user exports
is the graph that was measured. The rewritten model trains in the trainers of :mod:`.trainer` and saves and loads
through :func:`~.checkpoint.save` / :func:`~.checkpoint.load`, also with Ultralytics' ``weights_only`` loading
(``ULTRALYTICS_SAFE_LOAD=1``: :func:`~.checkpoint.load` registers :class:`SplitFreeC2f` as a safe global).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from ..._utils.errors import InvalidOptionError, OptionTypeError
from ...runtime import Runtime, resolve_runtime

__all__ = ["SplitFreeC2f", "planning_runtime", "resolve_split_free", "split_free"]

logger = logging.getLogger(__name__)


def _half(conv: nn.Conv2d, bn: nn.BatchNorm2d, part: slice) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The output channels ``part`` of a conv + BatchNorm pair, as a new pair (weights copied)."""
    width = part.stop - part.start
    half = nn.Conv2d(
        conv.in_channels,
        width,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        bias=conv.bias is not None,
    )
    norm = nn.BatchNorm2d(width, eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        half.weight.copy_(conv.weight[part])
        if conv.bias is not None and half.bias is not None:
            half.bias.copy_(conv.bias[part])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(norm, name).copy_(getattr(bn, name)[part])
    return half.to(conv.weight.device), norm.to(conv.weight.device)


class SplitFreeC2f(nn.Module):
    """A C2f-kin block whose ``cv1`` is two Ultralytics ``Conv`` modules, one per half of its output.

    Forward, as the block it replaces: ``x (N, C_in, H, W) -> cv2(cat([a, b, m_1(b), m_2(m_1(b)), ...]))``, with
    ``a = cv1a(x)`` and ``b = cv1b(x)`` the two halves ``(N, c, H, W)`` that ``cv1(x).chunk(2, 1)`` gave.

    Args:
        block: a C2f or C3k2 (``cv1`` an Ultralytics ``Conv`` of ``2 * c`` outputs, ``m`` the inner blocks,
            ``cv2`` the fuse conv); not changed.
    """

    def __init__(self, block: Any) -> None:
        super().__init__()
        width = block.cv1.conv.out_channels
        if width % 2:
            raise InvalidOptionError(f"{type(block).__name__}: cv1 has {width} channels, which do not split in halves")
        self.c = width // 2
        self.cv1a, self.cv1b = copy.deepcopy(block.cv1), copy.deepcopy(block.cv1)
        for conv, part in ((self.cv1a, slice(0, self.c)), (self.cv1b, slice(self.c, width))):
            conv.conv, conv.bn = _half(block.cv1.conv, block.cv1.bn, part)
        self.cv2, self.m = copy.deepcopy(block.cv2), copy.deepcopy(block.m)
        for attr in ("f", "i", "type", "np"):  # what Ultralytics' model forward reads on every layer
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H, W)``, as the replaced block."""
        y = [self.cv1a(x), self.cv1b(x)]
        y.extend(m(y[-1]) for m in self.m)
        out: torch.Tensor = self.cv2(torch.cat(y, 1))
        return out


def _is_c2f_kin(module: nn.Module) -> bool:
    from ultralytics.nn.modules.block import C2f

    cv1 = getattr(module, "cv1", None)
    return (
        isinstance(module, C2f)
        and type(module).forward is C2f.forward  # C2fAttn, C2fCIB... add inputs or change the forward
        and isinstance(getattr(cv1, "conv", None), nn.Conv2d)
        and isinstance(getattr(cv1, "bn", None), nn.BatchNorm2d)
    )


def _inner(model: Any) -> nn.Module:
    """The module of a ``YOLO`` (or the module given); :mod:`.model` imports this module, so no
    ``detection_model`` here."""
    from ultralytics.engine.model import Model

    inner = model.model if isinstance(model, Model) else model
    if not isinstance(inner, nn.Module):
        raise OptionTypeError(f"split_free: expected an Ultralytics YOLO or its module, got {type(model).__name__}")
    return inner


def split_free(model: Any, *, inplace: bool = False) -> nn.Module:
    """A YOLO's detection model with every C2f / C3k2 block rewritten as :class:`SplitFreeC2f`.

    A deployment step before export to onnxruntime (see module doc): the outputs are those of the model, to
    float rounding. Works on pruned models (the halves of a pruned ``cv1`` stay equal). The rewritten model
    trains in the trainers of :mod:`.trainer` and saves through :func:`~.checkpoint.save`.

    Args:
        model: an Ultralytics ``YOLO`` or its ``DetectionModel`` (any task head).
        inplace: rewrite ``model`` itself (its blocks replaced, its train / eval mode kept) instead of a copy.

    Returns:
        The rewritten inner model: a copy in eval mode, or with ``inplace`` the model's own inner module.

    Raises:
        OptionTypeError: neither a YOLO nor a module.
        InvalidOptionError: a block whose ``cv1`` has an odd width (the message names it).
    """
    inner = _inner(model)
    rewritten = inner if inplace else copy.deepcopy(inner).eval()
    count = 0
    for parent in list(rewritten.modules()):
        for name, child in list(parent.named_children()):
            if _is_c2f_kin(child):
                setattr(parent, name, SplitFreeC2f(child).train(child.training))
                count += 1
    logger.info("split_free: %d C2f-kin blocks rewritten as two convolutions each", count)
    return rewritten


def resolve_split_free(split: bool | None, runtime: str | Runtime | None) -> bool:
    """Whether a pruned YOLO ships split-free: ``split`` as given, or with ``None`` whether ``runtime`` (a name,
    a Runtime, ``None`` for the default) is onnxruntime, where the rewrite saves the layout reorders around every
    ``Split`` (measured in ``benchmarks/runtime_latency.py --only split-free``; eager PyTorch gains nothing).

    Raises:
        OptionTypeError: ``split`` is neither a bool nor ``None``.
    """
    if split is not None and not isinstance(split, bool):
        raise OptionTypeError(f"split_free must be True, False or None, got {split!r}")
    return resolve_runtime(runtime).name == "onnxruntime" if split is None else split


def planning_runtime(runtime: str | Runtime | None, split: bool) -> Runtime:
    """The runtime ``target_latency`` is measured in: ``runtime`` resolved, timing models through
    :func:`split_free` when the model ships split-free (``split``), so that what is measured is what ships.

    Raises:
        InvalidOptionError: ``split`` with a Runtime that has another ``deploy`` rewrite already.
    """
    resolved = resolve_runtime(runtime)
    if not split or resolved.deploy is split_free:
        return resolved
    if resolved.deploy is not None:
        raise InvalidOptionError(
            f"split_free=True and a Runtime whose deploy is {resolved.describe()['deploy']!r}: give one rewrite "
            "(split_free=False to keep the Runtime's own)"
        )
    return dataclasses.replace(resolved, deploy=split_free)
