"""Does the method keep the detector's accuracy where pruning is hard? Ours against Torch-Pruning's recipes.

On generated VOC-format data with a reduced YOLOv4 (the ``grouppruner demo`` model), every student arm starts
from one dense teacher and trains for the same number of epochs (``sparse_epochs + recover_epochs``), at two
budgets (35 % and 15 % of the teacher's params):

- ``teacher + fine-tune``: the teacher trained for the students' epochs more (AdamW at the recovery rate), the
  reference of "mAP kept", so that a student's score is not credited with extra training;
- Torch-Pruning's standard recipes (seed 0), every one pruned to the budget (``pruning_ratio`` bisected, heads
  ignored) and fine-tuned for the rest of the epochs:
  ``GroupMagnitudeImportance(p=2)`` with a uniform ratio and no sparse stage (its README usage); global
  ``BNScaleImportance`` with no sparse stage; network slimming (``BNScalePruner.regularize`` for
  ``sparse_epochs``, with the recipe's SGD, then global BN-scale pruning) at five rates; and DepGraph's group
  sparsity (``GroupNormPruner.regularize``, uniform ratio);
- ``ours``: the recipe's stages with its defaults, except the dynamic rule's ``sparsity_keep``, set by its
  documented rule (a little below the square root of the budget: 0.55 at 35 %, 0.35 at 15 %);
- then ours and the best Torch-Pruning arm of each budget at seeds 1 and 2 as well;
- at the tight budget, ablations of the recovery from ours' pruned model (seed 0): no distillation, each
  distillation term alone, the attention weight (1, 3, 10, 30), the distilled layers (backbone, neck, both), and
  of the method (constant L1, one global threshold, the dynamic rule's ``keep`` and ``warmup``).

At the tight budget two more parts study why ours loses there (issue 27):

- ``search``: ours with the plan chosen by ``PlanSearch`` on ours' sparse model (scored on a generated split of
  its own), then ours' recovery; seed 0 first, seeds 1 and 2 last, with the slimming arm (rate 0.03) at those
  seeds;
- ``diagnosis`` (seed 0): ours' and slimming's (rate 0.03) widths, each cut from the other's sparse model and from
  a fresh initialisation, fine-tuned like the Torch-Pruning arms, next to ours fine-tune only and slimming;
- ``search-macs``: the solver's plan and the searched plan at one MACs budget (ours' MACs at 15 % of the
  params), from ours' sparse model: whether the search still leads when it cannot spend the budget on MACs.

Every arm runs in its own folder under ``--out`` and writes ``arm.json`` when it ends; a rerun skips finished arms
and resumes a killed one at its last epoch. A full run also writes each finished arm's record to ``--results``
(default ``benchmarks/results/quality/<arm>.json``, committed with the code): a later run in a fresh work folder
skips those arms and reruns only finished arms whose checkpoints a pending arm needs. Digests cover the arm's spec,
the settings (not the work folder's path) and the teacher's bytes; the teacher trains deterministically on one
thread, so a later session that retrains it gets the same digests. ``--jobs N`` runs N worker processes (each
takes the next arm that no other worker holds); ``--only`` runs a part (``teacher``, ``family``, ``seeds``,
``ablations``, ``search``, ``diagnosis``, ``widths``: ours planned at free widths instead of on the runtime's
channel block, ``search-macs``, ``distill``: ours fine-tune only and ours with the channel-wise term instead of
attention, at every seed); ``--report`` only writes the tables and the figure from the finished arms.

Usage::

    python benchmarks/quality.py --quick --jobs 2         # smoke run (not for quoting), a few minutes on 2 cores
    python benchmarks/quality.py --jobs 2 --write-docs    # the full run; rewrites docs/benchmarks.md's tables
    nice -n 15 python benchmarks/quality.py --budgets 0.15 --only search diagnosis --threads 1   # issue 27's parts

The tables go to stdout and ``<out>/quality.md``, the figure to ``<out>/quality.png``; ``--write-docs`` (full run
only) also replaces the part of ``docs/benchmarks.md`` between the ``quality:begin`` / ``quality:end`` markers and
writes ``docs/img/quality.png`` (numbers are never edited by hand).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _quality_arms import ArmResult, ArmSpec, Context, read_result, run_arm, write_result

from grouppruner import CheckpointError, UsageError
from grouppruner.detection.train import evaluate
from grouppruner.profile import count_macs, count_params
from grouppruner.recipe import RecipeConfig, RecipeRun, load_weights
from grouppruner.recipe.config import ADDED_OPTIONS
from grouppruner.run_folder import RunLock, file_record

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
FIGURE = DOCS.parent / "img" / "quality.png"

# The full run uses the demo's settings with a 300-image validation split; --quick shrinks data and epochs.
FULL: dict[str, Any] = {"num_images": 600, "val_fraction": 0.5}
QUICK: dict[str, Any] = {
    "num_images": 240,
    "val_fraction": 0.5,
    "dense_epochs": 24,
    "sparse_epochs": 6,
    "recover_epochs": 6,
    "finetune_epochs": 2,
    # the L1 pull lr * s * steps / (1 - momentum) of the full run, over 6 epochs of 8 steps instead of 16 x 19
    "sparsity": 0.19,
}
BUDGETS = (0.35, 0.15)
TP_SLIMMING_RATES = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1)
TP_GROUP_NORM_RATE = 5e-4
OURS = "ours (dynamic L1, per-group thresholds, attention + output distillation)"
PARTS = ("teacher", "family", "seeds", "ablations", "search", "diagnosis", "widths", "search-macs", "distill")
SEARCH_CANDIDATES = 16
# ours' MACs at 15 % of the params (seed 0, 21.5 %): the search at one MACs budget cannot buy MACs with params
SEARCH_MACS = 0.215
DIAGNOSIS_SLIMMING = "slimming-0.03"  # the best Torch-Pruning arm at 15 % in the last full run
# Finished arms' records, committed with the code: work folders do not outlive a session, these do.
RESULTS = Path(__file__).resolve().parent / "results" / "quality"

# (label, RecipeConfig changes, stages reused from ours at the same seed, run at every seed) at the tight budget
RECOVERY = ("sparse", "pruned")
ABLATIONS: list[tuple[str, dict[str, Any], tuple[str, ...], bool]] = [
    ("ours, fine-tune only (no distillation)", {"distill_weight": 0.0, "output_distill_weight": 0.0}, RECOVERY, True),
    ("ours, output term only (no attention)", {"distill_weight": 0.0}, RECOVERY, True),
    # weight 0.05: the channel-wise term's gradient then pulls about as hard as attention's at weight 10 (x1.8 the
    # detection loss's on ours' pruned seed-0 model)
    (
        "ours, channel-wise term instead of attention (weight 0.05)",
        {"distill_weight": 0.0, "channel_distill_weight": 0.05},
        RECOVERY,
        True,
    ),
    (
        "ours, channel-wise term instead of attention (weight 0.1)",
        {"distill_weight": 0.0, "channel_distill_weight": 0.1},
        RECOVERY,
        True,
    ),
    ("ours, attention only (weight 10, no output term)", {"output_distill_weight": 0.0}, RECOVERY, False),
    (
        "ours, attention only (weight 30, no output term)",
        {"output_distill_weight": 0.0, "distill_weight": 30.0},
        RECOVERY,
        False,
    ),
    ("ours, attention weight 1", {"distill_weight": 1.0}, RECOVERY, False),
    ("ours, attention weight 3", {"distill_weight": 3.0}, RECOVERY, False),
    ("ours, attention weight 30", {"distill_weight": 30.0}, RECOVERY, False),
    ("ours, attention on the backbone only", {"distill_layers": "backbone"}, RECOVERY, False),
    ("ours, attention on the neck only", {"distill_layers": "neck"}, RECOVERY, False),
    ("ours, one global threshold (not per group)", {"prune_scope": "global"}, ("sparse",), False),
    ("ours, constant L1 (not dynamic)", {"sparsity_schedule": "constant"}, (), False),
    ("ours, dynamic rule keep 0.3 (not 0.35)", {"sparsity_keep": 0.3}, (), False),
    ("ours, dynamic rule warmup 0.1 (not 0.2)", {"sparsity_warmup": 0.1}, (), False),
]


# ours from its own sparse model, planned at free widths instead of on onnxruntime's channel block (issue 25's default)
FREE_WIDTHS: tuple[str, dict[str, Any], tuple[str, ...]] = (
    "ours, free widths (runtime='torch', no channel block)",
    {"runtime": "torch"},
    ("sparse",),
)


def keep_for(budget: float) -> float:
    """The dynamic rule's ``sparsity_keep`` for a parameter budget: a little below ``sqrt(budget)``."""
    return round(math.sqrt(budget) - 0.04, 2)


