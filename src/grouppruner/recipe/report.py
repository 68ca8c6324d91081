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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._report import (
    Row,
    conv_widths,
    figure,
    gamma_table,
    layer_group_gammas,
    plot_gammas,
    plot_stages,
    plot_widths,
    stage_table,
)
from .._utils.errors import DataError
from .._utils.io import atomic_write
from ..checkpoint import CheckpointError, load_pruned
from ..detection.models import yolov4
from ..graph import ChannelGraph
from ..profile import measure_latency
from ..pruning import applied_plans
from ..run_folder import read_results

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
    stage_rows = [
        StageRow(
            stage=r["stage"],
            map50=float(r["map50"]),
            params=int(r["params"]),
            macs=int(r["macs"]),
            latency_s=measure_latency(models[r["stage"]], example, threads=threads) if latency else None,
        )
        for r in records
    ]
    rows = [Row(r.stage, {"mAP@0.5": r.map50}, r.params, r.macs, r.latency_s) for r in stage_rows]
    lines = [f"# grouppruner run: {run.resolve().name}", "", stage_table(rows), ""]
    lines += figure("Metrics per stage", plot_stages(rows, out / "stages.png"))
    if "dense" in models and "sparse" in models:
        snapshots = {stage: layer_group_gammas(ChannelGraph(models[stage], example)) for stage in ("dense", "sparse")}
        lines += figure("|gamma| per layer group, before and after sparse training", plot_gammas(snapshots, out))
        lines += gamma_table(snapshots)
    if "dense" in models and "pruned" in models:
        widths = {stage: conv_widths(models[stage]) for stage in ("dense", "pruned")}
        lines += figure(
            "Channels per layer before and after pruning",
            plot_widths(widths["dense"], widths["pruned"], out / "channels.png", xlabel="convolution (model order)"),
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
