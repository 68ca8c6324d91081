"""Analytic cost model and budget solver for group channel pruning.

The cost model predicts the parameter count and the conv + linear multiply-accumulates (MACs, the convention of
:func:`grouppruner.profile.count_macs`) of a model after removing a given number of channels from each channel
group, without touching the model. It needs, per convolution / linear layer, the number of output positions seen
in one forward pass (recorded once by :func:`record_positions`), since channel removal never changes spatial sizes.

The solver turns a budget (``target_params`` or ``target_macs``, a fraction of the current model) into per-layer-group
thresholds. How the budget is shared between layer groups: every channel score is divided by the largest score of
its layer group, all channels are ranked by this normalised score (:func:`removal_order`), and the prefix of
that ranking whose removal comes closest to the budget is searched by bisection (:func:`solve_cut`); the threshold of
layer group ``g`` is then ``lam * max_g`` with ``lam`` the normalised score where the prefix ends. After sparse
training each layer group has its own gamma scale (deep, wide stages end with much smaller gammas than the stem),
so a raw global threshold would empty the groups whose gammas are uniformly small, while per-group quantiles at
one common fraction would ignore that sparse training drove some groups much further towards zero than others.
The normalised cut prunes, in every group, the channels that are small *relative to that group's strongest
channels*: a group in which sparse training zeroed 90 % of the channels loses about 90 %, a group with a flat
distribution loses little. That is the per-group behaviour the authors tuned by hand (0.18 ... 0.97 per group on
YOLOv4).

Ties are broken deterministically, one channel at a time: channels with equal scores are ranked by their
relative rank among the equal channels of their own channel group (``(k + 0.5) / t`` for the ``k``-th of ``t``),
then by position. Equal scores are therefore removed evenly across channel groups (each loses the same share of
its tied channels), and a model whose gammas all tie (a fresh, untrained one) is cut uniformly, to within one channel
per group of any target; the ``ratios`` mode ranks ties the same way.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["CostModel", "ModuleCost", "kept_count", "record_positions", "removal_order", "solve_cut"]

logger = logging.getLogger(__name__)


@dataclass
class ModuleCost:
    """Shape facts of one module that determine its parameters and MACs.

    Attributes:
        name: qualified module name.
        kind: ``"conv"``, ``"linear"`` or ``"channelwise"`` (norms and other modules whose parameters all have
            the channel count as first dimension).
        out_channels: output channels (``channelwise``: the channel count).
        in_channels: input channels (``channelwise``: the channel count).
        groups: convolution groups (1 otherwise).
        kernel: product of the kernel size (1 for linear).
        bias: whether the layer has a bias.
        positions: output positions per forward pass (batch included), i.e. MACs per weight element.
        params: current number of parameters of the module itself.
    """

    name: str
    kind: str
    out_channels: int
    in_channels: int
    groups: int
    kernel: int
    bias: bool
    positions: int
    params: int

    @property
    def depthwise(self) -> bool:
        """True for a convolution with one filter per channel (its inputs and outputs shrink together)."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def cost(self, removed_out: int, removed_in: int, add_bias: bool = False) -> tuple[int, int]:
        """Parameters and MACs after removing ``removed_out`` output and ``removed_in`` input channels.

        Args:
            removed_out: output channels removed.
            removed_in: input channels removed.
            add_bias: the layer gains a bias (beta folding into a bias-free layer without a following BN).

        Returns:
            ``(params, macs)`` of this module after removal.
        """
        if self.kind == "channelwise" or self.depthwise:
            channels = self.out_channels - max(removed_out, removed_in)
            if self.kind == "channelwise":
                return self.params * channels // max(self.out_channels, 1), 0
            weight = channels * self.kernel
            return weight + (channels if self.bias or add_bias else 0), weight * self.positions
        out = self.out_channels - removed_out
        inp = self.in_channels - removed_in
        weight = out * (inp // self.groups) * self.kernel
        bias = out if (self.bias or add_bias) else 0
        return weight + bias, weight * self.positions


def _call(model: nn.Module, inputs: Any, forward_fn: Callable[[nn.Module, Any], Any] | None) -> Any:
    if forward_fn is not None:
        return forward_fn(model, inputs)
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


def _meta_call(model: nn.Module, example_inputs: Any) -> None:
    """Run ``model`` on the meta device: shapes only, no compute, no activation memory."""

    def to_meta(value: Any) -> Any:
        return value.to("meta") if isinstance(value, torch.Tensor) else value

    state = {n: torch.empty_like(t, device="meta") for n, t in model.named_parameters(remove_duplicate=False)}
    state.update({n: torch.empty_like(t, device="meta") for n, t in model.named_buffers(remove_duplicate=False)})
    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (to_meta(example_inputs),)
        kwargs: dict[str, Any] = {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), {k: to_meta(v) for k, v in example_inputs.items()}
    else:
        args, kwargs = tuple(to_meta(v) for v in example_inputs), {}
    torch.func.functional_call(model, state, args, kwargs, strict=False)


def record_positions(
    model: nn.Module,
    example_inputs: Any,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
) -> tuple[dict[str, int], dict[str, str]]:
    """Trace ``model`` once (eval mode, no autograd) and record what channel pruning cannot change.

    The pass runs on the meta device when possible (shapes only: no compute and no activation memory) and
    falls back to a real forward pass (always with ``forward_fn``, or when an op has no meta kernel).

    Args:
        model: the model.
        example_inputs: a tensor such as (N, 3, H, W), a tuple of positional inputs or a dict of keyword inputs.
        forward_fn: optional ``forward_fn(model, example_inputs)`` used instead of calling the model.

    Returns:
        ``(positions, successor_bn)``: output positions per weight element of every conv / linear layer
        (``N * H_out * W_out`` for a 2-d conv), and for every conv / linear layer whose output tensor goes straight
        into a BatchNorm, that BatchNorm's name.
    """
    names = {module: name for name, module in model.named_modules()}
    positions: dict[str, int] = {}
    outputs: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}
    successor: dict[str, str] = {}
    handles = []

    def on_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        name = names[module]
        if name in positions or not isinstance(output, torch.Tensor):
            return
        channels = output.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else output.shape[-1]
        positions[name] = output.numel() // max(int(channels), 1)
        outputs[id(output)] = (weakref.ref(output), name)

    def on_bn_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and id(args[0]) in outputs:
            # The weak reference tells a live producer output from a new tensor that reuses a freed id.
            ref, producer = outputs[id(args[0])]
            if ref() is args[0] and producer not in successor:
                successor[producer] = names[module]

    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(module.register_forward_hook(on_output))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(on_bn_input))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # Shapes on the meta device cost no arithmetic; a custom forward_fn may not run there.
            traced = False
            if forward_fn is None:
                try:
                    _meta_call(model, example_inputs)
                    traced = True
                except (NotImplementedError, RuntimeError, TypeError, ValueError) as error:
                    logger.debug("shape trace on the meta device failed (%s); running a real forward pass", error)
                    positions.clear()
                    outputs.clear()
                    successor.clear()
            if not traced:
                _call(model, example_inputs, forward_fn)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return positions, successor


