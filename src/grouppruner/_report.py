"""The pieces of a run folder's report that do not depend on which flow wrote the folder.

The recipe's report (:mod:`grouppruner.recipe.report`) and the Ultralytics flow's report
(``grouppruner.integrations.ultralytics.report``) both write a stage table, a figure of the metrics per stage,
|gamma| histograms and a table per layer group before and after sparse training, and the channels per convolution
before and after pruning. Figures need the ``plot`` extra (matplotlib).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from .graph import ChannelGraph
from .sparsity import BNSparsity

GAMMA_THRESHOLD = 1e-2


@dataclass(frozen=True)
class Row:
    """One stage of a run in the report's table.

    Attributes:
        stage: the stage name.
        metrics: column title -> value, in column order; the first is the headline (its "kept" column follows it).
        params: parameter count.
        macs: conv + linear MACs for one image.
        latency_s: median batch-1 latency in seconds, when measured.
    """

    stage: str
    metrics: dict[str, float]
    params: int
    macs: int
    latency_s: float | None = None


def stage_table(rows: Sequence[Row]) -> str:
    """A Markdown table of ``rows``, each relative to the first (the dense model)."""
    base = rows[0]
    names = list(base.metrics)
    cells = [names[0], "mAP kept", *names[1:], "params", "params %", "MACs", "MACs %"]
    if any(r.latency_s is not None for r in rows):
        cells += ["latency (ms)", "latency %"]
    lines = ["| stage | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    first = base.metrics[names[0]]
    for r in rows:
        values = [r.metrics[n] for n in names]
        kept = f"{values[0] / first:.1%}" if first > 0 else "-"
        shown = [f"{values[0]:.3f}", kept, *(f"{v:.3f}" for v in values[1:])]
        shown += [f"{r.params:,}", f"{r.params / base.params:.1%}", f"{r.macs:,}", f"{r.macs / base.macs:.1%}"]
        if r.latency_s is not None and base.latency_s is not None:
            shown += [f"{1e3 * r.latency_s:.1f}", f"{r.latency_s / base.latency_s:.1%}"]
        lines.append(f"| {r.stage} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def figure(title: str, path: Path) -> list[str]:
    """Markdown lines: a section titled ``title`` showing the image ``path`` (beside the report)."""
    return [f"## {title}", "", f"![{title}]({path.name})", ""]


def layer_group_gammas(graph: ChannelGraph) -> dict[str, Tensor]:
    """|gamma| per layer group of ``graph``'s model: the channels sparse training regularizes, grouped as the
    pruner groups them (``{layer group: (C,)}``)."""
    return BNSparsity(graph, schedule=0.0).gammas()


def gamma_table(snapshots: Mapping[str, Mapping[str, Tensor]]) -> list[str]:
    """Markdown lines: per layer group, the fraction of |gamma| below :data:`GAMMA_THRESHOLD` in each snapshot."""
    # "|" inside a cell ends it: the header's |gamma| is escaped, or the table does not render.
    lines = [
        "Fraction of |gamma| < 1e-2 (the dashed line in the histograms) per layer group. The channels here are "
        "BatchNorm channels: each BatchNorm the layer group regularizes counts its own, so channels that a "
        "residual add couples are counted once per BatchNorm. The pruning plan below counts channel-group "
        "channels, each coupled set once, hence its smaller numbers.",
        "",
        "| layer group | BatchNorm channels | " + " | ".join(f"{s}: \\|gamma\\| < 1e-2" for s in snapshots) + " |",
    ]
    lines.append("|---|---|" + "---|" * len(snapshots))
    first = next(iter(snapshots.values()))
    for group, values in first.items():
        fractions = [float((snap[group].abs() < GAMMA_THRESHOLD).float().mean()) for snap in snapshots.values()]
        lines.append(f"| {group} | {values.numel()} | " + " | ".join(f"{f:.1%}" for f in fractions) + " |")
    return [*lines, ""]


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every ``nn.Conv2d`` of ``model``, in model order."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def plot_stages(rows: Sequence[Row], path: Path) -> Path:
    """Bar charts of the headline metric, parameters and MACs per stage, saved as ``path``."""
    from .plot import new_figure, save_png

    fig = new_figure(9.0, 3.0)
    axes = fig.subplots(1, 3)
    names = [r.stage for r in rows]
    headline = next(iter(rows[0].metrics))
    series = (
        (headline, [r.metrics[headline] for r in rows]),
        ("params (M)", [r.params / 1e6 for r in rows]),
        ("MACs (G)", [r.macs / 1e9 for r in rows]),
    )
    for ax, (label, values) in zip(axes, series, strict=True):
        ax.bar(names, values, color="tab:blue")
        ax.set_title(label)
        ax.tick_params(axis="x", labelrotation=30)
    save_png(fig, path)
    return path


def plot_gammas(snapshots: Mapping[str, Mapping[str, Tensor]], out: Path) -> Path:
    """|gamma| histograms per layer group, one colour per snapshot, saved as ``out/gammas.png``."""
    from .plot import gamma_histograms

    path = out / "gammas.png"
    gamma_histograms(dict(snapshots), path, threshold=GAMMA_THRESHOLD)
    return path


def plot_widths(before: Mapping[str, int], after: Mapping[str, int], path: Path, *, xlabel: str) -> Path:
    """Bars of the widths before (grey) and after (blue) pruning, in ``before``'s order, saved as ``path``."""
    from .plot import new_figure, save_png

    names = list(before)
    fig = new_figure(max(6.0, 0.12 * len(names)), 3.5)
    ax = fig.subplots()
    positions = list(range(len(names)))
    ax.bar(positions, [before[n] for n in names], color="lightgray", label="before")
    ax.bar(positions, [after.get(n, 0) for n in names], color="tab:blue", label="after")
    if len(names) <= 30:  # few enough bars to name each
        ax.set_xticks(positions, names, rotation=90, fontsize=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("output channels")
    ax.legend()
    save_png(fig, path)
    return path
