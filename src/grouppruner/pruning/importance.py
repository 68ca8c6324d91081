"""Importance: how the channels of a channel group are scored before pruning.

An :class:`Importance` gives one row of per-channel scores per scoring layer of a channel group (shape
``(L, group.size)``) and combines the rows into one score per channel by its ``coupling``:

- ``"mean"``: the mean over the rows;
- ``"max"``: the largest row value (a channel stays if any layer finds it important);
- ``"vote"``: the authors' majority vote over per-layer masks: a channel stays when at least half of its layers
  keep it, which equals thresholding the ``ceil(L / 2)``-th largest of its ``L`` scores.

:class:`BNScaleImportance` (``|gamma|`` of the group's BatchNorms) is the score sparse training prepares;
:class:`NormScaleImportance` reads GroupNorm / LayerNorm scales and :class:`FilterMagnitudeImportance` the
per-layer-normalised L1 / L2 norm of output filters. :class:`AutoImportance`, the default, takes the first of
the three that scores a group, so that every prunable group gets a score, and names per group which one it used.
Any callable ``fn(model, group) -> (size,) or (L, size)`` scores works through :class:`CustomImportance`.
The pruner (:mod:`.pruner`) thresholds the coupled scores per layer group.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal, TypeAlias

import numpy as np
import torch
from torch import nn

from .._utils.errors import InvalidOptionError, NonFiniteError, OptionTypeError
from ..graph import ChannelGroup

__all__ = [
    "COUPLINGS",
    "AutoImportance",
    "BNScaleImportance",
    "Coupling",
    "CustomImportance",
    "FilterMagnitudeImportance",
    "Importance",
    "NormScaleImportance",
    "ScoreFn",
    "as_importance",
]

Coupling: TypeAlias = Literal["mean", "max", "vote"]
COUPLINGS: tuple[Coupling, ...] = ("mean", "max", "vote")

ScoreFn: TypeAlias = Callable[[nn.Module, ChannelGroup], torch.Tensor]
"""``fn(model, group)`` returning scores of shape (group.size,) or (L, group.size); higher is more important."""


class Importance(ABC):
    """Scores the channels of a channel group; higher means more important.

    Args:
        coupling: how the per-layer rows combine: ``"mean"``, ``"max"`` or ``"vote"``.

    Subclasses implement :meth:`rows`; calling the object returns the coupled scores.
    """

    #: short name shown in plan summaries
    name: str = "custom"

    def __init__(self, *, coupling: Coupling = "mean") -> None:
        if coupling not in COUPLINGS:
            raise InvalidOptionError(f"{type(self).__name__}: coupling must be one of {COUPLINGS}, got {coupling!r}")
        self.coupling: Coupling = coupling

    @abstractmethod
    def rows(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        """Per-layer scores of shape ``(L, group.size)`` (or ``(group.size,)`` for one row); ``None`` when this
        importance cannot score the group (e.g. no BatchNorm in it)."""

    def kind(self, model: nn.Module, group: ChannelGroup) -> str:
        """Name of the score used for ``group`` (shown per group in plan summaries); :attr:`name` by default."""
        return self.name

    def __call__(self, model: nn.Module, group: ChannelGroup) -> np.ndarray | None:
        """Coupled float64 scores of shape ``(group.size,)``, or ``None`` when the group cannot be scored.

        Raises:
            ValueError: the rows have the wrong shape (the message names the group).
            NonFiniteError: a score is NaN or infinite (the message names the group).
        """
        rows = self.rows(model, group)
        if rows is None:
            return None
        rows = torch.as_tensor(rows).detach().float()
        if rows.dim() == 1:
            rows = rows.unsqueeze(0)
        if rows.dim() != 2 or rows.shape[1] != group.size:
            raise InvalidOptionError(
                f"importance for channel group {group.name!r} has shape {tuple(rows.shape)}, "
                f"expected ({group.size},) or (L, {group.size})"
            )
        if not torch.isfinite(rows).all():
            raise NonFiniteError(f"importance for channel group {group.name!r} contains NaN or infinite scores")
        return couple(rows.cpu().double().numpy(), self.coupling)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(coupling={self.coupling!r})"


def couple(values: np.ndarray, coupling: Coupling) -> np.ndarray:
    """Combine ``(L, size)`` per-layer scores into ``(size,)`` scores by ``coupling``."""
    if coupling == "mean":
        return np.asarray(values.mean(axis=0))
    if coupling == "max":
        return np.asarray(values.max(axis=0))
    majority = math.ceil(values.shape[0] / 2)
    return np.asarray(-np.sort(-values, axis=0)[majority - 1])


class BNScaleImportance(Importance):
    """``|gamma|`` of every BatchNorm in the group, one row each; groups without a BatchNorm are not scored."""

    name = "bn_l1"

    def rows(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        """``(L, size)`` rows ``|weight[ref.indices]|`` for the ``L`` BatchNorm members of ``group``."""
        out = []
        for ref in group.bns:
            weight = getattr(model.get_submodule(ref.name), "weight", None)
            if weight is not None:
                out.append(weight.detach().abs()[list(ref.indices)])
        return torch.stack(out) if out else None


class NormScaleImportance(Importance):
    """``|weight|`` of the per-channel affine GroupNorm / LayerNorm / InstanceNorm members, one row each.

    Groups without such a norm (or whose norms have no per-channel weight) are not scored. A GroupNorm scale
    plays the role of a BatchNorm gamma (it multiplies the normalised channel); a LayerNorm over channels-last
    features (ConvNeXt) likewise.
    """

    name = "norm_l1"

    def rows(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        """``(L, size)`` rows ``|weight[ref.indices]|`` for the ``L`` scoring norms of ``group``."""
        out = []
        for ref in group.layers:
            if ref.role != "norm":
                continue
            weight = getattr(model.get_submodule(ref.name), "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 1 and max(ref.indices) < weight.numel():
                out.append(weight.detach().abs()[list(ref.indices)])
        return torch.stack(out) if out else None


class FilterMagnitudeImportance(Importance):
    """Lp norm of each output filter of the group's producing Conv / Linear layers, normalised per layer.

    Row of a producer with ``weight (C_out, C_in / groups, k, k)``: ``||weight[i]||_p / mean_j ||weight[j]||_p``
    for its output channels ``i`` in the group, so that layers of different fan-in compare (a filter of average
    magnitude scores 1 in every layer). Scores every group that has a producer.

    Args:
        p: 1 (L1) or 2 (L2).
        coupling: how the rows combine.
    """

    def __init__(self, p: int = 2, *, coupling: Coupling = "mean") -> None:
        if p not in (1, 2):
            raise InvalidOptionError(f"FilterMagnitudeImportance: p must be 1 or 2, got {p!r}")
        super().__init__(coupling=coupling)
        self.p = p
        self.name = f"filter_l{p}"

    def rows(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        """``(L, size)`` normalised filter norms of the ``L`` producers (``dim="out"`` Conv / Linear members)."""
        out = []
        for ref in group.layers:
            if ref.dim != "out" or ref.role == "parameter":
                continue
            module = model.get_submodule(ref.name)
            if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                continue
            weight = module.weight.detach()
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                weight = weight.transpose(0, 1)  # (C_in, C_out / groups, k, k): output channels on dim 1
            norms = weight.flatten(1).norm(p=self.p, dim=1)
            out.append(norms[list(ref.indices)] / norms.mean().clamp_min(torch.finfo(norms.dtype).tiny))
        return torch.stack(out) if out else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, coupling={self.coupling!r})"


class AutoImportance(Importance):
    """The default: the best available score per group.

    ``|gamma|`` (:class:`BNScaleImportance`) where the group has a BatchNorm; otherwise the scale of its GroupNorm /
    LayerNorm (:class:`NormScaleImportance`); otherwise the normalised filter magnitude of its producers
    (:class:`FilterMagnitudeImportance`, L2 by default). :meth:`kind` names the one used, per group.

    Args:
        p: norm of the filter-magnitude fallback, 1 or 2.
        coupling: how the rows combine (for all three).
    """

    name = "auto"

    def __init__(self, p: int = 2, *, coupling: Coupling = "mean") -> None:
        super().__init__(coupling=coupling)
        self.chain: tuple[Importance, ...] = (
            BNScaleImportance(coupling=coupling),
            NormScaleImportance(coupling=coupling),
            FilterMagnitudeImportance(p, coupling=coupling),
        )

    def _first(self, model: nn.Module, group: ChannelGroup) -> tuple[Importance, torch.Tensor] | None:
        for importance in self.chain:
            rows = importance.rows(model, group)
            if rows is not None:
                return importance, rows
        return None

    def rows(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        """The rows of the first of BNScaleImportance, NormScaleImportance, FilterMagnitudeImportance that scores
        ``group``."""
        found = self._first(model, group)
        return None if found is None else found[1]

    def kind(self, model: nn.Module, group: ChannelGroup) -> str:
        """``"bn_l1"``, ``"norm_l1"``, ``"filter_l1"`` / ``"filter_l2"``, or ``"none"``."""
        found = self._first(model, group)
        return "none" if found is None else found[0].name


class CustomImportance(Importance):
    """A user's scoring function as an :class:`Importance`.

    Args:
        fn: ``fn(model, group)`` returning (group.size,) or (L, group.size) scores.
        coupling: how the rows combine.
    """

    def __init__(self, fn: ScoreFn, *, coupling: Coupling = "mean") -> None:
        if not callable(fn):
            raise OptionTypeError(f"CustomImportance: fn must be callable, got {type(fn).__name__}")
        super().__init__(coupling=coupling)
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def rows(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        """Whatever ``fn(model, group)`` returns."""
        return torch.as_tensor(self.fn(model, group))


def as_importance(importance: Importance | str | ScoreFn, coupling: Coupling | None = None) -> Importance:
    """The :class:`Importance` that ``GroupPruner(importance=..., coupling=...)`` means.

    Args:
        importance: an :class:`Importance` (returned as is), a name (``"auto"``, ``"bn_l1"``, ``"norm_l1"``,
            ``"filter_l1"``, ``"filter_l2"``) or a callable ``fn(model, group)`` (:class:`CustomImportance`).
        coupling: the coupling for a name or a callable (default ``"mean"``); for an :class:`Importance` it must
            be ``None`` or equal to the object's own.

    Raises:
        ValueError: an unknown name or coupling, or a coupling that conflicts with the object's.
        TypeError: ``importance`` is none of the above.
    """
    if coupling is not None and coupling not in COUPLINGS:
        raise InvalidOptionError(f"GroupPruner: coupling must be one of {COUPLINGS}, got {coupling!r}")
    if isinstance(importance, Importance):
        if coupling is not None and coupling != importance.coupling:
            raise InvalidOptionError(
                f"GroupPruner: coupling={coupling!r} conflicts with {importance!r}; set coupling on the importance"
            )
        return importance
    if isinstance(importance, str):
        kinds: dict[str, Callable[[], Importance]] = {
            "auto": lambda: AutoImportance(coupling=coupling or "mean"),
            "bn_l1": lambda: BNScaleImportance(coupling=coupling or "mean"),
            "norm_l1": lambda: NormScaleImportance(coupling=coupling or "mean"),
            "filter_l1": lambda: FilterMagnitudeImportance(1, coupling=coupling or "mean"),
            "filter_l2": lambda: FilterMagnitudeImportance(2, coupling=coupling or "mean"),
        }
        if importance not in kinds:
            raise InvalidOptionError(
                f"GroupPruner: unknown importance {importance!r}; use one of {sorted(kinds)}, an Importance, a callable"
            )
        return kinds[importance]()
    if callable(importance):
        return CustomImportance(importance, coupling=coupling or "mean")
    raise OptionTypeError(
        f"GroupPruner: importance must be an Importance, its name or a callable, got {type(importance)}"
    )
