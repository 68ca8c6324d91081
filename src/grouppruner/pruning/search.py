"""Plans chosen by measured accuracy: score candidate plans of the same cost and keep the best.

A budget plan (:meth:`GroupPruner.plan`) decides the per-layer-group widths from a proxy, normalised channel
scores against a cost model. At tight budgets *which widths are kept* matters more than the weights kept
("Rethinking the value of network pruning", ICLR 2019), and the proxy can pick poor widths. :class:`PlanSearch`
measures instead (EagleEye, ECCV 2020): every candidate meets the budget (the solver's bisection, ``strict``),
is applied to a copy of the model, has its BatchNorm statistics recomputed on a few batches
(:func:`~grouppruner.pruning.recalibrate_batchnorm`), and is scored by the user's ``evaluate(model)``. Candidates:

- index 0, ``"solver"``: the plan :meth:`GroupPruner.plan` makes for the budget;
- index 1, ``"uniform"``: every layer group loses the same share of its channels (``normalise="rank"``), the
  uniform ratio of Torch-Pruning's usual recipe, at the same cost;
- then, in turn, ``"random"`` and ``"perturb"`` (``perturb_share`` of them), from index 2 on:
- ``"perturb"``: the solver's ranking with every layer group's pressure scaled by ``exp(sigma * z)``, ``z`` drawn
  from a standard normal (``layer_group_bias``): widths near the solver's;
- ``"random"``: every layer group loses a share of its channels proportional to a factor drawn uniformly from
  [0.1, 1] (``normalise="rank"``): widths anywhere in the budget's range, as EagleEye samples them.

Candidate ``i`` depends only on ``(seed, i)``, so a search can be stopped, resumed (``state_path``: the records
are written atomically after every candidate, and a rerun after ``kill -9`` continues) or extended with more
candidates, and gives the same result as one uninterrupted run. Its cost is bounded by ``candidates``; each
record holds the seconds spent planning, applying, recalibrating and evaluating.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._utils.calls import ForwardFn
from .._utils.errors import CheckpointError, InvalidOptionError, NonFiniteError, UsageError
from .._utils.io import atomic_write
from ..latency import LatencyModel
from .calibrate import recalibrate_batchnorm
from .plan import TARGET_MODES, PruningPlan, model_fingerprint, scored_weights_digest

if TYPE_CHECKING:
    from .pruner import GroupPruner

__all__ = ["CANDIDATE_KINDS", "Candidate", "CandidateRecord", "PlanSearch", "SearchResult"]

logger = logging.getLogger(__name__)

CANDIDATE_KINDS: tuple[str, ...] = ("solver", "uniform", "perturb", "random")
"""The kinds of candidate :class:`PlanSearch` proposes (see the module doc)."""

_STATE_VERSION = 1
_RANDOM_RANGE = (0.1, 1.0)  # the share of a layer group's channels that go is proportional to a factor drawn here


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One proposed plan, before it is made: the options of :meth:`GroupPruner.plan` beyond the budget.

    Attributes:
        index: its position in the search (0 is the solver's plan).
        kind: one of :data:`CANDIDATE_KINDS`.
        layer_group_bias: layer group -> pressure factor (``plan(layer_group_bias=...)``); empty for the solver.
        normalise: ``"max"`` or ``"rank"`` (``plan(normalise=...)``).
    """

    index: int
    kind: str
    layer_group_bias: dict[str, float]
    normalise: str


@dataclasses.dataclass
class CandidateRecord:
    """What scoring one candidate measured.

    Attributes:
        index: the candidate's index.
        kind: one of :data:`CANDIDATE_KINDS`.
        widths: layer group -> channels kept.
        reached: the plan's cost as a fraction of the model's (params, MACs or predicted latency, as budgeted);
            ``None`` with ``score``.
        score: ``evaluate(model)`` of the pruned, recalibrated copy; ``None`` when no plan meets the budget
            within the solver's tolerance for this candidate (it is then not evaluated).
        seconds: seconds spent per phase: ``"plan"``, ``"apply"``, ``"calibrate"``, ``"evaluate"``.
    """

    index: int
    kind: str
    widths: dict[str, int]
    reached: float | None
    score: float | None
    seconds: dict[str, float]

    @property
    def total_seconds(self) -> float:
        """The candidate's whole cost in seconds."""
        return sum(self.seconds.values())