def _tag(budget: float) -> str:
    return f"p{round(budget * 100)}"


def _tp_family(budget: float, seed: int) -> list[ArmSpec]:
    tag = _tag(budget)

    def arm(name: str, label: str, sparse: ArmSpec | None = None, **options: Any) -> list[ArmSpec]:
        if sparse is not None:
            options["sparse"] = sparse.key
        main = ArmSpec(
            f"{tag}/tp-{name}_seed{seed}",
            f"Torch-Pruning: {label}",
            "tp",
            "torch-pruning",
            budget,
            seed,
            options,
            needs=(sparse.key,) if sparse else (),
        )
        return [sparse, main] if sparse else [main]

    def sparse(method: str, rate: float) -> ArmSpec:
        options = {"method": method, "rate": rate}
        return ArmSpec(f"tp-sparse/{method}-{rate:g}_seed{seed}", "", "tp-sparse", "stage", None, seed, options)

    arms = arm(
        "magnitude-uniform", "magnitude (L2), uniform ratio, fine-tune", importance="magnitude", **{"global": False}
    )
    arms += arm("bn-global", "global BN-scale, no sparse stage, fine-tune", importance="bn", **{"global": True})
    for rate in TP_SLIMMING_RATES:
        arms += arm(
            f"slimming-{rate:g}",
            f"BN-scale slimming at {rate:g}, global BN-scale, fine-tune",
            sparse("bn", rate),
            importance="bn",
            **{"global": True},
        )
    arms += arm(
        f"groupnorm-{TP_GROUP_NORM_RATE:g}",
        f"GroupNormPruner at {TP_GROUP_NORM_RATE:g}, uniform ratio, fine-tune",
        sparse("groupnorm", TP_GROUP_NORM_RATE),
        importance="magnitude",
        **{"global": False},
    )
    return arms


