"""Landing ``target_latency`` on the measured latency: plan, measure the pruned model against the dense one in the
runtime, correct, repeat a bounded number of times.

The latency model predicts; the runtime decides. Its prediction of a pruned model misses by what the units timed in
isolation do not show (layout reorders between layers, thread scaling of thin layers, caches), and by how much
depends on the plan. :func:`land_latency` therefore measures every candidate plan on a pruned copy against the
dense model, interleaved (:func:`grouppruner.runtime.compare_latency`: the two take turns, medians of per-round
ratios, so load on the machine hits both alike), and corrects the *predicted* target it asks the solver for: by the
ratio measured / predicted after the first step, by the secant through the last two steps after that. The plan
whose measured fraction is closest to the target is kept; its measurements go into ``plan.latency``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from .._utils.errors import InvalidOptionError
from ..runtime import Runner, Runtime, compare_latency
from .plan import PruningPlan

__all__ = ["LANDING_TOLERANCE", "land_latency"]

logger = logging.getLogger(__name__)

LANDING_TOLERANCE = 0.02
"""``target_latency``: a measured fraction this close to the target stops the correction steps."""


def land_latency(
    target: float,
    plan_for: Callable[[float], tuple[PruningPlan, float]],
    pruned_copy: Callable[[PruningPlan], nn.Module],
    dense: Runner,
    runner_for: Callable[[nn.Module], Runner],
    runtime: Runtime,
    *,
    steps: int,
    rounds: int = 15,
) -> PruningPlan:
    """Plan for ``target`` (a fraction of the dense latency measured in ``runtime``), correcting up to ``steps`` times.

    Args:
        target: the measured fraction wanted, in (0, 1].
        plan_for: ``plan_for(predicted_target) -> (plan, predicted fraction reached)``, the solver.
        pruned_copy: a pruned copy of the model for a plan (the model itself is not touched).
        dense: the dense model's runner.
        runner_for: a runner for a pruned copy.
        runtime: what the runners run in (recorded).
        steps: corrections after the first plan (0: measure and record only).
        rounds: interleaved rounds per measurement.

    Returns:
        The plan whose measured fraction is closest to ``target``, with ``plan.latency`` filled in: ``runtime``,
        ``threads``, ``block``, ``dense_s``, ``pruned_s``, ``ratio`` (measured), ``target``, ``load_average``,
        ``spin_wait``, ``deploy`` (the rewrite's name or ``None``) and
        per step ``{"asked", "predicted", "measured"}``.
    """
    history: list[dict[str, float]] = []
    best: tuple[float, PruningPlan, dict[str, Any]] | None = None
    asked = target
    for step in range(steps + 1):
        try:
            plan, predicted = plan_for(asked)
        except InvalidOptionError:
            if step == 0:
                raise
            logger.info(
                "target_latency=%g: a correction asked for %.3f, which no plan reaches; stopping", target, asked
            )
            break
        comparison = compare_latency([dense, runner_for(pruned_copy(plan))], runtime=runtime, rounds=rounds)
        measured = comparison.ratios[1]
        history.append({"asked": asked, "predicted": predicted, "measured": measured})
        logger.info(
            "target_latency=%g step %d: asked the solver for %.3f, predicted %.3f, measured %.3f (%s, %d threads)",
            target,
            step,
            asked,
            predicted,
            measured,
            runtime.name,
            comparison.threads,
        )
        record = {
            "runtime": comparison.runtime,
            "threads": comparison.threads,
            "block": comparison.block,
            "dense_s": comparison.seconds[0],
            "pruned_s": comparison.seconds[1],
            "ratio": measured,
            "target": target,
            "load_average": list(comparison.load_average),
            "spin_wait": runtime.spin_wait,
            "deploy": runtime.describe()["deploy"],
        }
        if best is None or abs(measured - target) < best[0]:
            best = (abs(measured - target), plan, record)
        if abs(measured - target) <= LANDING_TOLERANCE or step == steps:
            break
        asked = _next_ask(history, target)
    assert best is not None
    _, plan, record = best
    record["steps"] = history
    plan.latency = record
    if best[0] > 2.5 * LANDING_TOLERANCE:
        logger.warning(
            "target_latency=%g: the closest plan measured %.3f of the dense latency in %s after %d step(s)",
            target,
            record["ratio"],
            runtime.name,
            len(history),
        )
    return plan


def _next_ask(history: list[dict[str, float]], target: float) -> float:
    """The predicted fraction to ask for next: secant through the last two steps, ratio scaling after one."""
    last = history[-1]
    ask = last["predicted"] * target / max(last["measured"], 1e-6)
    if len(history) >= 2:
        prev = history[-2]
        slope = (last["measured"] - prev["measured"]) / (last["predicted"] - prev["predicted"] or math.nan)
        if math.isfinite(slope) and slope > 0:
            ask = last["predicted"] + (target - last["measured"]) / slope
    return min(1.0, max(ask, 1e-3))