@dataclasses.dataclass
class SearchResult:
    """The outcome of :meth:`PlanSearch.run`.

    Attributes:
        plan: the best candidate's plan, for the searched model (``pruner.apply(result.plan)``).
        best: its record.
        records: every candidate scored, in index order (the first ``candidates`` of a longer resumed state).
    """

    plan: PruningPlan
    best: CandidateRecord
    records: list[CandidateRecord]

    @property
    def seconds(self) -> float:
        """Seconds spent on all candidates (resumed runs included)."""
        return sum(r.total_seconds for r in self.records)


class PlanSearch:
    """Scores candidate plans that meet one budget and keeps the best (see the module doc).

    Example::

        pruner = gp.GroupPruner(graph, min_channels=8)
        search = gp.PlanSearch(
            pruner,
            target_params=0.15,
            evaluate=lambda model: validation_map(model),   # higher is better (mode="min" for a loss)
            calibration=[images for images, _ in itertools.islice(train_loader, 8)],
            candidates=16,
            state_path="search.json",                       # resumable
        )
        result = search.run()
        pruner.apply(result.plan)

    Args:
        pruner: the pruner of the model to search plans for; the model itself is never changed (every candidate
            is applied to a deep copy of the pruner, its graph and model).
        evaluate: ``evaluate(model) -> float``, called on each pruned, recalibrated copy in eval mode and under
            ``torch.no_grad()``: a held-out mAP, accuracy or loss.
        calibration: model inputs for :func:`~grouppruner.pruning.recalibrate_batchnorm`, iterated once per
            candidate (a list or a ``DataLoader``; fixed batches make the candidates comparable).
        target_params: the budget (exactly one of the three), as for :meth:`GroupPruner.plan`.
        target_macs: the budget as a fraction of the MACs.
        target_latency: the budget as a fraction of the predicted latency.
        latency_model: for ``target_latency`` / ``latency_weight``, as for :meth:`GroupPruner.plan`.
        latency_weight: as for :meth:`GroupPruner.plan`; applies to every candidate.
        candidates: how many candidates to score in all (the solver's plan and the uniform one included), >= 1.
        perturb_share: the share of the drawn candidates (index 2 on) that perturb the solver's plan; the rest
            are random.
        sigma: the spread of the perturbations (the standard deviation of the log pressure factors), > 0.
        calibration_batches: batches used per candidate to recompute BatchNorm statistics, >= 1.
        mode: ``"max"`` when a higher score is better (mAP), ``"min"`` when lower is (a loss).
        seed: the seed of the candidates.
        forward_fn: ``forward_fn(model, batch)`` for calibration; defaults to the pruner's ``forward_fn``.
        state_path: a JSON file holding the records: read at the start of :meth:`run` when it exists (it must come
            from a search with the same settings, model and weights), written atomically after every candidate.

    Raises:
        InvalidOptionError: bad option values, zero or several budgets.
    """

    def __init__(
        self,
        pruner: GroupPruner,
        *,
        evaluate: Callable[[nn.Module], float],
        calibration: Iterable[Any],
        target_params: float | None = None,
        target_macs: float | None = None,
        target_latency: float | None = None,
        latency_model: LatencyModel | None = None,
        latency_weight: float = 0.0,
        candidates: int = 16,
        perturb_share: float = 0.5,
        sigma: float = 0.5,
        calibration_batches: int = 8,
        mode: str = "max",
        seed: int = 0,
        forward_fn: ForwardFn | None = None,
        state_path: str | os.PathLike[str] | None = None,
    ) -> None:
        budgets = {"target_params": target_params, "target_macs": target_macs, "target_latency": target_latency}
        given = {k: float(v) for k, v in budgets.items() if v is not None}
        if len(given) != 1:
            raise InvalidOptionError(
                f"PlanSearch needs exactly one of {list(TARGET_MODES)}, got {list(given) or 'none'}"
            )
        for name, value, ok in (
            ("candidates", candidates, isinstance(candidates, int) and candidates >= 1),
            (
                "calibration_batches",
                calibration_batches,
                isinstance(calibration_batches, int) and calibration_batches >= 1,
            ),
            ("perturb_share", perturb_share, 0.0 <= perturb_share <= 1.0),
            ("sigma", sigma, sigma > 0 and math.isfinite(sigma)),
            ("mode", mode, mode in ("max", "min")),
        ):
            if not ok or isinstance(value, bool):
                raise InvalidOptionError(f"PlanSearch: bad {name}={value!r}")
        if not callable(evaluate):
            raise InvalidOptionError(f"PlanSearch: evaluate must be callable, got {type(evaluate).__name__}")
        self.pruner = pruner
        self.evaluate = evaluate
        self.calibration = calibration
        ((self.budget_mode, self.target),) = given.items()
        self.latency_model = latency_model
        self.latency_weight = float(latency_weight)
        self.candidates = candidates
        self.perturb_share = float(perturb_share)
        self.sigma = float(sigma)
        self.calibration_batches = calibration_batches
        self.mode = mode
        self.seed = int(seed)
        self.forward_fn = forward_fn if forward_fn is not None else pruner.forward_fn
        self.state_path = Path(state_path) if state_path is not None else None
        self.records: list[CandidateRecord] = []

    # ------------------------------------------------------------------ candidates

    def candidate(self, index: int) -> Candidate:
        """Candidate ``index`` (a function of ``seed`` and ``index`` only)."""
        if index == 0:
            return Candidate(0, "solver", {}, "max")
        if index == 1:
            return Candidate(1, "uniform", {}, "rank")
        drawn = index - 1  # 1, 2, ...: the share of perturbations is kept over every prefix
        perturb = math.floor(drawn * self.perturb_share) > math.floor((drawn - 1) * self.perturb_share)
        rng = np.random.default_rng([self.seed, index])
        groups = list(self.pruner.layer_groups)
        if perturb:
            factors = np.exp(self.sigma * rng.standard_normal(len(groups)))
            return Candidate(index, "perturb", dict(zip(groups, map(float, factors), strict=True)), "max")
        factors = rng.uniform(*_RANDOM_RANGE, size=len(groups))
        return Candidate(index, "random", dict(zip(groups, map(float, factors), strict=True)), "rank")

    def plan_for(self, candidate: Candidate) -> PruningPlan:
        """The plan of ``candidate`` for the budget (``strict``: a candidate no plan meets within the solver's
        tolerance raises :class:`~grouppruner.InvalidOptionError`)."""
        budget: dict[str, Any] = {self.budget_mode: self.target}
        return self.pruner.plan(
            **budget,
            latency_model=self.latency_model,
            latency_weight=self.latency_weight,
            layer_group_bias=candidate.layer_group_bias or None,
            normalise=candidate.normalise,
            strict=True,
            verify_steps=None,  # candidates share the predicted budget; measuring each would move it
        )

    # ------------------------------------------------------------------ scoring

    @property
    def done(self) -> bool:
        """Whether every candidate has been scored."""
        return len(self.records) >= self.candidates

    def step(self) -> CandidateRecord:
        """Score the next candidate and return its record.

        Raises:
            UsageError: every candidate has been scored already.
            NonFiniteError: ``evaluate`` returned NaN or an infinite value (names the candidate).
        """
        if self.done:
            raise UsageError(f"PlanSearch: all {self.candidates} candidates are scored; raise candidates= to go on")
        candidate = self.candidate(len(self.records))
        seconds = {}
        start = time.perf_counter()
        try:
            plan = self.plan_for(candidate)
        except InvalidOptionError as error:
            logger.info("candidate %d (%s) meets no plan within tolerance: %s", candidate.index, candidate.kind, error)
            record = CandidateRecord(candidate.index, candidate.kind, {}, None, None, {"plan": _since(start)})
            self.records.append(record)
            return record
        seconds["plan"] = _since(start)
        start = time.perf_counter()
        clone = copy.deepcopy(self.pruner)  # the graph and positions follow their own copy of the model
        model = clone.apply(plan)
        seconds["apply"] = _since(start)
        start = time.perf_counter()
        recalibrate_batchnorm(model, self.calibration, num_batches=self.calibration_batches, forward_fn=self.forward_fn)
        seconds["calibrate"] = _since(start)
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            score = float(self.evaluate(model))
        seconds["evaluate"] = _since(start)
        if not math.isfinite(score):
            raise NonFiniteError(f"PlanSearch: evaluate returned {score} for candidate {candidate.index}")
        reached = self._reached(plan, model)
        widths = {lg.name: lg.channels_after for lg in plan.layer_groups}
        record = CandidateRecord(candidate.index, candidate.kind, widths, reached, score, seconds)
        self.records.append(record)
        logger.info(
            "candidate %d (%s): score %.4f at %s %.4f; %.1f s (plan %.1f, apply %.1f, BatchNorm %.1f, evaluate %.1f)",
            record.index,
            record.kind,
            score,
            self.budget_mode,
            reached,
            record.total_seconds,
            *(seconds[k] for k in ("plan", "apply", "calibrate", "evaluate")),
        )
        return record

    def _reached(self, plan: PruningPlan, model: nn.Module) -> float:
        if self.budget_mode == "target_params":
            return plan.params_ratio
        if self.budget_mode == "target_macs":
            return plan.macs_ratio
        latency = self.latency_model or self.pruner._latency_model  # measured by the solver's first latency plan
        assert latency is not None
        return latency.predict(model) / latency.predict(self.pruner.model)

    @property
    def best(self) -> CandidateRecord | None:
        """The best record among the first ``candidates`` (the lowest index among equal scores), or ``None`` before
        any was scored."""
        scored = [r for r in self.records[: self.candidates] if r.score is not None]
        if not scored:
            return None
        sign = 1.0 if self.mode == "max" else -1.0
        return max(scored, key=lambda r: (sign * float(r.score or 0.0), -r.index))

    def run(self) -> SearchResult:
        """Score the candidates not scored yet (resuming from ``state_path``) and return the best.

        Raises:
            InvalidOptionError: no candidate met the budget, or ``state_path`` holds another search.
        """
        if self.state_path is not None and self.state_path.is_file():
            self.load_state_dict(_read_state(self.state_path))
            logger.info("PlanSearch: resumed %d scored candidates from %s", len(self.records), self.state_path)
        while not self.done:
            self.step()
            if self.state_path is not None:
                with atomic_write(self.state_path) as file:
                    file.write(json.dumps(self.state_dict(), indent=1).encode())
        best = self.best
        if best is None:
            raise InvalidOptionError(
                f"PlanSearch: none of {self.candidates} candidates met {self.budget_mode}={self.target:g}"
            )
        return SearchResult(self.plan_for(self.candidate(best.index)), best, self.records[: self.candidates])

    # ------------------------------------------------------------------ state

    def _settings(self) -> dict[str, Any]:
        groups = [self.pruner.graph.group(n) for names in self.pruner.layer_groups.values() for n in names]
        return {
            "budget": {self.budget_mode: self.target},
            "latency_weight": self.latency_weight,
            "perturb_share": self.perturb_share,
            "sigma": self.sigma,
            "calibration_batches": self.calibration_batches,
            "mode": self.mode,
            "seed": self.seed,
            "min_channels": self.pruner.min_channels,
            "round_to": self.pruner.round_to,
            "layer_groups": self.pruner.layer_groups,
            "fingerprint": model_fingerprint(self.pruner.model),
            "weights_digest": scored_weights_digest(self.pruner.model, groups),
        }

    def state_dict(self) -> dict[str, Any]:
        """The search's settings and records as plain JSON-serializable data."""
        return {
            "version": _STATE_VERSION,
            "settings": self._settings(),
            "records": [dataclasses.asdict(r) for r in self.records],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take the records of :meth:`state_dict` output from a search with the same settings.

        ``candidates`` is not a setting: a state with fewer records is continued; one with more is kept (raising
        ``candidates`` again reuses its records), and the best is chosen among the first ``candidates`` records, so
        that the result depends on ``seed`` and ``candidates`` only.

        Raises:
            InvalidOptionError: the state comes from a search with other settings, another model or other weights
                (the message names the settings that differ).
        """
        if state_dict.get("version") != _STATE_VERSION:
            raise InvalidOptionError(
                f"PlanSearch state version {state_dict.get('version')!r}, expected {_STATE_VERSION}"
            )
        ours, theirs = self._settings(), json.loads(json.dumps(state_dict.get("settings", {})))
        ours = json.loads(json.dumps(ours))
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            raise InvalidOptionError(
                f"PlanSearch: the state{f' in {self.state_path}' if self.state_path else ''} comes from a search with "
                f"other {', '.join(differ)}; use another state_path or delete it"
            )
        self.records = [CandidateRecord(**r) for r in state_dict["records"]]


def _since(start: float) -> float:
    return time.perf_counter() - start


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"PlanSearch state {path} cannot be read: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"PlanSearch state {path}: expected a JSON object")
    return state