def _ours(budget: float, seed: int, label: str = OURS, **changes: Any) -> ArmSpec:
    slug = label.split("(")[0] if label == OURS else label
    slug = "-".join("".join(c if c.isalnum() else " " for c in slug).split())
    return ArmSpec(
        f"{_tag(budget)}/{slug}_seed{seed}",
        label,
        "ours",
        "ours" if label == OURS else "ablation",
        budget,
        seed,
        {"sparsity_keep": keep_for(budget), **changes},
    )


def _ablation(budget: float, seed: int, label: str, changes: dict[str, Any], reused: tuple[str, ...]) -> ArmSpec:
    source = _ours(budget, seed)
    spec = _ours(budget, seed, label, **changes)
    return dataclasses.replace(spec, needs=(source.key,) if reused else (), reuse=dict.fromkeys(reused, source.key))


def _search(budget: float, seed: int) -> list[ArmSpec]:
    """Ours with the plan chosen by PlanSearch on ours' sparse model (after it), then ours' recovery."""
    source = _ours(budget, seed)
    spec = ArmSpec(
        f"{_tag(budget)}/ours-search-{SEARCH_CANDIDATES}_seed{seed}",
        f"ours, plan searched ({SEARCH_CANDIDATES} candidates, adaptive BatchNorm)",
        "ours-search",
        "ours-search",
        budget,
        seed,
        {"sparsity_keep": keep_for(budget), "search_candidates": SEARCH_CANDIDATES},
        needs=(source.key,),
        reuse={"sparse": source.key},
    )
    return [source, spec]


def _search_at_macs(budget: float, seed: int) -> list[ArmSpec]:
    """The solver's and the searched plan at ``SEARCH_MACS`` of the MACs, both from ours' sparse model at
    ``budget``, both with ours' recovery."""
    source = _ours(budget, seed)
    options = {"sparsity_keep": keep_for(budget), "prune_by": "macs", "target_macs": SEARCH_MACS}
    label = f"ours at {SEARCH_MACS:.1%} of the MACs"
    solver = _ours(budget, seed, label, **options)
    solver = dataclasses.replace(solver, needs=(source.key,), reuse={"sparse": source.key})
    search = ArmSpec(
        f"{_tag(budget)}/ours-macs-search-{SEARCH_CANDIDATES}_seed{seed}",
        f"{label}, plan searched ({SEARCH_CANDIDATES} candidates, adaptive BatchNorm)",
        "ours-search",
        "ours-search",
        budget,
        seed,
        {**options, "search_candidates": SEARCH_CANDIDATES},
        needs=(source.key,),
        reuse={"sparse": source.key},
    )
    return [source, solver, search]


def _slimming(budget: float, seed: int) -> list[ArmSpec]:
    """The slimming arm of the diagnosis (the best tuned Torch-Pruning arm at 15 %) and its sparse stage."""
    family = _tp_family(budget, seed)
    slimming = next(a for a in family if a.key.endswith(f"tp-{DIAGNOSIS_SLIMMING}_seed{seed}"))
    return [next(a for a in family if a.key == slimming.options["sparse"]), slimming]


def _diagnosis(budget: float, seed: int) -> list[ArmSpec]:
    """Each method's widths from the other's weights and from a fresh initialisation, plain fine-tuning; with the
    two arms they are compared to (ours fine-tune only, and the slimming arm) and what those need."""
    ours = _ours(budget, seed)
    finetune_only = _ablation(budget, seed, *next((a[0], a[1], a[2]) for a in ABLATIONS if "fine-tune only" in a[0]))
    slimming_sparse, slimming = _slimming(budget, seed)
    arms = [ours, finetune_only, slimming_sparse, slimming]
    names = {"ours": "ours'", "slimming": "slimming's", "reinit": "fresh"}
    for widths, weights in (("ours", "slimming"), ("slimming", "ours"), ("ours", "reinit"), ("slimming", "reinit")):
        arms.append(
            ArmSpec(
                f"{_tag(budget)}/diagnosis-{widths}-widths-{weights}-weights_seed{seed}",
                f"diagnosis: {names[widths]} widths, {names[weights]} weights, fine-tune",
                "transfer",
                "diagnosis",
                budget,
                seed,
                {"widths": widths, "weights": weights, "ours": ours.key, "slimming_sparse": slimming_sparse.key},
                needs=(ours.key, slimming_sparse.key),
            )
        )
    return arms