class CostModel:
    """Predicts parameters and MACs of a model after channel removal, from shapes alone.

    Args:
        model: the model in its current (possibly already pruned) state.
        positions: output positions per conv / linear layer, from :func:`record_positions`.
    """

    def __init__(self, model: nn.Module, positions: Mapping[str, int]) -> None:
        self.modules: dict[str, ModuleCost] = {}
        for name, module in model.named_modules():
            own = sum(p.numel() for p in module.parameters(recurse=False))
            if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
                kernel = math.prod(module.kernel_size)
                self.modules[name] = ModuleCost(
                    name,
                    "conv",
                    module.out_channels,
                    module.in_channels,
                    module.groups,
                    kernel,
                    module.bias is not None,
                    positions.get(name, 0),
                    own,
                )
            elif isinstance(module, nn.Linear):
                self.modules[name] = ModuleCost(
                    name,
                    "linear",
                    module.out_features,
                    module.in_features,
                    1,
                    1,
                    module.bias is not None,
                    positions.get(name, 0),
                    own,
                )
            elif own > 0:
                first = next(module.parameters(recurse=False))
                channels = int(first.shape[0]) if first.dim() > 0 else 1
                self.modules[name] = ModuleCost(name, "channelwise", channels, channels, 1, 1, False, 0, own)
        self.params = sum(p.numel() for p in model.parameters())
        self.macs = sum(m.cost(0, 0)[1] for m in self.modules.values())

    def predict(
        self,
        removed: Mapping[tuple[str, str], int],
        add_bias: Sequence[str] = (),
    ) -> tuple[int, int]:
        """Parameters and MACs of the whole model after a removal.

        Args:
            removed: number of channels removed per ``(module name, dim)`` with dim ``"out"`` or ``"in"``.
            add_bias: modules that gain a bias through beta folding.

        Returns:
            ``(params, macs)`` of the pruned model.
        """
        params, macs = self.params, self.macs
        touched = {name for name, _ in removed} | set(add_bias)
        for name in touched:
            module = self.modules.get(name)
            if module is None:
                continue
            before_params, before_macs = module.cost(0, 0)
            after_params, after_macs = module.cost(
                removed.get((name, "out"), 0), removed.get((name, "in"), 0), name in add_bias
            )
            params += after_params - before_params
            macs += after_macs - before_macs
        return params, macs


