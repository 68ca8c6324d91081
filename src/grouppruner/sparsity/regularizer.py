"""The regularizer: :class:`BNSparsity` adds a scheduled L1 term to the gradients of BatchNorm scales.

It takes its channels from :mod:`.targets` and its rate from a schedule of :mod:`.schedules`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.amp.grad_scaler import OptState

from .._utils.errors import InvalidOptionError, ModelChangedError, NonFiniteError, OptionTypeError, UsageError
from .._utils.wrappers import inner_name, unwrap
from .schedules import Constant, FloatArray, IndexArray, Schedule, check_total_steps
from .targets import (
    DEFAULT_NORM_TYPES,
    ExcludeSpec,
    LayerGroupsSpec,
    Layers,
    layers_from_graph,
    layers_from_model,
    norm_weight,
)

if TYPE_CHECKING:
    from ..graph import ChannelGraph

logger = logging.getLogger(__name__)

__all__ = ["BNSparsity", "LayerGroupStats"]


@dataclass(frozen=True)
class LayerGroupStats:
    """Sparsity statistics of one layer group.

    Attributes:
        channels: number of regularized channels in the group.
        rate: mean rate the next :meth:`BNSparsity.step` applies to them (uniform unless ``Dynamic`` is active).
        below: fraction of them with ``|gamma| < threshold``.
        mean_abs: mean ``|gamma|``.
    """

    channels: int
    rate: float
    below: float
    mean_abs: float


class BNSparsity:
    """Scheduled L1 regularizer on BatchNorm scales, applied to gradients in one vectorized pass.

    Args:
        target: a :class:`~grouppruner.graph.ChannelGraph` (regularize exactly the BatchNorm channels that score
            prunable channel groups; protected channels are never touched), or a model (every affine BatchNorm;
            a ``DistributedDataParallel`` / ``DataParallel`` wrapper is unwrapped). Either way, frozen BatchNorms
            (``requires_grad=False``) are skipped with a warning.
        schedule: a :class:`Schedule`, or a float for ``Constant(s)``.
        exclude: BatchNorms to leave alone: modules, qualified names (a name also covers its submodules) or glob
            patterns on module names.
        layer_groups: how channels are partitioned for :meth:`stats` and ``Dynamic(scope="group")``. With a
            graph: passed to ``graph.layer_groups(by=...)`` (``None``: the graph's automatic grouping). With a
            model: ``{group: [glob patterns on BatchNorm names]}`` (first match wins) or a callable
            ``bn_name -> group``; ``None``: one group ``"all"``.
        total_steps: the run length for a schedule that has none.
        scaler: the ``torch.amp.GradScaler`` of the training loop, if any. :meth:`step` always acts on
            *unscaled* gradients: call it after ``scaler.unscale_(optimizer)`` and before gradient clipping and
            ``scaler.step``. With the scaler given, :meth:`step` checks that order (it refuses scaled gradients,
            which would multiply the rate by the loss scale) and leaves non-finite gradients to the scaler, which
            skips the step.
        check_finite: raise :class:`NonFiniteError` on NaN/inf in gammas or their gradients (one host sync).
        advance_schedule: :meth:`step` advances the schedule by one; set ``False`` to drive the schedule
            yourself (e.g. ``sparsity.schedule.step()`` once per epoch).

    The regularizer works on its own copy of ``schedule`` (:attr:`schedule`): the object passed in is never
    advanced or modified, so one schedule object can configure several runs. Who advances :attr:`schedule`:
    :meth:`step` does, once per call (unless ``advance_schedule=False``); :meth:`penalty` never does, so a loop
    that uses the loss-term form calls ``sparsity.schedule.step()`` once per optimizer step.
        norm_types: the norm classes whose per-channel ``weight`` is regularized; BatchNorm only by default.
            ``(nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)`` also sparsifies GroupNorm towers and channels-first
            LayerNorms (ConvNeXt), whose scales :class:`~grouppruner.pruning.NormScaleImportance` then ranks.

    Raises:
        ValueError: no BatchNorm to regularize, a non-affine BatchNorm, unknown ``exclude`` names.
    """

    def __init__(
        self,
        target: ChannelGraph | nn.Module,
        *,
        schedule: Schedule | float,
        exclude: ExcludeSpec = (),
        layer_groups: LayerGroupsSpec = None,
        total_steps: int | None = None,
        scaler: torch.amp.GradScaler | None = None,
        check_finite: bool = True,
        advance_schedule: bool = True,
        norm_types: Sequence[type[nn.Module]] = DEFAULT_NORM_TYPES,
    ) -> None:
        norm_types = tuple(norm_types)
        if not norm_types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in norm_types):
            raise OptionTypeError(f"BNSparsity: norm_types must be nn.Module classes, got {norm_types!r}")
        # A copy: the caller's schedule object is theirs and is never advanced or written to.
        self.schedule = copy.deepcopy(schedule) if isinstance(schedule, Schedule) else Constant(float(schedule))
        if total_steps is not None:
            if self.schedule.total_steps not in (None, total_steps):
                raise InvalidOptionError(
                    f"BNSparsity: total_steps={total_steps} conflicts with the schedule's {self.schedule.total_steps}"
                )
            check_total_steps(type(self.schedule).__name__, total_steps)
            self.schedule.total_steps = total_steps
        if self.schedule.needs_total_steps:
            self.schedule.progress(0)  # fail now, not at the first step
        self.scaler = scaler
        self.check_finite = check_finite
        self.advance_schedule = advance_schedule

        if isinstance(target, nn.Module):
            model = unwrap(target)
            exclude = [inner_name(target, e) if isinstance(e, str) else e for e in exclude]
            layers, names = layers_from_model(model, exclude, layer_groups, norm_types)
        else:
            # imported here so that plain-model users never pay for the graph machinery
            from ..graph import ChannelGraph

            if not isinstance(target, ChannelGraph):
                raise OptionTypeError(f"BNSparsity target must be a ChannelGraph or an nn.Module, got {type(target)!r}")
            model = unwrap(target.model)
            layers, names = layers_from_graph(target, model, exclude, layer_groups, norm_types)
        self._build(layers, names)
        logger.info(
            "BNSparsity: %d of %d channels in %d BatchNorms, %d layer groups, schedule %r",
            self.num_channels,
            self._numel,
            len(self.layer_names),
            len(names),
            self.schedule,
        )

    # ------------------------------------------------------------------ construction
    def _build(self, layers: Layers, group_names: list[str]) -> None:
        # layer groups without a regularized BN channel (e.g. only BN-free convs, or all excluded) are dropped
        used = sorted({g for _, _, owners in layers for g in owners if g >= 0})
        renumber = {old: new for new, old in enumerate(used)}
        layers = [(n, bn, [renumber.get(g, -1) for g in owners]) for n, bn, owners in layers]
        self.layer_names: tuple[str, ...] = tuple(name for name, _, _ in layers)
        self.layer_group_names: tuple[str, ...] = tuple(group_names[g] for g in used)
        # modules, not parameters: pruning replaces the Parameter objects, and the size check must see that
        self._bns: list[nn.Module] = [bn for _, bn, _ in layers]
        self._sizes: list[int] = [int(norm_weight(bn).numel()) for bn in self._bns]
        self._numel = sum(self._sizes)
        owner = np.array([g for _, _, owners in layers for g in owners], dtype=np.int64)  # (N,) -1: protected
        self._reg_index: IndexArray = np.flatnonzero(owner >= 0)  # (N_reg,) regularized flat positions
        self._group_ids: IndexArray = owner[self._reg_index]  # (N_reg,) layer group of each
        self._group_index = [np.flatnonzero(self._group_ids == g) for g in range(len(used))]
        self._full = self._reg_index.size == self._numel
        self._host_mask = self._mask_host()  # (N,) 1 on regularized, 0 on protected channels
        # only layers with protected channels need a mask in the hot path
        self._partial = [i for i, (_, _, owners) in enumerate(layers) if min(owners) < 0]
        self._partial_masks = [
            torch.tensor([float(g >= 0) for g in layers[i][2]], dtype=norm_weight(self._bns[i]).dtype)
            for i in self._partial
        ]

    @property
    def num_channels(self) -> int:
        """Number of regularized channels."""
        return int(self._reg_index.size)

    def __repr__(self) -> str:
        return (
            f"BNSparsity({self.num_channels} channels in {len(self.layer_names)} BatchNorms, "
            f"{len(self.layer_group_names)} layer groups, schedule={self.schedule!r})"
        )

    def _gammas(self) -> list[Tensor]:
        gammas: list[Tensor] = [norm_weight(bn) for bn in self._bns]
        if [g.shape[0] for g in gammas] != self._sizes:
            raise ModelChangedError(
                "BatchNorm sizes changed since BNSparsity was built (was the model pruned?); build a new one"
            )
        return gammas

    def _host(self, tensors: list[Tensor]) -> FloatArray:
        """The tensors concatenated into one float32 host array: ``(N,)`` for gammas, ``(2N,)`` with grads.

        One ``cat`` and one copy; the per-channel math then runs in NumPy, single-threaded, so the regularizer
        never waits on the intra-op thread pool (which stalls badly when the cores are oversubscribed).
        """
        with torch.no_grad():
            flat = torch.cat(tensors)
            if flat.dtype != torch.float32:
                flat = flat.float()
            host: FloatArray = flat.cpu().numpy()
        return host

    def _uniform(self) -> bool:
        return type(self.schedule).channel_factors is Schedule.channel_factors

    def _factors(self, host_gammas: FloatArray) -> FloatArray | None:
        """``(N,)`` float32 rate multiplier per tracked channel (0 on protected ones), ``None`` when uniform.

        Args:
            host_gammas: ``(N,)`` the gammas as a host array (from :meth:`_host`).
        """
        if self._uniform():
            return None
        if self._full:
            return self.schedule.channel_factors(np.abs(host_gammas), self._group_index)
        reg = self._reg_index
        factors = self.schedule.channel_factors(np.abs(host_gammas[reg]), self._group_index)
        if factors is None:
            return None
        out = np.zeros(self._numel, dtype=np.float32)
        out[reg] = factors
        return out

    def _mask_host(self) -> FloatArray:
        mask = np.zeros(self._numel, dtype=np.float32)
        mask[self._reg_index] = 1.0
        return mask

    # ------------------------------------------------------------------ hot path
    def step(self) -> None:
        """Add ``rate * sign(gamma)`` to the gamma gradients, then advance the schedule.

        Call once per optimizer step, on unscaled gradients: after the (last accumulated) ``backward()`` and
        ``scaler.unscale_(optimizer)`` (with mixed precision), before gradient clipping and ``optimizer.step()`` /
        ``scaler.step(optimizer)``. The gradient of every gamma then grows by exactly ``rate * sign(gamma)``,
        whatever the loss scale. Under DDP every rank computes the same update from identical gammas, so
        replicas stay identical.

        The update is built on one flat host copy of all gammas (the copy the finite check makes anyway) and
        added to the per-layer gradients by one ``torch._foreach_add_``: a constant number of kernels per step,
        however many BatchNorms there are, so that the cost holds on an oversubscribed machine. Without the
        finite check, a few ``torch._foreach_*`` kernels over the per-layer tensors do the same.

        Raises:
            UsageError: no gradient yet (``step()`` before ``backward()``), some BatchNorm got none, or the
                gradients are still scaled (a scaler was given and no optimizer was unscaled).
            ModelChangedError: the BatchNorms changed size since construction (the model was pruned).
            NonFiniteError: NaN/inf in a gamma, or in a gradient when no scaler handles overflow.
        """
        gammas = self._gammas()
        maybe_grads = [p.grad for p in gammas]
        if any(g is None for g in maybe_grads):
            self._raise_missing_grads(maybe_grads)
        grads: list[Tensor] = maybe_grads  # type: ignore[assignment]  # None ruled out above
        scaled = self.scaler is not None and self.scaler.is_enabled()
        if scaled:
            _check_unscaled(self.scaler)  # type: ignore[arg-type]  # not None when scaled
        with torch.no_grad():
            host = self._host(gammas + grads) if self.check_finite else None
            if host is not None:
                self._check_finite(host, scaled)
            rate = self.schedule.rate()
            host_gammas = host[: self._numel] if host is not None else None
            if host_gammas is None and not self._uniform():
                host_gammas = self._host(gammas)
            factors = None if host_gammas is None else self._factors(host_gammas)
            if factors is not None and host_gammas is not None:
                # per-channel rates: the update is built on the host gammas, one copy to the device
                update = torch.from_numpy(np.sign(host_gammas) * factors).to(gammas[0].device)
                torch._foreach_add_(grads, torch.split(update, self._sizes), alpha=rate)
            elif host_gammas is not None:
                # The host copy made for the finite check already holds the gammas: one sign over the flat array
                # and one fused add, instead of a sign, a mask and an add kernel per BatchNorm. Each small kernel
                # is cheap alone, but ~3 per BN is hundreds of dispatches per step, and on an oversubscribed
                # machine every one of them can wait for a core.
                signs_host = np.sign(host_gammas)
                if self._partial:
                    signs_host *= self._host_mask
                update = torch.from_numpy(signs_host).to(device=gammas[0].device, dtype=grads[0].dtype)
                torch._foreach_add_(grads, torch.split(update, self._sizes), alpha=rate)
            else:
                signs = torch._foreach_sign(gammas)
                if self._partial:
                    torch._foreach_mul_([signs[i] for i in self._partial], self._masks_on(gammas[0].device))
                torch._foreach_add_(grads, signs, alpha=rate)
        if self.advance_schedule:
            self.schedule.step()

    def _masks_on(self, device: torch.device) -> list[Tensor]:
        if self._partial_masks[0].device != device:
            self._partial_masks = [m.to(device) for m in self._partial_masks]
        return self._partial_masks

    def _check_finite(self, host: FloatArray, scaled: bool) -> None:
        """``host``: ``(2N,)`` gammas then gradients. Non-finite gradients are the scaler's business."""
        n = self._numel
        if not np.isfinite(host[:n]).all():
            self._raise_nonfinite(host[:n], "gamma")
        if not scaled and not np.isfinite(host[n:]).all():
            self._raise_nonfinite(host[n:], "gradient of gamma")

    def penalty(self) -> Tensor:
        """The same regularizer as a loss term: ``sum(rate * |gamma|)``, a differentiable 0-d tensor.

        Its gradient equals what :meth:`step` adds. Add it to the loss (under a ``GradScaler`` it is scaled with
        the loss) and advance the schedule yourself: ``sparsity.schedule.step()`` once per optimizer step.
        With gradient accumulation add ``penalty() / accumulation_steps`` to each micro-batch loss.
        """
        gammas = self._gammas()
        factors = None if self._uniform() else self._factors(self._host(gammas))
        if factors is None and self._partial:
            factors = self._mask_host()
        flat = torch.cat(gammas)
        rate = self.schedule.rate()
        if factors is None:
            return flat.abs().sum() * rate
        weights = torch.from_numpy(factors).to(device=flat.device, dtype=flat.dtype)
        return (flat.abs() * weights).sum() * rate

    # ------------------------------------------------------------------ errors
    def _raise_missing_grads(self, grads: Sequence[Tensor | None]) -> None:
        missing = [n for n, g in zip(self.layer_names, grads, strict=True) if g is None]
        if len(missing) == len(grads):
            raise UsageError(
                "BNSparsity.step() called before backward(): no BatchNorm scale has a gradient "
                "(call it after loss.backward() and before optimizer.step())"
            )
        raise UsageError(
            f"BNSparsity.step(): no gradient for {len(missing)} BatchNorm(s), e.g. {missing[:5]}; they were not "
            "used in the forward pass. Pass them in exclude=."
        )

    def _raise_nonfinite(self, host: FloatArray, what: str) -> None:
        ends = np.cumsum(self._sizes)
        bad_positions = np.flatnonzero(~np.isfinite(host))
        bad = list(dict.fromkeys(self.layer_names[i] for i in np.searchsorted(ends, bad_positions, side="right")))
        raise NonFiniteError(
            f"non-finite {what} in BatchNorm {bad[0]!r}"
            + (f" (and {len(bad) - 1} more: {bad[1:6]})" if len(bad) > 1 else "")
            + "; stopped before the optimizer step"
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Schedule state and the regularized layer names (checked on load)."""
        return {
            "schedule": self.schedule.state_dict(),
            "layers": list(self.layer_names),
            "num_channels": self.num_channels,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: restores the schedule exactly (the gammas come from the model's own state_dict)."""
        if list(state["layers"]) != list(self.layer_names) or state["num_channels"] != self.num_channels:
            raise InvalidOptionError(
                "BNSparsity state is for a different set of BatchNorm channels "
                f"({len(state['layers'])} layers / {state['num_channels']} channels, "
                f"here {len(self.layer_names)} / {self.num_channels})"
            )
        self.schedule.load_state_dict(state["schedule"])

    # ------------------------------------------------------------------ inspection
    def stats(self, threshold: float = 1e-2) -> dict[str, LayerGroupStats]:
        """Per layer group: channel count, current mean rate, fraction of ``|gamma| < threshold``, mean |gamma|.

        One host copy of the gammas and a few NumPy reductions: cheap enough to log every N steps.
        """
        gammas = self._gammas()
        host = self._host(gammas)
        abs_reg = np.abs(host[self._reg_index]).astype(np.float64)
        factors = self._factors(host)
        factor_reg = np.ones_like(abs_reg) if factors is None else factors[self._reg_index].astype(np.float64)
        n = len(self.layer_group_names)
        ids = self._group_ids
        count = np.bincount(ids, minlength=n).astype(np.float64)
        denominator = np.maximum(count, 1.0)
        # mean factor first, then the rate: a uniform rate comes out exactly, without summation noise
        rate = self.schedule.rate() * (np.bincount(ids, weights=factor_reg, minlength=n) / denominator)
        below = np.bincount(ids, weights=(abs_reg < threshold).astype(np.float64), minlength=n) / denominator
        mean_abs = np.bincount(ids, weights=abs_reg, minlength=n) / denominator
        return {
            name: LayerGroupStats(int(count[g]), float(rate[g]), float(below[g]), float(mean_abs[g]))
            for g, name in enumerate(self.layer_group_names)
        }

    def gammas(self) -> dict[str, Tensor]:
        """Per layer group: ``(C_g,)`` float32 CPU copy of the regularized gammas (e.g. for plotting)."""
        gammas = self._gammas()
        with torch.no_grad():
            flat = torch.cat(gammas).float().cpu()
        reg = flat[torch.from_numpy(self._reg_index)]
        ids = torch.from_numpy(self._group_ids)
        return {name: reg[ids == g].clone() for g, name in enumerate(self.layer_group_names)}


def _check_unscaled(scaler: torch.amp.GradScaler) -> None:
    """Refuse scaled gradients: the L1 term added to them would be divided by the loss scale at unscale time.

    ``GradScaler`` records per optimizer whether ``unscale_`` ran since the last ``update()``; it has no public
    accessor, so the private table is read, and a scaler without it (a custom subclass) is trusted.
    """
    states = getattr(scaler, "_per_optimizer_states", None)
    if states is None:
        return
    if not any(state.get("stage") is OptState.UNSCALED for state in states.values()):
        raise UsageError(
            "BNSparsity.step() got scaled gradients: call scaler.unscale_(optimizer) first, then "
            "sparsity.step(), then gradient clipping and scaler.step(optimizer)"
        )
