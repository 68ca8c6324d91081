"""Rate schedules of the BatchNorm L1 regularizer, in the style of ``torch.optim.lr_scheduler``.

:class:`Constant`, :class:`Linear`, :class:`Cosine`, :class:`Step` and :class:`Dynamic` (the paper's rule: constant
``s`` first, then the strongest channels get only ``decay * s``). :class:`~grouppruner.sparsity.BNSparsity` asks a
schedule for the rate at each step (and, for :class:`Dynamic`, for per-channel factors).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from .._utils.errors import InvalidOptionError, LayerNotFoundError

__all__ = [
    "Constant",
    "Cosine",
    "Dynamic",
    "FloatArray",
    "IndexArray",
    "Linear",
    "Schedule",
    "Step",
    "check_total_steps",
]

FloatArray: TypeAlias = npt.NDArray[np.float32]
IndexArray: TypeAlias = npt.NDArray[np.int64]


class Schedule(ABC):
    """Base class of the rate schedules, in the style of ``torch.optim.lr_scheduler``.

    A schedule maps the step counter ``last_step`` (number of completed :meth:`step` calls) to the rate ``s`` of
    the L1 term. Schedules that depend on the training progress need ``total_steps`` (the number of times
    :meth:`step` will be called over the whole run: optimizer steps, or epochs when driven per epoch); it can
    also be given to :class:`BNSparsity`.

    Args:
        total_steps: length of the run in steps; ``None`` until known.
    """

    #: whether the rate depends on ``total_steps``
    needs_total_steps: bool = True

    def __init__(self, *, total_steps: int | None = None) -> None:
        if total_steps is not None:
            check_total_steps(type(self).__name__, total_steps)
        self.total_steps = total_steps
        self.last_step = 0

    def step(self) -> None:
        """Advance the counter by one (once per optimizer step, or once per epoch)."""
        self.last_step += 1

    def rate(self) -> float:
        """The base rate at the current step."""
        return self.rate_at(self.last_step)

    @abstractmethod
    def rate_at(self, step: int) -> float:
        """The base rate ``s`` at step ``step`` (0-based; clamped to the end of the run past ``total_steps``)."""

    def progress(self, step: int) -> float:
        """Fraction of the run completed before ``step``, in [0, 1]."""
        if self.total_steps is None:
            raise InvalidOptionError(
                f"{type(self).__name__} needs total_steps: pass it to the schedule or to BNSparsity(total_steps=)"
            )
        return min(max(step, 0) / self.total_steps, 1.0)

    def channel_factors(self, abs_gamma: FloatArray, groups: Sequence[IndexArray]) -> FloatArray | None:
        """Per-channel multipliers of the base rate at the current step, or ``None`` when uniform.

        Works on host NumPy arrays: single-threaded, so it never waits on a busy intra-op thread pool.

        Args:
            abs_gamma: ``(N,)`` float32 |gamma| of the regularized channels.
            groups: one ``(N_g,)`` int64 index array into ``abs_gamma`` per layer group (a partition).

        Returns:
            ``(N,)`` float32 factors, or ``None``.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """Counter and hyper-parameters (plain Python values, loadable with ``weights_only=True``)."""
        return {"type": type(self).__name__, **vars(self)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the schedule type must match)."""
        if state.get("type") != type(self).__name__:
            raise InvalidOptionError(f"state is for schedule {state.get('type')!r}, not {type(self).__name__}")
        unknown = set(state) - set(vars(self)) - {"type"}
        if unknown:
            raise LayerNotFoundError(f"{type(self).__name__}.load_state_dict: unknown keys {sorted(unknown)}")
        for key, value in state.items():
            if key != "type":
                setattr(self, key, list(value) if isinstance(value, tuple) else value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def check_total_steps(owner: str, total_steps: int) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
        raise InvalidOptionError(f"{owner}: total_steps must be a positive int, got {total_steps!r}")


def _check_rate(owner: str, **rates: float) -> None:
    for name, value in rates.items():
        if not math.isfinite(value) or value < 0:
            raise InvalidOptionError(f"{owner}: {name} must be a finite rate >= 0, got {value!r}")


class Constant(Schedule):
    """The same rate ``s`` at every step.

    Args:
        s: the rate (>= 0), typically 1e-4 .. 5e-3.
        total_steps: optional, unused by the rate.
    """

    needs_total_steps = False

    def __init__(self, s: float, *, total_steps: int | None = None) -> None:
        _check_rate("Constant", s=s)
        super().__init__(total_steps=total_steps)
        self.s = float(s)

    def rate_at(self, step: int) -> float:
        return self.s


class Linear(Schedule):
    """Rate going linearly from ``start`` at step 0 to ``end`` at ``total_steps`` (``end`` afterwards)."""

    def __init__(self, start: float, end: float, *, total_steps: int | None = None) -> None:
        _check_rate("Linear", start=start, end=end)
        super().__init__(total_steps=total_steps)
        self.start, self.end = float(start), float(end)

    def rate_at(self, step: int) -> float:
        return self.start + (self.end - self.start) * self.progress(step)


class Cosine(Schedule):
    """Rate following half a cosine from ``start`` at step 0 to ``end`` at ``total_steps``."""

    def __init__(self, start: float, end: float, *, total_steps: int | None = None) -> None:
        _check_rate("Cosine", start=start, end=end)
        super().__init__(total_steps=total_steps)
        self.start, self.end = float(start), float(end)

    def rate_at(self, step: int) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))


class Step(Schedule):
    """Rate ``s``, multiplied by ``factor`` at each milestone (fractions of the run), like ``MultiStepLR``.

    Args:
        s: initial rate (>= 0).
        milestones: increasing fractions of ``total_steps`` in (0, 1]; from step
            ``ceil(m * total_steps)`` on, one more ``factor`` applies.
        factor: multiplier per milestone (>= 0).
        total_steps: length of the run in steps.
    """

    def __init__(
        self,
        s: float,
        *,
        milestones: Sequence[float] = (0.5, 0.75),
        factor: float = 0.1,
        total_steps: int | None = None,
    ) -> None:
        _check_rate("Step", s=s, factor=factor)
        ms = [float(m) for m in milestones]
        if any(not 0.0 < m <= 1.0 for m in ms) or ms != sorted(ms):
            raise InvalidOptionError(f"Step: milestones must be increasing fractions in (0, 1], got {list(milestones)}")
        super().__init__(total_steps=total_steps)
        self.s, self.milestones, self.factor = float(s), ms, float(factor)

    def rate_at(self, step: int) -> float:
        self.progress(step)  # validates total_steps
        assert self.total_steps is not None
        passed = sum(step >= _ceil_frac(m, self.total_steps) for m in self.milestones)
        return self.s * self.factor**passed


def _ceil_frac(fraction: float, total: int) -> int:
    # round first so that 0.4 * 100 is step 40, not 41 through float noise
    return math.ceil(round(fraction * total, 9))


class Dynamic(Schedule):
    """The paper's dynamic rule: constant ``s`` during warmup, then the strongest channels are spared.

    For the first ``warmup`` fraction of the run (steps ``0 .. switch_step - 1``) every channel gets ``s``. From
    ``switch_step`` on, at every step, channels whose |gamma| is above the ``(1 - keep)`` quantile get
    ``decay * s`` (so roughly the strongest ``keep`` fraction recovers) and the others keep ``s``.

    ``scope`` says where the quantile is taken:

    - ``"global"`` (the paper): over all regularized channels at once. Layer groups with large scales keep most
      of their channels and groups with small scales are squeezed hard.
    - ``"group"``: inside each layer group separately, so every group keeps its own strongest ``keep``
      fraction: protection in proportion to each group's size, which suits per-group pruning targets.

    Args:
        s: the rate (>= 0).
        warmup: fraction of the run in [0, 1] with constant ``s``.
        keep: fraction in [0, 1] of channels (above the ``1 - keep`` quantile) that get the decayed rate.
        decay: multiplier in [0, 1] of ``s`` for the kept channels.
        scope: ``"global"`` or ``"group"`` quantile.
        total_steps: length of the run in steps.
    """

    def __init__(
        self,
        s: float,
        *,
        warmup: float = 0.4,
        keep: float = 0.35,
        decay: float = 0.01,
        scope: Literal["global", "group"] = "global",
        total_steps: int | None = None,
    ) -> None:
        _check_rate("Dynamic", s=s, decay=decay)
        for name, value in (("warmup", warmup), ("keep", keep), ("decay", decay)):
            if not 0.0 <= value <= 1.0:
                raise InvalidOptionError(f"Dynamic: {name} must be in [0, 1], got {value!r}")
        if scope not in ("global", "group"):
            raise InvalidOptionError(f"Dynamic: scope must be 'global' or 'group', got {scope!r}")
        super().__init__(total_steps=total_steps)
        self.s, self.warmup, self.keep, self.decay = float(s), float(warmup), float(keep), float(decay)
        self.scope: str = scope

    @property
    def switch_step(self) -> int:
        """First step with the dynamic (per-channel) rate: ``ceil(warmup * total_steps)``."""
        self.progress(0)  # validates total_steps
        assert self.total_steps is not None
        return _ceil_frac(self.warmup, self.total_steps)

    def is_dynamic(self, step: int) -> bool:
        """Whether step ``step`` uses the per-channel rule."""
        return step >= self.switch_step

    def rate_at(self, step: int) -> float:
        return self.s

    def channel_factors(self, abs_gamma: FloatArray, groups: Sequence[IndexArray]) -> FloatArray | None:
        if not self.is_dynamic(self.last_step) or abs_gamma.size == 0:
            return None
        q = 1.0 - self.keep
        if self.scope == "global" or not groups:
            threshold: FloatArray | np.float32 = _quantile_cut(abs_gamma, q)
        else:
            threshold = np.empty_like(abs_gamma)
            for index in groups:  # a handful of layer groups: one selection each
                if index.size:
                    threshold[index] = _quantile_cut(abs_gamma[index], q)
        factors: FloatArray = np.where(abs_gamma > threshold, np.float32(self.decay), np.float32(1.0))
        return factors.astype(np.float32)


def _quantile_cut(values: FloatArray, q: float) -> np.float32:
    """A cut ``c`` with ``values > c`` exactly where ``values > torch.quantile(values, q)`` (linear).

    The interpolated quantile lies between the order statistics ``floor(q (n-1))`` and the next one, so
    "strictly above it" is "strictly above the lower order statistic": an O(n) partition instead of a sort.
    """
    k = math.floor(round(q * (values.size - 1), 9))
    cut: np.float32 = np.partition(values, k)[k]
    return cut
