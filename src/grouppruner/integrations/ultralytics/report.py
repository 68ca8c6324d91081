"""The report of a run folder written by :func:`~grouppruner.integrations.ultralytics.compress` (``grouppruner
yolo``): what each stage did, in numbers and pictures.

:func:`write_report` reads ``results.json`` and the stage checkpoints and writes ``report/report.md`` with, as the
recipe's report (:mod:`grouppruner.recipe.report`, which shares its pieces, :mod:`grouppruner._report`):

- a table of box mAP50-95, mAP50 (mask / keypoint mAP50-95 for segmentation / pose runs), parameters, MACs (and
  optionally measured latency) per stage, relative to the dense model;
- |gamma| per layer group before (dense) and after sparse training: a table, and histograms;
- the widths kept per layer group, from the pruning plan stored in the pruned checkpoint, and per convolution;
- the pruning plan table;
- with ``search_candidates``, the plan search: each candidate's score, the chosen one, the solver's, and the cost.

Figures need the ``plot`` extra (matplotlib); without it the report holds the tables only. The CLI runs it as
``grouppruner report RUN_DIR`` when ``RUN_DIR`` is a YOLO run.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..._report import (
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
from ..._utils.errors import CheckpointError, DataError
from ..._utils.io import atomic_write
from ...profile import measure_latency
from ...pruning import PruningPlan
from ...run_folder import RESULTS_NAME, results_json
from .checkpoint import load
from .flow import STAGES, StageRecord
from .model import channel_graph, detection_model, example_input, plan_records

__all__ = ["plan_search_lines", "read_run", "stage_model", "write_report"]

logger = logging.getLogger(__name__)

# Task metrics in a stage's extra, shown as a column when every stage has them.
_EXTRA_METRICS = {"mask_map50_95": "mask mAP50-95", "pose_map50_95": "pose mAP50-95"}


def read_run(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[StageRecord]]:
    """The options and the stage records of a YOLO run folder's ``results.json``, checkpoint paths usable from
    the current directory (stored relative to the folder; a version-1 file's absolute paths are taken by name).

    Raises:
        FileNotFoundError: the folder has no ``results.json``.
        DataError: ``results.json`` is not a YOLO run (names the file and what is wrong).
    """
    run = Path(run_dir)
    path, saved = results_json(run, "a grouppruner yolo result")
    try:
        options = dict(saved["options"])
        records = [StageRecord(**record) for record in saved["stages"]]
        int(options["imgsz"])
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: not a grouppruner yolo result ({type(error).__name__}: {error})") from error
    order = [r.stage for r in records]
    if order != list(STAGES[: len(order)]):
        raise DataError(f"{path}: stages {order} are not in the flow's order {list(STAGES)}")
    for record in records:
        stored = Path(record.checkpoint)
        record.checkpoint = str(run / (stored.name if stored.is_absolute() else stored))
    return options, records


def stage_model(path: str | os.PathLike[str]) -> nn.Module:
    """The detection module of a stage checkpoint, in fp32 on the CPU, in eval mode, its parameters trainable.

    Raises:
        CheckpointError: the file is missing or cannot be read (names it).
    """
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: stage checkpoint missing; run grouppruner yolo again to recreate it")
    model = detection_model(load(path)).float().cpu().eval()
    # Ultralytics loads checkpoints frozen; the |gamma| snapshots read the BatchNorms sparse training regularizes.
    return model.requires_grad_(True)


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    latency: bool = False,
    threads: int | None = None,
) -> Path:
    """Write ``run_dir/report/report.md`` (and its figures, with the ``plot`` extra) for a YOLO run folder.

    Args:
        run_dir: a folder written by :func:`~grouppruner.integrations.ultralytics.compress`.
        latency: also measure each stage model's median batch-1 latency (``(1, 3, imgsz, imgsz)`` input) here.
        threads: torch threads for the latency measurement (default: the current setting).

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``results.json``.
        DataError: ``results.json`` is not a YOLO run, or holds no finished stage (names the file).
        CheckpointError: a stage checkpoint cannot be read (names the file).
    """
    run = Path(run_dir)
    options, records = read_run(run)
    if not records:
        raise DataError(f"{run / RESULTS_NAME}: no finished stage to report")
    imgsz = int(options["imgsz"])
    models = {r.stage: stage_model(r.checkpoint) for r in records}
    extras = [k for k in _EXTRA_METRICS if all(k in r.extra for r in records)]
    rows = []
    for r in records:
        model = models[r.stage]
        metrics = {"mAP50-95": r.map50_95, "mAP50": r.map50} | {_EXTRA_METRICS[k]: r.extra[k] for k in extras}
        # On a copy: the head caches its anchors as inference tensors, which a later trace could not use.
        timed = copy.deepcopy(model) if latency else None
        seconds = measure_latency(timed, example_input(model, imgsz), threads=threads) if timed else None
        rows.append(Row(r.stage, metrics, r.params, r.macs, seconds))
    plots = importlib.util.find_spec("matplotlib") is not None
    out = run / "report"
    out.mkdir(exist_ok=True)
    lines = [f"# grouppruner yolo run: {run.resolve().name}", "", stage_table(rows), ""]
    if plots:
        lines += figure("Metrics per stage", plot_stages(rows, out / "stages.png"))
    else:
        lines += ["Figures need the `plot` extra (matplotlib): tables only.", ""]
    if "dense" in models and "sparse" in models:
        snapshots = {s: layer_group_gammas(channel_graph(models[s], imgsz=imgsz)) for s in ("dense", "sparse")}
        title = "|gamma| per layer group, before and after sparse training"
        lines += figure(title, plot_gammas(snapshots, out)) if plots else [f"## {title}", ""]
        lines += gamma_table(snapshots)
    if "pruned" in models:
        lines += _widths_kept(models, out, plots)
        search = next(r.extra.get("search") for r in records if r.stage == "pruned")
        lines += plan_search_lines(search) if search else []
    report = out / "report.md"
    with atomic_write(report) as handle:
        handle.write("\n".join(lines).encode())
    logger.info("report written to %s", report)
    return report


def plan_search_lines(search: dict[str, Any]) -> list[str]:
    """The report's section on the pruned stage's plan search, from its record (``extra["search"]`` of the
    ``pruned`` stage, :attr:`YoloPlanSearch.summary <grouppruner.integrations.ultralytics.YoloPlanSearch>`)."""
    lines = [
        "## Plan search",
        "",
        f"{search['candidates']} plans of the budget, each scored by Ultralytics' validator (fitness) on "
        f"{search['scored_images']} training images after its BatchNorm statistics were recomputed; the val split "
        "stayed out of the choice.",
        "",
        "| candidate | fitness | |",
        "|---|---|---|",
    ]
    for name, score in search["scores"].items():
        chosen = "chosen" if name == f"{search['chosen']}:{search['kind']}" else ""
        lines.append(f"| {name} | {'no plan met the budget' if score is None else f'{score:.4f}'} | {chosen} |")
    ratio = search.get("candidate_per_epoch")
    cost = f"{search['seconds_per_candidate']:.1f} s a candidate"
    cost += "" if ratio is None else f", {ratio:.3f} of a training epoch ({search['epoch_seconds']:.1f} s)"
    return [*lines, "", f"Cost: {cost}; {search['seconds']:.1f} s in all.", ""]


def _widths_kept(models: dict[str, nn.Module], out: Path, plots: bool) -> list[str]:
    plans = [PruningPlan.from_dict(record) for record in plan_records(models["pruned"])]
    if not plans:
        return ["## Widths kept", "", "The pruned checkpoint holds no pruning plan.", ""]
    plan = plans[-1]
    title = "Channels per layer group before and after pruning"
    lines = [f"## {title}", ""]
    if plots:
        before = {g.name: g.channels_before for g in plan.layer_groups}
        after = {g.name: g.channels_after for g in plan.layer_groups}
        lines = figure(title, plot_widths(before, after, out / "layer_groups.png", xlabel="layer group"))
    lines += ["| layer group | channels before | channels after | kept |", "|---|---|---|---|"]
    for g in plan.layer_groups:
        kept = g.channels_after / max(g.channels_before, 1)
        lines.append(f"| {g.name} | {g.channels_before} | {g.channels_after} | {kept:.1%} |")
    lines.append("")
    if plots and "dense" in models:
        widths = {stage: conv_widths(models[stage]) for stage in ("dense", "pruned")}
        lines += figure(
            "Channels per convolution before and after pruning",
            plot_widths(widths["dense"], widths["pruned"], out / "channels.png", xlabel="convolution (model order)"),
        )
    return [*lines, "## Pruning plan", "", "```", plan.summary(), "```", ""]
