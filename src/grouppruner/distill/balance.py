"""How strongly each loss term pulls on the student: the gradient norm of every term against the task loss.

Distillation of small detectors gains little and hurts when its terms outweigh the task loss (the YOLOv8n run of
this project lost 3 points at its default weights). The loss values say little about that: a term of value 0.01
can have the larger gradient. :class:`GradientBalance` measures what matters, the L2 norm of each weighted term's
gradient with respect to the student's parameters, every ``every`` steps, and its ratio to the reference term's
(the detection loss). It uses ``torch.autograd.grad`` on the retained graph: ``.grad`` is never touched, so the
training step is unchanged, at the cost of one extra backward pass per term on the steps it measures.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .._utils.errors import InvalidOptionError, NonFiniteError

__all__ = ["GradientBalance", "gradient_norms"]

logger = logging.getLogger(__name__)


def gradient_norms(losses: Mapping[str, Tensor], parameters: Iterable[Tensor]) -> dict[str, float]:
    """The L2 norm of each loss term's gradient with respect to ``parameters``, without changing ``.grad``.

    Args:
        losses: name -> scalar loss tensor (shape ``()``) still attached to its graph; terms that share a graph
            (the usual case: one forward, several losses) are all measured, the graph is retained.
        parameters: the tensors to differentiate against (e.g. ``student.parameters()``); those with
            ``requires_grad=False`` are skipped.

    Returns:
        name -> norm (a float >= 0); 0 for a term that does not depend on any of the parameters.

    Raises:
        InvalidOptionError: a term is not a scalar tensor that requires grad (named), or no parameter requires grad.
        NonFiniteError: a term's gradient norm is NaN or infinite (named).
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise InvalidOptionError("gradient_norms: no parameter requires grad")
    norms: dict[str, float] = {}
    for name, loss in losses.items():
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise InvalidOptionError(f"gradient_norms: term {name!r} must be a scalar tensor, got {_describe(loss)}")
        if not loss.requires_grad:
            norms[name] = 0.0  # e.g. a term switched off for this step: it pulls on nothing
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norm = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
        if not math.isfinite(norm):
            raise NonFiniteError(f"gradient_norms: the gradient of term {name!r} has norm {norm}")
        norms[name] = norm
    return norms


def _describe(value: Any) -> str:
    return f"Tensor{tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


class GradientBalance:
    """Measures each loss term's gradient norm against a reference term every ``every`` steps, and averages.

    Example::

        balance = gp.distill.GradientBalance(student.parameters(), reference="detection", every=20)
        for images, targets in loader:
            detection = detect_loss(student(images), targets)
            attention = 10.0 * distiller.loss()[0]
            balance.observe({"detection": detection, "attention": attention})  # before backward
            (detection + attention).backward()
            ...
        summary = balance.summary()  # {"attention": {"norm": ..., "ratio": ...}, "detection": {...}}

    Args:
        parameters: the student's parameters (kept as a list; rebuild the object after pruning).
        reference: the name of the term the others are compared with (the task loss).
        every: measure on every ``every``-th call of :meth:`observe` (the first call included), >= 1.

    Raises:
        InvalidOptionError: ``every`` < 1, or no parameter requires grad.
    """

    def __init__(self, parameters: Iterable[Tensor], *, reference: str = "detection", every: int = 20) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidOptionError(f"GradientBalance: every must be an int >= 1, got {every!r}")
        self.parameters = [p for p in parameters if p.requires_grad]
        if not self.parameters:
            raise InvalidOptionError("GradientBalance: no parameter requires grad")
        self.reference = reference
        self.every = every
        self.calls = 0
        self.measured = 0
        self._norm_sums: dict[str, float] = {}
        self._ratio_sums: dict[str, float] = {}

    def observe(self, losses: Mapping[str, Tensor]) -> dict[str, float] | None:
        """Count a step; on a measuring step return name -> ratio of its norm to the reference's, else ``None``.

        Call it after the forward pass and before ``backward()`` (the graph must still exist).

        Args:
            losses: name -> weighted scalar term, as added to the total loss; must include ``reference``.

        Raises:
            InvalidOptionError: ``reference`` is missing from ``losses`` (the message lists the names given).
        """
        if self.reference not in losses:
            raise InvalidOptionError(
                f"GradientBalance: the reference term {self.reference!r} is not among {sorted(losses)}"
            )
        measure = self.calls % self.every == 0
        self.calls += 1
        if not measure:
            return None
        norms = gradient_norms(losses, self.parameters)
        base = norms[self.reference]
        ratios = {name: (norm / base if base > 0 else math.inf) for name, norm in norms.items()}
        self.measured += 1
        for name, norm in norms.items():
            self._norm_sums[name] = self._norm_sums.get(name, 0.0) + norm
            self._ratio_sums[name] = self._ratio_sums.get(name, 0.0) + ratios[name]
        logger.debug("gradient norms %s, ratios to %s %s", norms, self.reference, ratios)
        return ratios

    def summary(self) -> dict[str, dict[str, float]]:
        """Per term its mean gradient norm and mean ratio to the reference over the measured steps (empty before
        the first)."""
        return {
            name: {"norm": self._norm_sums[name] / self.measured, "ratio": self._ratio_sums[name] / self.measured}
            for name in self._norm_sums
        }

    def reset(self) -> None:
        """Forget the measurements (e.g. at the start of an epoch); the step count goes on."""
        self.measured = 0
        self._norm_sums = {}
        self._ratio_sums = {}

    def state_dict(self) -> dict[str, Any]:
        """The step count and the running sums, for an exact resume."""
        return {
            "calls": self.calls,
            "measured": self.measured,
            "norm_sums": dict(self._norm_sums),
            "ratio_sums": dict(self._ratio_sums),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.calls = int(state_dict["calls"])
        self.measured = int(state_dict["measured"])
        self._norm_sums = {str(k): float(v) for k, v in state_dict["norm_sums"].items()}
        self._ratio_sums = {str(k): float(v) for k, v in state_dict["ratio_sums"].items()}