def arm_list(args: argparse.Namespace, done: dict[str, ArmResult]) -> list[ArmSpec]:
    """Every arm in the order of priority; the best Torch-Pruning arm's extra seeds once its family is done."""
    first, *more = args.seeds
    parts = set(args.only or PARTS)
    arms: list[ArmSpec] = []
    if "teacher" in parts:
        arms.append(ArmSpec("teacher_finetuned", "teacher + fine-tune", "teacher-ft", "teacher", None, first))
    families = {budget: _tp_family(budget, first) for budget in args.budgets}
    if "family" in parts:
        for budget in args.budgets:
            arms += [_ours(budget, first), *families[budget]]
    if "seeds" in parts:
        for budget in args.budgets:
            arms += [_ours(budget, seed) for seed in more]
            family = [a for a in families[budget] if a.family == "torch-pruning"]
            if all(a.key in done for a in family):
                best = max(family, key=lambda a: done[a.key].final)
                for seed in more:
                    arms += _tp_family_member(best, seed)
    if "ablations" in parts and not args.no_ablations:
        budget = min(args.budgets)
        for label, changes, reused, every_seed in ABLATIONS:
            for seed in args.seeds if every_seed else [first]:
                arms.append(_ablation(budget, seed, label, changes, reused))
    # the search and the diagnosis at the tight budget: seed 0 of both first, the search's other seeds after
    tight = min(args.budgets)
    if "search" in parts:
        arms += _search(tight, first)
    if "diagnosis" in parts:
        arms += _diagnosis(tight, first)
    if "search" in parts:
        arms += [a for seed in more for a in _search(tight, seed)]
    if "search-macs" in parts:  # seed 0 before the rest: whether the search's lead is the MACs it buys
        arms += _search_at_macs(tight, first)
    if "search" in parts:
        arms += [a for seed in more for a in _slimming(tight, seed)]  # the baseline the search is compared to
    if "distill" in parts:  # what distillation adds over fine-tuning alone, and the channel-wise term, every seed
        finetune_only = next((a[0], a[1], a[2]) for a in ABLATIONS if "fine-tune only" in a[0])
        channel = [(a[0], a[1], a[2]) for a in ABLATIONS if "channel-wise" in a[0]]
        for seed in args.seeds:
            arms += [_ours(tight, seed), _ablation(tight, seed, *finetune_only)]
            arms += [_ablation(tight, seed, *arm) for arm in channel]
    if "search-macs" in parts:
        arms += [a for seed in args.seeds for a in _search_at_macs(tight, seed)]
    if "widths" in parts:  # what putting widths on the runtime's channel block (the default) costs at 15 %
        arms += [a for seed in args.seeds for a in (_ours(tight, seed), _ablation(tight, seed, *FREE_WIDTHS))]
    unique: dict[str, ArmSpec] = {}
    for arm in arms:
        unique.setdefault(arm.key, arm)
    return list(unique.values())


def _tp_family_member(best: ArmSpec, seed: int) -> list[ArmSpec]:
    """The arm ``best`` at another seed (with its own sparse stage, if it has one)."""
    same = next(a for a in _tp_family(best.budget or 0.0, seed) if a.label == best.label)
    if "sparse" not in same.options:
        return [same]
    sparse = next(a for a in _tp_family(best.budget or 0.0, seed) if a.key == same.options["sparse"])
    return [sparse, same]


def run_queue(args: argparse.Namespace, context: Context) -> None:
    """Run every unfinished arm this process can take, in priority order, until none is left.

    An arm held by another worker (its folder's lock) is left to it; an arm whose ``needs`` are unfinished waits.
    """
    while True:
        done = finished(args, context)
        every = {a.key: a for a in arm_list(argparse.Namespace(**{**vars(args), "only": None}), done)}
        local = {key for key in done if read_result(context.folder(key), every[key].digest(context.settings))}
        wanted = {a.key for a in arm_list(args, done) if a.key not in done}
        grown = True
        while grown:  # an arm finished in an earlier session left its record, not its checkpoints
            extra = {n for key in wanted for n in every[key].needs if n not in local} - wanted
            wanted |= extra
            grown = bool(extra)
        pending = [a for a in every.values() if a.key in wanted]
        if not pending:
            return
        busy = False
        for spec in pending:
            if not all(need in local for need in spec.needs):
                continue
            folder = context.folder(spec.key)
            folder.mkdir(parents=True, exist_ok=True)
            try:
                with RunLock(folder):
                    if read_result(folder, spec.digest(context.settings)) is None:
                        _run_one(spec, context, done, args.results)
                break  # the list may have grown (the best Torch-Pruning arm): start again from the top
            except UsageError:
                busy = True  # another worker holds it
        else:
            if not busy and not any(all(n in local for n in a.needs) for a in pending):
                waiting = ", ".join(f"{a.key} (needs {', '.join(a.needs)})" for a in pending)
                raise SystemExit(f"quality.py: these arms wait for arms that are not run: {waiting}")
            time.sleep(10)


def _run_one(spec: ArmSpec, context: Context, done: dict[str, ArmResult], results: Path | None) -> None:
    started = time.strftime("%H:%M:%S")
    print(f"[{started}] {spec.key}: {spec.label or spec.kind} ...", flush=True)
    result = run_arm(spec, context, done)
    result.digest = spec.digest(context.settings)
    write_result(context.folder(spec.key), result)
    if results is not None:
        committed = results / f"{spec.key}.json"
        committed.parent.mkdir(parents=True, exist_ok=True)
        write_result(committed.parent, result, name=committed.name)
    print(
        f"[{time.strftime('%H:%M:%S')}] {spec.key}: final mAP@0.5 {result.final:.3f} ({result.seconds / 60:.1f} min)",
        flush=True,
    )


