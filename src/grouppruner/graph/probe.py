"""The build-time probe: remove one channel from every prunable group together and run the model once.

A group may look prunable to the dependency graph and still break the forward once it shrinks: a module that
reads its channel count from its input (``n, c, h, w = x.shape``) and reshapes another tensor with it, a split
whose sizes are constants in ``forward()``. No rule over the traced graph finds every such case; running the
model finds them all. The probe removes one channel of every prunable group at once and runs the example inputs
through the model; only when that fails does it bisect (:func:`find_breaking`) to the groups that break it.

The trial runs on the model itself, with its parameters and buffers swapped for storage-free meta tensors and a
:class:`~grouppruner._utils.modules.ModuleSnapshot` putting every module back afterwards: no weight is copied and
no conv computes, so a trial costs a small fraction of the traced build. A model whose forward does not run on the
meta device (data-dependent control flow, tensors made on the CPU inside ``forward()``) is probed with its real
weights instead, at the cost of one forward per trial.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._utils.calls import call_model, eval_mode
from .._utils.modules import ModuleSnapshot
from . import tracing

__all__ = ["Trial", "find_breaking", "make_trial"]

logger = logging.getLogger(__name__)

Trial = Callable[[Sequence[int]], str | None]
"""``trial(group indices) -> None`` when the forward runs with one channel fewer in each, else the error."""


def find_breaking(trial: Trial, ids: Sequence[int], suspects: Sequence[int] = ()) -> dict[int, str]:
    """The groups among ``ids`` whose removal breaks the forward, each with the error it gives.

    One trial when nothing breaks. Otherwise a bisection that keeps every group it can: the returned groups are
    such that removing one channel of each of the others, all together, passes; each culprit's error is that of a
    trial whose other members pass together. About ``2 log2(n)`` trials per culprit, ``n`` being ``len(ids)``, or
    ``len(suspects)`` when the others pass together without them (one more trial).

    Args:
        trial: see :data:`Trial`; ``trial([])`` is assumed to pass.
        ids: candidate group indices.
        suspects: the likely culprits among ``ids`` (groups behind a split or slice), searched first.

    Returns:
        ``{group index: error message}`` of the groups to fix.
    """
    first = trial(list(ids))
    if first is None:
        return {}
    culprits: dict[int, str] = {}
    likely = [i for i in ids if i in set(suspects)]
    others = [i for i in ids if i not in set(suspects)]

    def search(candidates: list[int], base: list[int], error: str) -> None:
        # trial(base) passes, trial(base + candidates) fails with `error`
        if len(candidates) == 1:
            culprits[candidates[0]] = error
            return
        half = len(candidates) // 2
        left, right = candidates[:half], candidates[half:]
        err = trial(base + left)
        if err is not None:
            search(left, base, err)
        kept = [i for i in left if i not in culprits]
        err = trial(base + kept + right)
        if err is not None:
            search(right, base + kept, err)

    if likely and others and trial(others) is None:
        search(likely, others, first)
    else:
        search(list(ids), [], first)
    return culprits


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, tuple | list):
        return type(value)(_to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    return value


# Exact types whose forward keeps the input's shape and reads no channel count: on the meta device their
# kernels run as Python decompositions (about 1 ms a call against 0.07 ms for a conv), which would make the meta
# forward of YOLOv4 cost a quarter of the whole build; in a probe they pass their input through.
_SAME_SHAPE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.Mish,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
_BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _pass_through(x: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
    return x


def _batch_norm_shape(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """An eval-mode BatchNorm on the meta device: the channel check of the real kernel, no decomposition."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        mean = module.running_mean
        width = int(mean.shape[0]) if isinstance(mean, torch.Tensor) else -1
        if x.dim() < 2 or x.shape[1] != width:
            raise RuntimeError(  # torch's own kernel error, imitated inside the probe's forward
                f"running_mean should contain {x.shape[1] if x.dim() > 1 else '?'} elements not {width}"
            )
        return x

    return forward


def _swap_to_meta(model: nn.Module) -> None:
    """Replace every parameter and buffer by a meta tensor of its shape (undone by the caller's snapshot).

    The model must be in eval mode: eval-mode BatchNorm and the shape-keeping activations of ``torch.nn`` get a
    shape-only forward (see ``_SAME_SHAPE``).
    """
    for module in model.modules():
        for key, p in module._parameters.items():
            if p is not None:
                module._parameters[key] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for key, b in module._buffers.items():
            if b is not None:
                module._buffers[key] = torch.empty_like(b, device="meta")
        kind = type(module)
        if kind in _SAME_SHAPE and not module._forward_pre_hooks:
            module.forward = _pass_through
        elif kind in _BATCH_NORMS and not module.training and module.track_running_stats:
            module.forward = _batch_norm_shape(module)


def make_trial(
    model: nn.Module,
    remove_one: Callable[[Sequence[int]], None],
    example_inputs: Any,
    forward_fn: Callable[[nn.Module, Any], Any] | None,
    output_transform: Callable[[Any], Any] | None,
    output_shapes: list[tuple[int, ...]],
) -> Trial:
    """A :data:`Trial` on ``model``: ``remove_one(ids)`` removes one channel of each group, then the model runs.

    ``remove_one`` must act on the model's modules (and on copies of the graph's bookkeeping); the model is
    restored after each trial. The first trial tells whether the model runs on the meta device; if it does not
    (even unpruned), every trial uses the real weights.
    """
    meta_runs: list[bool] = []  # [] until known: whether the unpruned model runs on the meta device

    def run(ids: Sequence[int], meta: bool) -> str | None:
        snapshot = ModuleSnapshot(model)
        try:
            if meta:
                with eval_mode(model):
                    _swap_to_meta(model)
            remove_one(ids)  # on meta weights when meta: the removal copies no weight either
            with eval_mode(model), torch.no_grad():
                out = call_model(model, _to_meta(example_inputs) if meta else example_inputs, forward_fn)
                if output_transform is not None:
                    out = output_transform(out)
            shapes = [tuple(t.shape) for t in tracing.flat_tensors(out)]
        except Exception as err:
            return str(err.__cause__ or err)
        finally:
            snapshot.restore()
        return None if shapes == output_shapes else f"output shapes change from {output_shapes} to {shapes}"

    def trial(ids: Sequence[int]) -> str | None:
        if meta_runs == [False]:
            return run(ids, meta=False)
        err = run(ids, meta=True)
        if err is None or meta_runs == [True]:
            return err
        # A failure on meta: the pruning's, or the meta device's? The unpruned model on meta tells.
        base = run([], meta=True)
        meta_runs.append(base is None)
        if base is None:
            return err
        logger.debug("the forward does not run on the meta device (%s); probing with real weights", base)
        return run(ids, meta=False)

    return trial