def kept_count(raw: int, size: int, min_channels: int, round_to: int | None) -> int:
    """Channels a channel group keeps once the hard rules are applied.

    Args:
        raw: channels whose score passes the threshold.
        size: channels in the group.
        min_channels: per-layer minimum (a group smaller than this keeps everything).
        round_to: if given, the kept count is rounded up to a multiple of it (or to ``size`` if that is smaller).

    Returns:
        The number of channels to keep, in ``[min(size, min_channels), size]``.
    """
    kept = max(raw, min(size, min_channels))
    if round_to is not None and round_to > 1:
        kept = min(size, -(-kept // round_to) * round_to)
    return kept


def removal_order(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Order in which the channels of several channel groups go: lowest score first, ties spread evenly.

    Channels with equal scores are ranked by ``(k + 0.5) / t``, where ``k`` is the channel's rank (by index)
    among the ``t`` channels of its own channel group that have this score, and then by position in the
    concatenation. Removing any prefix of the order therefore takes tied channels from every channel group in
    proportion to how many it has, deterministically.

    Args:
        scores: per channel group its channel scores, shape (size_i,).

    Returns:
        A permutation of ``range(sum(size_i))`` (int64, shape (sum(size_i),)): indices into
        ``np.concatenate(scores)``, in removal order.
    """
    if not scores:
        return np.zeros(0, dtype=np.int64)
    spread = []
    for score in scores:
        order = np.argsort(score, kind="stable")
        ordered = score[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        lengths = np.diff(np.r_[starts, len(ordered)])
        run_start = np.repeat(starts, lengths)
        key = np.empty(len(score))
        key[order] = (np.arange(len(ordered)) - run_start + 0.5) / np.repeat(lengths, lengths)
        spread.append(key)
    pooled = np.concatenate(scores)
    return np.lexsort((np.arange(len(pooled)), np.concatenate(spread), pooled)).astype(np.int64)


def solve_cut(
    evaluate: Callable[[float], float],
    candidates: np.ndarray,
    target: float,
) -> tuple[float, float]:
    """Find the candidate cut whose predicted cost is closest to ``target`` (bisection over sorted candidates).

    ``evaluate(cut)`` must be non-increasing in ``cut`` (a higher cut removes more channels). The budget solver
    passes the prefix lengths ``0 .. N`` of :func:`removal_order` as candidates.

    Args:
        evaluate: predicted cost (e.g. parameters) for a cut.
        candidates: sorted ascending array of cuts, shape (K,).
        target: the cost to reach.

    Returns:
        ``(cut, cost)``: the chosen cut and its predicted cost. When even the last candidate costs more than
        ``target``, that candidate.
    """
    lo, hi = 0, len(candidates) - 1
    # Find the first candidate whose cost is <= target (the last one if none is), then compare with the one before.
    while lo < hi:
        mid = (lo + hi) // 2
        if evaluate(float(candidates[mid])) <= target:
            hi = mid
        else:
            lo = mid + 1
    best_cut = float(candidates[lo])
    best_cost = evaluate(best_cut)
    if lo > 0:
        previous = float(candidates[lo - 1])
        previous_cost = evaluate(previous)
        if abs(previous_cost - target) < abs(best_cost - target):
            return previous, previous_cost
    return best_cut, best_cost
