"""The report of a recipe run folder: what each stage did, in numbers and pictures.

:func:`write_report` reads a folder written by :func:`~grouppruner.recipe.run_recipe` (``results.json`` and the
stage checkpoints) and writes ``report/report.md`` with PNG figures beside it:

- a table of mAP@0.5, parameters, MACs (and optionally latency) per stage, relative to the dense model;
- |gamma| histograms per layer group before (dense) and after sparse training;
- channels per layer before and after pruning;
- the pruning plan table.

Needs the ``plot`` extra (matplotlib). The CLI runs it as ``grouppruner report RUN_DIR``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._utils.errors import DataError
from .._utils.io import atomic_write
from ..checkpoint import CheckpointError, load_pruned
from ..detection.models import yolov4
from ..graph import ChannelGraph
from ..profile import measure_latency
from ..pruning import applied_plans
from ..run_folder import read_results
from ..sparsity import BNSparsity

__all__ = ["StageRow", "read_run", "write_report"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRow:
    """One stage of a run, as the report shows it.

    Attributes:
        stage: the stage name (``dense``, ``sparse``, ``pruned``, ``recovered``).
        map50: validation mAP@0.5.
        params: parameter count.
        macs: conv + linear MACs for one image.
        latency_s: median batch-1 CPU latency in seconds, when measured.
    """

    stage: str
    map50: float
    params: int
    macs: int
    latency_s: float | None = None


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    latency: bool = False,
    threads: int | None = None,
) -> Path:
    """Write ``run_dir/report/report.md`` and its figures for a finished (or partly finished) recipe run.

    Args:
        run_dir: a folder written by :func:`~grouppruner.recipe.run_recipe`.
        latency: also measure each stage model's median batch-1 latency (``(1, 3, S, S)`` input at the run's
            image size) on this machine.
        threads: torch threads for the latency measurement (default: the current setting).

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``results.json``.
        DataError: ``results.json`` is not a recipe result (names the file and what is wrong).
        CheckpointError: a stage checkpoint cannot be read (names the file).
    """
    run = Path(run_dir)
    config, records = read_run(run)
    if not records:
        raise DataError(f"{run / 'results.json'}: no finished stage to report")
    out = run / "report"
    out.mkdir(exist_ok=True)
    size = int(config["image_size"])
    models = {r["stage"]: _load_stage(Path(r["checkpoint"]), config) for r in records}
    example = torch.zeros(1, 3, size, size)
    rows = [
        StageRow(
            stage=r["stage"],
            map50=float(r["map50"]),
            params=int(r["params"]),
            macs=int(r["macs"]),
            latency_s=measure_latency(models[r["stage"]], example, threads=threads) if latency else None,
        )
        for r in records
    ]
    lines = [f"# grouppruner run: {run.resolve().name}", "", _stage_table(rows), ""]
    lines += _figure("Metrics per stage", _plot_stages(rows, out / "stages.png"))
    if "dense" in models and "sparse" in models:
        snapshots = {stage: _layer_group_gammas(models[stage], example) for stage in ("dense", "sparse")}
        lines += _figure("|gamma| per layer group, before and after sparse training", _plot_gammas(snapshots, out))
        lines += _small_gamma_table(snapshots)
    if "dense" in models and "pruned" in models:
        lines += _figure(
            "Channels per layer before and after pruning",
            _plot_channels(_widths(models["dense"]), _widths(models["pruned"]), out / "channels.png"),
        )
        plans = applied_plans(models["pruned"])
        if plans:
            lines += ["## Pruning plan", "", "```", plans[-1].summary(), "```", ""]
    report = out / "report.md"
    with atomic_write(report) as handle:
        handle.write("\n".join(lines).encode())
    logger.info("report written to %s", report)
    return report


def read_run(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``config`` and the stage records of a run folder's ``results.json``
    (:func:`~grouppruner.run_folder.read_results`: paths made usable from the current directory).

    Raises:
        FileNotFoundError: the folder has no ``results.json``.
        DataError: ``results.json`` is not a recipe result (names the file and what is wrong).
    """
    return read_results(run_dir)


