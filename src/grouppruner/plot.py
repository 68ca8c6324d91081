"""Plots for sparse training (needs the ``plot`` extra: ``pip install grouppruner[plot]``).

Figures are built with matplotlib's object API on the Agg canvas: no pyplot, no global backend state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ._utils.errors import InvalidOptionError
from ._utils.io import atomic_write
from .sparsity import BNSparsity

__all__ = ["gamma_histograms", "new_figure", "save_png"]

Snapshot = Mapping[str, Tensor]


def gamma_histograms(
    snapshots: BNSparsity | Snapshot | Mapping[str, Snapshot],
    path: str | os.PathLike[str] | None = None,
    *,
    bins: int = 50,
    columns: int = 3,
    threshold: float | None = None,
    log_count: bool = True,
    dpi: int = 100,
) -> Figure:
    """Histograms of |gamma|, one panel per layer group, optionally several snapshots overlaid per panel.

    Args:
        snapshots: a :class:`~grouppruner.sparsity.BNSparsity` (its current gammas), one snapshot
            ``{layer_group: (C_g,) gammas}`` as returned by :meth:`BNSparsity.gammas`, or several labelled
            snapshots ``{label: {layer_group: (C_g,) gammas}}`` (e.g. ``{"before": ..., "after": ...}``) drawn
            over each other with a legend (beside each panel, off the data).
        path: where to write the PNG (atomically); ``None``: only return the figure.
        bins: histogram bins on a common |gamma| range per panel.
        columns: panels per row.
        threshold: draw a vertical line at this |gamma| (e.g. the ``stats`` threshold), labelled in the legend.
        log_count: logarithmic count axis (near-zero spikes dwarf the rest).
        dpi: resolution of the PNG.

    Returns:
        The figure; ``figure.axes`` holds exactly one panel per layer group, in layer-group order.

    Raises:
        ValueError: no layer group, or snapshots with different layer groups.
    """
    labelled = _normalize(snapshots)
    groups = list(next(iter(labelled.values())))
    if not groups:
        raise InvalidOptionError("gamma_histograms: no layer group to plot")
    for label, snap in labelled.items():
        if list(snap) != groups:
            raise InvalidOptionError(
                f"gamma_histograms: snapshot {label!r} has layer groups {list(snap)}, expected {groups}"
            )
    cols = max(1, min(columns, len(groups)))
    rows = math.ceil(len(groups) / cols)
    fig = new_figure(4.0 * cols, 3.0 * rows)
    grid = fig.subplots(rows, cols, squeeze=False)
    for i, group in enumerate(groups):
        ax = grid[i // cols][i % cols]
        values = {label: snap[group].detach().abs().float().cpu().reshape(-1) for label, snap in labelled.items()}
        top = max((float(v.max()) for v in values.values() if v.numel()), default=1.0)
        edges = torch.linspace(0.0, max(top, 1e-12), bins + 1).tolist()
        for label, v in values.items():
            ax.hist(v.tolist(), bins=edges, histtype="step", label=f"{label} ({v.numel()} ch)")
        if threshold is not None:
            ax.axvline(threshold, color="gray", linestyle="--", linewidth=1, label=f"|gamma| = {threshold:g}")
        if log_count:
            ax.set_yscale("log")
        ax.set_title(group)
        ax.set_xlabel("|gamma|")
        ax.set_ylabel("channels")
        # beside the panel, not over it: the spikes near zero and the tail both matter
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    for j in range(len(groups), rows * cols):
        fig.delaxes(grid[j // cols][j % cols])
    if path is not None:
        save_png(fig, path, dpi=dpi)
    return fig


def _normalize(snapshots: BNSparsity | Snapshot | Mapping[str, Snapshot]) -> dict[str, Snapshot]:
    if isinstance(snapshots, BNSparsity):
        return {"gamma": snapshots.gammas()}
    if not snapshots:
        raise InvalidOptionError("gamma_histograms: no snapshot given")
    first = next(iter(snapshots.values()))
    if isinstance(first, Tensor):
        return {"gamma": snapshots}  # type: ignore[dict-item]  # one snapshot: values are tensors
    return dict(snapshots)  # type: ignore[arg-type]  # labelled snapshots: values are mappings


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure of ``width`` x ``height`` inches on its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 100) -> None:
    """Write ``fig`` as a PNG atomically (temp file + rename), creating the parent folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as handle:
        fig.savefig(handle, format="png", dpi=dpi)