def finished(args: argparse.Namespace, context: Context) -> dict[str, ArmResult]:
    """The arms of :func:`arm_list` (every part) that have finished with the current settings, by key."""
    done: dict[str, ArmResult] = {}
    every_part = argparse.Namespace(**{**vars(args), "only": None})  # a part's arms may need another part's
    for _ in range(3):  # the list grows as the best Torch-Pruning arms become known
        for spec in arm_list(every_part, done):
            digest = spec.digest(context.settings)
            result = read_result(context.folder(spec.key), digest)
            if result is None and args.results is not None:
                result = read_result(args.results, digest, name=f"{spec.key}.json")
            if result is not None:
                done[spec.key] = result
    return done


def prepare_teacher(args: argparse.Namespace, base: RecipeConfig) -> tuple[Path, ArmResult]:
    """The dense teacher: ``--teacher-checkpoint`` checked against these settings, or trained in ``<out>/teacher``.

    Raises:
        SystemExit: (one line) the work folder holds a run with other settings, the checkpoint is missing, does
            not fit the configured model, or was trained on other data (its anchors are not this data's).
    """
    recorded = args.out / "settings.json"
    options = json.loads(json.dumps(base_settings(base)))
    if recorded.is_file() and json.loads(recorded.read_text(encoding="utf-8")) != options:
        raise SystemExit(
            f"quality.py: {args.out} holds a run with other settings ({recorded}); use another --out or delete it"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(options, indent=2), encoding="utf-8")
    run = RecipeRun(base)
    if args.teacher_checkpoint is not None:
        path = args.teacher_checkpoint
        if not path.is_file():
            raise SystemExit(f"quality.py: teacher checkpoint {path}: no such file")
    else:
        path = Path(base.out_dir) / "dense.pt"
    run.out.mkdir(parents=True, exist_ok=True)
    with RunLock(run.out):
        run.prepare()  # generates the data set in <out>/teacher/data the first time: every arm reads it
        if args.teacher_checkpoint is None and not path.is_file():
            print(f"[{time.strftime('%H:%M:%S')}] training the teacher ({base.dense_epochs} epochs) ...", flush=True)
            run.run_stage("dense")
    model = run.new_model()
    try:
        load_weights(model, path)
    except CheckpointError as error:
        raise SystemExit(f"quality.py: teacher checkpoint {error}") from None
    if not torch.allclose(model.anchors, run.anchors, atol=1e-3):
        raise SystemExit(
            f"quality.py: teacher checkpoint {path}: its anchors are not those fitted to this data set (a model "
            "trained on other data or at another image size); omit --teacher-checkpoint to train one with these "
            "settings"
        )
    metrics = evaluate(model, run.val_loader)
    teacher = ArmResult(
        key="teacher",
        label="teacher (dense)",
        family="teacher",
        budget=None,
        seed=base.seed,
        params=count_params(model),
        macs=count_macs(model.eval(), run.example),
        final=float(metrics["map"]),
    )
    return path, teacher


def base_settings(base: RecipeConfig) -> dict[str, Any]:
    """The base options as the work folder and the arm digests record them: an option added since the committed
    records (:data:`~grouppruner.recipe.config.ADDED_OPTIONS`) is left out while it keeps its default."""
    options = dataclasses.asdict(base)
    return {k: v for k, v in options.items() if k not in ADDED_OPTIONS or v != ADDED_OPTIONS[k]}


def recorded_teacher(args: argparse.Namespace, base: RecipeConfig) -> tuple[str, ArmResult] | None:
    """For ``--report`` where no teacher was trained or given: the teacher of the committed records (its digest,
    mAP and size, from ``teacher.json``), so that a fresh clone reports them without training; else ``None``."""
    if not args.report or args.teacher_checkpoint is not None or (Path(base.out_dir) / "dense.pt").is_file():
        return None
    path = args.results / "teacher.json" if args.results is not None else None
    record = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}
    if not {"sha256", "map50", "params", "macs"} <= set(record):
        return None
    size = record["params"], record["macs"]
    return record["sha256"], ArmResult("teacher", "teacher (dense)", "teacher", None, base.seed, *size, record["map50"])


def check_teacher(results: Path, sha256: str, teacher: ArmResult, threads: int) -> None:
    """Record the teacher of the committed arm records, or warn when this one differs (then none of them match)."""
    record = results / "teacher.json"
    theirs = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    if not theirs or (theirs["sha256"] == sha256 and "params" not in theirs):
        # the first record, or one written before it kept the teacher's size (which --report needs)
        mine = {"sha256": sha256, "map50": round(teacher.final, 4), "threads": threads}
        results.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**mine, **theirs, "params": teacher.params, "macs": teacher.macs}, indent=2)
        record.write_text(text + "\n", encoding="utf-8")
        return
    map50 = teacher.final
    if theirs.get("sha256") != sha256:
        print(
            f"quality.py: warning: the records in {results} come from teacher {theirs.get('sha256')} (mAP@0.5 "
            f"{theirs.get('map50')}, trained on {theirs.get('threads')} thread(s)); this teacher is {sha256} "
            f"({map50:.4f}, {threads} thread(s)): no record matches, every arm runs again",
            flush=True,
        )