def _load_stage(path: Path, config: Mapping[str, Any]) -> nn.Module:
    if not path.is_file():
        raise CheckpointError(f"{path}: stage checkpoint missing; run the recipe again to recreate it")
    if config.get("cfg"):  # a run on a darknet cfg
        from .darknet import load_darknet

        return load_darknet(config["cfg"], path)[0].eval()
    model = yolov4(
        len(config["classes"]), backbone=config["backbone"], width=float(config["width"]), depth=float(config["depth"])
    )
    load_pruned(model, path)
    return model.eval()


def _stage_table(rows: Sequence[StageRow]) -> str:
    base = rows[0]
    header = "| stage | mAP@0.5 | mAP kept | params | params % | MACs | MACs % |"
    rule = "|---|---|---|---|---|---|---|"
    if any(r.latency_s is not None for r in rows):
        header += " latency (ms) | latency % |"
        rule += "---|---|"
    lines = [header, rule]
    for r in rows:
        kept = f"{r.map50 / base.map50:.1%}" if base.map50 > 0 else "-"
        line = (
            f"| {r.stage} | {r.map50:.3f} | {kept} | {r.params:,} | {r.params / base.params:.1%} | "
            f"{r.macs:,} | {r.macs / base.macs:.1%} |"
        )
        if r.latency_s is not None and base.latency_s is not None:
            line += f" {1e3 * r.latency_s:.1f} | {r.latency_s / base.latency_s:.1%} |"
        lines.append(line)
    return "\n".join(lines)


def _figure(title: str, path: Path) -> list[str]:
    return [f"## {title}", "", f"![{title}]({path.name})", ""]


def _layer_group_gammas(model: nn.Module, example: Tensor) -> dict[str, Tensor]:
    # The channels sparse training regularizes, grouped as the pruner groups them.
    graph = ChannelGraph(model, example)
    return BNSparsity(graph, schedule=0.0).gammas()


def _small_gamma_table(snapshots: Mapping[str, Mapping[str, Tensor]]) -> list[str]:
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
        fractions = [float((snap[group].abs() < 1e-2).float().mean()) for snap in snapshots.values()]
        lines.append(f"| {group} | {values.numel()} | " + " | ".join(f"{f:.1%}" for f in fractions) + " |")
    return [*lines, ""]


def _widths(model: nn.Module) -> dict[str, int]:
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _plot_stages(rows: Sequence[StageRow], path: Path) -> Path:
    from ..plot import new_figure, save_png

    fig = new_figure(9.0, 3.0)
    axes = fig.subplots(1, 3)
    names = [r.stage for r in rows]
    series = (
        ("mAP@0.5", [r.map50 for r in rows]),
        ("params (M)", [r.params / 1e6 for r in rows]),
        ("MACs (G)", [r.macs / 1e9 for r in rows]),
    )
    for ax, (label, values) in zip(axes, series, strict=True):
        ax.bar(names, values, color="tab:blue")
        ax.set_title(label)
        ax.tick_params(axis="x", labelrotation=30)
    save_png(fig, path)
    return path


def _plot_gammas(snapshots: Mapping[str, Mapping[str, Tensor]], out: Path) -> Path:
    from ..plot import gamma_histograms

    path = out / "gammas.png"
    gamma_histograms(dict(snapshots), path, threshold=1e-2)
    return path


def _plot_channels(before: Mapping[str, int], after: Mapping[str, int], path: Path) -> Path:
    from ..plot import new_figure, save_png

    names = list(before)
    fig = new_figure(max(6.0, 0.12 * len(names)), 3.5)
    ax = fig.subplots()
    positions = list(range(len(names)))
    ax.bar(positions, [before[n] for n in names], color="lightgray", label="before")
    ax.bar(positions, [after.get(n, 0) for n in names], color="tab:blue", label="after")
    ax.set_xlabel("convolution (model order)")
    ax.set_ylabel("output channels")
    ax.legend()
    save_png(fig, path)
    return path