def _cell(values: Sequence[float | None], percent_of: float | None = None) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    scale = 100.0 / percent_of if percent_of else 1.0
    digits = 1 if percent_of else 3
    mean = statistics.fmean(present) * scale
    if len(present) == 1:
        return f"{mean:.{digits}f}"
    spread = (max(present) - min(present)) * scale
    return f"{mean:.{digits}f} ± {spread / 2:.{digits}f}"


def _rows(arms: Sequence[ArmResult]) -> dict[str, list[ArmResult]]:
    rows: dict[str, list[ArmResult]] = {}
    for arm in arms:
        rows.setdefault(arm.label, []).append(arm)
    return rows


def budget_table(arms: Sequence[ArmResult], teacher: ArmResult, reference: ArmResult | None) -> str:
    """One budget's Markdown table: one row per arm label, seeds pooled (mean ± half the spread)."""
    lines = [
        "| arm | seeds | params % | MACs % | mAP@0.5 after sparse | after pruning | final mAP@0.5 | "
        "% of the fine-tuned teacher | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, group in _rows(arms).items():
        finals = [a.final for a in group]
        kept = _cell(finals, reference.final) if reference is not None and reference.final > 0 else "-"
        lines.append(
            f"| {label} | {', '.join(str(a.seed) for a in group)} | {_cell([a.params for a in group], teacher.params)} "
            f"| {_cell([a.macs for a in group], teacher.macs)} | {_cell([a.sparse for a in group])} "
            f"| {_cell([a.pruned for a in group])} | {_cell(finals)} | {kept} "
            f"| {statistics.fmean(a.seconds for a in group) / 60:.0f} |"
        )
    lines.append(
        "\nminutes: wall-clock of the arm's own stages (search included; a stage reused from another arm counts "
        "there), mean over seeds, one thread on a shared 2-core machine."
    )
    return "\n".join(lines)


def headline(budget: float, arms: Sequence[ArmResult], reference: ArmResult | None) -> str:
    """Ours (and ours with the plan search, where it ran) against the best Torch-Pruning arm at one budget, with
    issue 27's goals checked."""
    ours = [a.final for a in arms if a.family == "ours"]
    family = _rows([a for a in arms if a.family == "torch-pruning"])
    if not ours or not family:
        return f"At {budget:.0%}: not every headline arm has finished."
    best_label, best = max(family.items(), key=lambda item: item[1][0].final if item[1][0].seed == 0 else 0.0)
    searched = [a.final for a in arms if a.family == "ours-search" and a.label.startswith("ours, plan searched")]
    lines = [_versus(budget, "ours", ours, best_label.split(": ", 1)[-1], [a.final for a in best], reference)]
    if searched:
        name = f"ours with the plan search ({SEARCH_CANDIDATES} candidates)"
        lines.append(_versus(budget, name, searched, "the same arm", [a.final for a in best], reference))
    return "\n\n".join(lines)


def _versus(
    budget: float, name: str, ours: list[float], tp_name: str, tp: list[float], reference: ArmResult | None
) -> str:
    lead = (statistics.fmean(ours) - statistics.fmean(tp)) * 100
    kept = statistics.fmean(ours) / reference.final * 100 if reference is not None and reference.final else math.nan
    separate = (min(ours) > max(tp) or max(ours) < min(tp)) and min(len(ours), len(tp)) > 1
    spread = (
        "are one a side (no overlap test)"
        if min(len(ours), len(tp)) < 2
        else "overlap"
        if not separate
        else "do not overlap"
        if lead > 0
        else "do not overlap (Torch-Pruning ahead)"
    )
    teacher = (
        f"it keeps {kept:.1f} % of the fine-tuned teacher" if not math.isnan(kept) else "teacher + fine-tune not run"
    )
    need_lead, need_kept = (1.0, 95.0) if budget < 0.25 else (0.0, 99.0)
    met = lead >= need_lead and lead > 0 and separate and kept >= need_kept
    return (
        f"At {budget:.0%} of the params: {name} {statistics.fmean(ours):.3f} (seeds: "
        f"{', '.join(f'{v:.3f}' for v in ours)}) against the best Torch-Pruning arm, {tp_name}, "
        f"{statistics.fmean(tp):.3f} ({', '.join(f'{v:.3f}' for v in tp)}): a lead of {lead:+.1f} points, the seeds "
        f"{spread}; {teacher}. Goal "
        f"(lead >= {need_lead:g} points over seeds that do not overlap, >= {need_kept:g} % kept): "
        f"{'met' if met else 'missed'}."
    )


def diagnosis_table(arms: Sequence[ArmResult]) -> str:
    """Widths (rows) against weights (columns), all fine-tuned alike, seed 0; empty before any diagnosis arm ends."""
    found = {(a.extra["widths_of"], a.extra["weights_of"]): a.final for a in arms if a.family == "diagnosis"}
    if not found:
        return ""
    own = {
        "ours": next((a.final for a in arms if a.label.startswith("ours, fine-tune only") and a.seed == 0), None),
        "slimming": next((a.final for a in arms if DIAGNOSIS_SLIMMING in a.key and a.family == "torch-pruning"), None),
    }
    other = {"ours": "slimming", "slimming": "ours"}

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "Diagnosis (seed 0, every cell fine-tuned alike): final mAP@0.5 of each architecture by where its weights "
        "came from.",
        "",
        "| widths of | its own sparse model | the other method's sparse model | fresh initialisation |",
        "|---|---|---|---|",
    ]
    for widths in ("ours", "slimming"):
        lines.append(
            f"| {widths} | {cell(own[widths])} | {cell(found.get((widths, other[widths])))} "
            f"| {cell(found.get((widths, 'reinit')))} |"
        )
    return "\n".join(lines)


def search_lines(arms: Sequence[ArmResult]) -> str:
    """Per search arm: the chosen candidate, its score against the solver's, and the cost in training epochs."""
    lines = []
    for arm in (a for a in arms if a.family == "ours-search"):
        extra = arm.extra
        best, scores = extra["search_best"], extra["search_scores"]
        solver = scores.get("0:solver")
        ratio = extra.get("candidate_per_epoch")
        name = arm.label.split(" (")[0]
        lines.append(
            f"- {name}, seed {arm.seed}: candidate {best['index']} ({best['kind']}) chosen, mAP@0.5 on the search "
            f"split {best['score']:.3f} against the solver's plan {solver if solver is None else f'{solver:.3f}'}; "
            f"{len(scores)} candidates scored in {extra['search_seconds'] / 60:.1f} min, "
            f"{extra['seconds_per_candidate']:.0f} s each" + (f" = {ratio:.2f} recovery epochs" if ratio else "") + "."
        )
    return "\n".join(lines)


def draw(arms: Sequence[ArmResult], teacher: ArmResult, reference: ArmResult | None, path: Path) -> None:
    """mAP@0.5 against params (% of the teacher): ours and the best Torch-Pruning arm per budget, seeds as dots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots()
    budgets = sorted({a.budget for a in arms if a.budget is not None})
    series: dict[str, list[tuple[float, list[float]]]] = {"ours": [], "best Torch-Pruning arm": []}
    for budget in budgets:
        here = [a for a in arms if a.budget == budget]
        ours = [a for a in here if a.family == "ours"]
        family = _rows([a for a in here if a.family == "torch-pruning"])
        for arm in (a for group in family.values() for a in group if a.seed == 0):
            axes.plot(arm.params / teacher.params * 100, arm.final, "x", color="0.6")
        if ours:
            series["ours"].append((budget * 100, [a.final for a in ours]))
        if family:
            best = max(family.values(), key=lambda group: group[0].final)
            series["best Torch-Pruning arm"].append((budget * 100, [a.final for a in best]))
    for (name, points), color in zip(series.items(), ("tab:red", "tab:blue"), strict=True):
        if not points:
            continue
        xs = [x for x, _ in points]
        axes.plot(xs, [statistics.fmean(v) for _, v in points], "-o", color=color, label=f"{name} (mean of seeds)")
        for x, values in points:
            axes.plot([x] * len(values), values, ".", color=color, alpha=0.6)
    axes.plot([], [], "x", color="0.6", label="every Torch-Pruning arm (seed 0)")
    searched = _rows([a for a in arms if a.family == "ours-search"])
    for (label, group), marker in zip(searched.items(), ("^", "v"), strict=False):
        xs = [a.params / teacher.params * 100 for a in group]
        axes.plot(xs, [a.final for a in group], marker, color="tab:green", label=f"{label.split(' (')[0]} (seeds)")
    axes.axhline(teacher.final, color="0.3", linestyle=":", label=f"dense teacher ({teacher.final:.3f})")
    if reference is not None:
        axes.axhline(reference.final, color="0.3", linestyle="--", label=f"teacher + fine-tune ({reference.final:.3f})")
    axes.set(xlabel="params kept (% of the teacher)", ylabel="mAP@0.5 (validation)", title="quality.py")
    axes.legend(fontsize="small", loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(args: argparse.Namespace, base: RecipeConfig, context: Context, teacher: ArmResult, minutes: float) -> str:
    """Tables per budget, headlines and settings (Markdown); writes ``quality.md`` / ``.json`` / ``.png``."""
    done = finished(args, context)
    arms = [done[a.key] for a in arm_list(args, done) if a.key in done and a.family != "stage"]
    reference = next((a for a in arms if a.family == "teacher"), None)
    parts = [
        f"Teacher (dense): mAP@0.5 {teacher.final:.3f}, {teacher.params:,} params"
        + (f"; teacher + {context.student_epochs} epochs fine-tune: {reference.final:.3f}." if reference else ".")
    ]
    for budget in args.budgets:
        here = [a for a in arms if a.budget == budget]
        parts += [
            f"**{budget:.0%} of the params**",
            budget_table(here, teacher, reference),
            headline(budget, here, reference),
        ]
        parts += [text for text in (diagnosis_table(here), search_lines(here)) if text]
    parts.append(
        f"{'--quick' if args.quick else 'full'} run; "
        + ("" if args.report else f"{minutes:.0f} min in this call on {args.threads} threads ({args.jobs} worker(s)); ")
        + f"{sum(a.seconds for a in done.values()) / 60:.0f} worker-minutes in all arms; "
        f"{base.num_images} generated images at {base.image_size} px "
        f"({round(base.num_images * base.val_fraction)} validation), YOLOv4 width {base.width} / depth {base.depth}; "
        f"teacher {base.dense_epochs} epochs; every student {context.student_epochs} epochs "
        f"(ours: {base.sparse_epochs} sparse + {base.recover_epochs} recovery, {base.finetune_epochs} of them "
        "fine-tuning before distillation); "
        f"Torch-Pruning slimming rates {', '.join(f'{r:g}' for r in TP_SLIMMING_RATES)}, GroupNormPruner "
        f"{TP_GROUP_NORM_RATE:g}; seeds {list(args.seeds)}."
    )
    markdown = "\n\n".join(parts) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)  # a report from committed records may run in a fresh clone
    (args.out / "quality.md").write_text(markdown, encoding="utf-8")
    (args.out / "quality.json").write_text(
        json.dumps(
            {
                "settings": context.settings,
                "teacher": dataclasses.asdict(teacher),
                "arms": [dataclasses.asdict(a) for a in arms],
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    draw(arms, teacher, reference, args.out / "quality.png")
    return markdown


def write_docs(markdown: str, figure: Path) -> None:
    begin, end = "<!-- quality:begin -->", "<!-- quality:end -->"
    text = DOCS.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise SystemExit(f"quality.py: {DOCS} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    DOCS.write_text(f"{head}{begin}\n{markdown}{end}{tail}", encoding="utf-8")
    FIGURE.write_bytes(figure.read_bytes())
    print(f"wrote the tables into {DOCS} and the figure to {FIGURE}")


def _workers(args: argparse.Namespace) -> None:
    """Run ``args.jobs`` copies of this script as workers (each ``threads // jobs`` threads) and wait for them."""
    threads = max(1, args.threads // args.jobs)
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--out",
        str(args.out),
        "--threads",
        str(threads),
        "--budgets",
        *map(str, args.budgets),
        "--seeds",
        *map(str, args.seeds),
    ]
    command += ["--quick"] * args.quick + ["--no-ablations"] * args.no_ablations
    command += ["--only", *args.only] if args.only else []
    command += ["--teacher-checkpoint", str(args.teacher_checkpoint)] if args.teacher_checkpoint else []
    command += ["--results", str(args.results)] if args.results else []
    workers = [subprocess.Popen(command) for _ in range(args.jobs)]
    failed = [w.args for w in workers if w.wait() != 0]
    if failed:
        raise SystemExit(f"quality.py: {len(failed)} of {args.jobs} workers failed (see their output above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (smoke run)")
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS), help="params kept (0.35 0.15)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the headline arms")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="work folder (one per settings)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all (split between workers)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes running arms side by side")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts (default: all)")
    parser.add_argument("--no-ablations", action="store_true", help="skip the ablations")
    parser.add_argument("--report", action="store_true", help="write the tables from the finished arms only")
    parser.add_argument("--teacher-checkpoint", type=Path, help="a dense checkpoint trained with these settings")
    parser.add_argument("--write-docs", action="store_true", help=f"replace the tables in {DOCS}")
    parser.add_argument(
        "--results", type=Path, help=f"the finished arms' records to read and write (full runs: {RESULTS})"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.results is None and not args.quick:
        args.results = RESULTS  # a smoke run's records are not for keeping
    if args.jobs < 1 or args.threads < 1 or not all(0 < b < 1 for b in args.budgets):
        parser.error("--jobs and --threads take positive integers, --budgets fractions in (0, 1)")
    if args.write_docs and args.quick:
        parser.error("--write-docs writes the full run's numbers; --quick is a smoke run, not for quoting")
    torch.set_num_threads(args.threads)
    settings = {**(QUICK if args.quick else FULL)}
    base = RecipeConfig(out_dir=str(args.out / "teacher"), **settings)
    started = time.perf_counter()
    if not args.worker:
        print(
            f"quality.py: {'--quick' if args.quick else 'full'} run in {args.out}; budgets {args.budgets}, seeds "
            f"{args.seeds}, {args.jobs} worker(s) on {args.threads} threads; parts {args.only or list(PARTS)}"
        )
    recorded = recorded_teacher(args, base)
    if recorded is None:
        teacher_path, teacher = prepare_teacher(args, base)
        sha256 = file_record(teacher_path.parent, teacher_path)["sha256"][:16]
    else:  # --report in a fresh work folder: the committed records' teacher, nothing trained
        teacher_path, (sha256, teacher) = Path(base.out_dir) / "dense.pt", recorded
    context = Context(
        base,
        teacher_path,
        args.out,
        # what every arm computes from: the work folder's path is not part of it, the teacher's bytes are
        {**{k: v for k, v in base_settings(base).items() if k != "out_dir"}, "teacher": sha256},
    )
    if args.results is not None and not args.worker and recorded is None:
        check_teacher(args.results, sha256, teacher, args.threads)
    if not args.report:
        if args.worker or args.jobs == 1:
            run_queue(args, context)
        else:
            _workers(args)
    if args.worker:
        return
    markdown = report(args, base, context, teacher, (time.perf_counter() - started) / 60)
    print(markdown)
    if args.write_docs:
        write_docs(markdown, args.out / "quality.png")


if __name__ == "__main__":
    main()
