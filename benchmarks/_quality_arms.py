"""The arms of ``benchmarks/quality.py``, one run folder each, from one dense teacher (a helper module).

Every arm is an :class:`ArmSpec` (what to run) and ends with an :class:`ArmResult` (what it measured), written
atomically to ``<out>/<key>/arm.json`` with a digest of the spec and the shared settings: a finished arm is
skipped when the benchmark runs again with the same settings, and run again when they changed. Training inside an
arm resumes per epoch (:meth:`RecipeRun.train` keeps ``<stage>.epoch.pt`` in the arm's folder), so a killed run
loses at most one epoch of one arm per worker.

Kinds:

- ``teacher-ft``: the teacher trained for the students' epochs more (AdamW at the recovery rate);
- ``ours``: the recipe's stages (``sparse``, ``pruned``, ``recovered``) with ``RecipeConfig`` changes; an ablation
  may reuse the ``sparse`` / ``pruned`` checkpoints of another ``ours`` arm (``reuse``);
- ``tp-sparse``: a Torch-Pruning sparse stage (``BNScalePruner.regularize`` or ``GroupNormPruner.regularize``),
  shared by the arms of both budgets;
- ``tp``: Torch-Pruning's pruning (an importance, uniform or global ratio bisected to the parameter budget, heads
  ignored) from the teacher or a ``tp-sparse`` model, then plain fine-tuning for the remaining epochs;
- ``ours-search``: ours with the plan chosen by :class:`~grouppruner.pruning.PlanSearch` on the ``sparse`` model of
  an ``ours`` arm, scored by mAP@0.5 on a generated search split of its own (never the validation split), then
  ours' recovery;
- ``transfer``: the diagnosis of the tight budget: one method's per-channel-group widths (ours' plan, or
  Torch-Pruning's slimming) cut from another model's weights (ours' or slimming's sparse model) or from a fresh
  initialisation, then plain fine-tuning as the ``tp`` arms do.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from grouppruner.checkpoint import atomic_write, load_pruned, save_pruned
from grouppruner.detection import YOLOv4
from grouppruner.detection.data import VOCDetection, collate
from grouppruner.detection.synthetic import make_synthetic_voc
from grouppruner.detection.train import evaluate
from grouppruner.graph import ChannelGraph
from grouppruner.profile import count_macs, count_params
from grouppruner.pruning import GroupPruner, PlanSearch
from grouppruner.recipe import RecipeConfig, RecipeRun, sparse_optimizer

DONE = "arm.json"


@dataclasses.dataclass(frozen=True)
class ArmSpec:
    """One arm of the benchmark.

    Attributes:
        key: its folder under the work folder, e.g. ``"p15/ours_seed0"``.
        label: its row name in the table.
        kind: ``"teacher-ft"``, ``"ours"``, ``"tp-sparse"`` or ``"tp"``.
        family: ``"teacher"``, ``"ours"``, ``"ablation"``, ``"torch-pruning"`` or ``"stage"`` (not a table row).
        budget: the fraction of the teacher's params the student keeps (``None`` for the teacher's arms).
        seed: the seed of shuffling, augmentation and initialization in the arm's stages.
        options: ``RecipeConfig`` changes (``ours``) or Torch-Pruning settings (``tp``, ``tp-sparse``).
        needs: keys of the arms that must finish first.
        reuse: stage -> key of the ``ours`` arm whose checkpoint of that stage this arm starts from.
    """

    key: str
    label: str
    kind: str
    family: str
    budget: float | None
    seed: int
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    needs: tuple[str, ...] = ()
    reuse: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def digest(self, settings: Mapping[str, Any]) -> str:
        """A digest of what the arm computes (spec and shared settings): a finished arm with another is rerun."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("label", "family")}
        text = json.dumps({"spec": fields, "settings": dict(settings)}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class ArmResult:
    """The measurements of one arm (mAP@0.5 on the validation split; ``None`` where the arm has no such stage)."""

    key: str
    label: str
    family: str
    budget: float | None
    seed: int
    params: int
    macs: int
    final: float
    sparse: float | None = None
    pruned: float | None = None
    seconds: float = 0.0
    digest: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def read_result(folder: Path, digest: str, *, name: str = DONE) -> ArmResult | None:
    """The arm's result in ``folder / name`` if it finished with the same spec and settings, else ``None``."""
    try:
        record = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("digest") != digest:
        return None
    return ArmResult(**record)


def write_result(folder: Path, result: ArmResult, *, name: str = DONE) -> None:
    with atomic_write(folder / name) as file:
        file.write(json.dumps(dataclasses.asdict(result), indent=2).encode())


class Context:
    """What every arm shares: the base config, the teacher checkpoint, the data folder and the work folder."""

    def __init__(self, base: RecipeConfig, teacher: Path, out: Path, settings: Mapping[str, Any]) -> None:
        self.base = base
        self.settings = dict(settings)  # what every arm's digest covers: the base options and the teacher's hash
        self.teacher = teacher
        self.out = out
        self.data = out / "teacher" / "data"

    @property
    def student_epochs(self) -> int:
        return self.base.sparse_epochs + self.base.recover_epochs

    def config(self, spec: ArmSpec, **changes: Any) -> RecipeConfig:
        budget = {"target_params": spec.budget} if spec.budget is not None else {}
        return dataclasses.replace(
            self.base,
            out_dir=str(self.out / spec.key),
            data_root=str(self.data),
            seed=spec.seed,
            **budget,
            **changes,
        )

    def folder(self, key: str) -> Path:
        return self.out / key


def run_arm(spec: ArmSpec, context: Context, done: Mapping[str, ArmResult]) -> ArmResult:
    """Run ``spec`` (its ``needs`` are in ``done``) and return its measurements."""
    start = time.perf_counter()
    runner = {
        "teacher-ft": _teacher_finetuned,
        "ours": _ours,
        "tp-sparse": _tp_sparse,
        "tp": _torch_pruning,
        "ours-search": _ours_search,
        "transfer": _transfer,
    }
    result = runner[spec.kind](spec, context, done)
    result.seconds = time.perf_counter() - start
    return result


def _seed(run: RecipeRun, seed: int, stage: int) -> None:
    # Each training phase draws from its own seed, so a phase resumed from its epoch state sees the same stream.
    torch.manual_seed(seed * 10 + stage)
    run.generator.manual_seed(seed * 10 + stage)


def _fine_tuned(run: RecipeRun, model: nn.Module, spec: ArmSpec, epochs: int, label: str) -> tuple[float, float]:
    """Fine-tune a pruned model the way every arm does; its mAP before and after."""
    pruned = float(evaluate(model, run.val_loader)["map"])
    _seed(run, spec.seed, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.config.recover_lr, weight_decay=5e-4)
    run.train(model, optimizer, epochs, label)
    final = float(evaluate(model, run.val_loader)["map"])
    run.discard_epoch_states()
    return pruned, final


def _result(spec: ArmSpec, model: nn.Module, run: RecipeRun, final: float, **fields: Any) -> ArmResult:
    return ArmResult(
        key=spec.key,
        label=spec.label,
        family=spec.family,
        budget=spec.budget,
        seed=spec.seed,
        params=count_params(model),
        macs=count_macs(model.eval(), run.example),
        final=final,
        **fields,
    )


def _teacher_finetuned(spec: ArmSpec, context: Context, done: Mapping[str, ArmResult]) -> ArmResult:
    run = RecipeRun(context.config(spec), checkpoints={"dense": context.teacher})
    model = run.load("dense")
    _seed(run, spec.seed, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.config.recover_lr, weight_decay=5e-4)
    run.train(model, optimizer, context.student_epochs, "teacher fine-tune")
    final = float(evaluate(model, run.val_loader)["map"])
    run.discard_epoch_states()
    return _result(spec, model, run, final)


def _ours(spec: ArmSpec, context: Context, done: Mapping[str, ArmResult]) -> ArmResult:
    config = context.config(spec, **spec.options)
    reused = {stage: context.folder(key) / f"{stage}.pt" for stage, key in spec.reuse.items()}
    run = RecipeRun(config, checkpoints={"dense": context.teacher, **reused})
    results: dict[str, float] = {}
    for stage in ("sparse", "pruned", "recovered"):
        if stage in spec.reuse:
            results[stage] = _stage_record(context.folder(spec.reuse[stage]), stage)["map50"]
            continue
        record = run.out / f"{stage}.json"
        if record.is_file() and (run.out / f"{stage}.pt").is_file():
            results[stage] = _stage_record(run.out, stage)["map50"]
            continue
        result = run.run_stage(stage)
        with atomic_write(record) as file:
            file.write(json.dumps(dataclasses.asdict(result), indent=2).encode())
        results[stage] = result.map50
    pruned_folder = context.folder(spec.reuse["pruned"]) if "pruned" in spec.reuse else run.out
    return _result(
        spec,
        run.load("recovered"),
        run,
        results["recovered"],
        sparse=results["sparse"],
        pruned=results["pruned"],
        extra={"kept_channels": _stage_record(pruned_folder, "pruned")["extra"].get("kept_channels", {})},
    )


def _stage_record(folder: Path, stage: str) -> dict[str, Any]:
    """The ``StageResult`` (as JSON) that an ``ours`` arm wrote for ``stage``."""
    record: dict[str, Any] = json.loads((folder / f"{stage}.json").read_text(encoding="utf-8"))
    return record


def _tp_sparse(spec: ArmSpec, context: Context, done: Mapping[str, ArmResult]) -> ArmResult:
    """Torch-Pruning's sparse training: its regularizer after every backward pass, the recipe's SGD and rate."""
    run = RecipeRun(context.config(spec), checkpoints={"dense": context.teacher})
    model = run.load("dense")
    method, rate = spec.options["method"], float(spec.options["rate"])
    if method == "bn":
        regularizer: Any = tp.pruner.BNScalePruner(
            model, run.example, importance=tp.importance.BNScaleImportance(normalizer=None), reg=rate
        )
    else:
        regularizer = tp.pruner.GroupNormPruner(
            model,
            run.example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            reg=rate,
            ignored_layers=_heads(model),
        )
    _seed(run, spec.seed, 1)
    optimizer = sparse_optimizer(model, run.config.sparse_optimizer, run.config.sparse_lr)
    run.train(model, optimizer, run.config.sparse_epochs, "tp sparse", step_hooks=[regularizer.regularize])
    sparse = float(evaluate(model, run.val_loader)["map"])
    save_pruned(model, run.out / "sparse.pt")
    run.discard_epoch_states()
    return _result(spec, model, run, sparse, sparse=sparse)


def _heads(model: YOLOv4) -> list[nn.Module]:
    return [model.head.p3, model.head.p4, model.head.p5]


def _importance(name: str) -> Any:
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)  # Torch-Pruning's README usage
    return tp.importance.BNScaleImportance(normalizer=None)  # raw |gamma|, as network slimming ranks them


def tp_prune(model: YOLOv4, example: torch.Tensor, target: float, *, importance: str, global_pruning: bool) -> float:
    """Prune ``model`` in place with Torch-Pruning to at most ``target`` of its parameters; returns the ratio.

    ``pruning_ratio`` is bisected (14 halvings) on copies of the model so that the pruned model keeps the largest
    parameter count that is <= ``target``; the three head convs are ignored (their outputs are the predictions).
    """
    params = count_params(model)

    def prune(net: YOLOv4, ratio: float) -> None:
        tp.pruner.MetaPruner(
            net,
            example,
            importance=_importance(importance),
            global_pruning=global_pruning,
            pruning_ratio=ratio,
            ignored_layers=_heads(net),
        ).step()

    low, high = 0.0, 0.95
    for _ in range(14):
        middle = (low + high) / 2
        trial = copy.deepcopy(model)
        prune(trial, middle)
        if count_params(trial) / params > target:
            low = middle
        else:
            high = middle
    prune(model, high)
    return high


def _torch_pruning(spec: ArmSpec, context: Context, done: Mapping[str, ArmResult]) -> ArmResult:
    options = spec.options
    sparse_key = options.get("sparse")
    checkpoints = {"dense": context.folder(sparse_key) / "sparse.pt"} if sparse_key else {"dense": context.teacher}
    run = RecipeRun(context.config(spec), checkpoints=checkpoints)
    model = run.load("dense")
    assert spec.budget is not None
    ratio = tp_prune(
        model, run.example, spec.budget, importance=options["importance"], global_pruning=bool(options["global"])
    )
    epochs = context.student_epochs - (run.config.sparse_epochs if sparse_key else 0)
    pruned, final = _fine_tuned(run, model, spec, epochs, "tp fine-tune")
    return _result(
        spec,
        model,
        run,
        final,
        sparse=done[sparse_key].sparse if sparse_key else None,
        pruned=pruned,
        extra={"pruning_ratio": ratio},
    )


# ----------------------------------------------------------------------------- the search arm

SEARCH_IMAGES = 160  # the search split: generated with its own seed, disjoint from train and validation
CALIBRATION_BATCHES = 8


def _search_loader(context: Context) -> torch.utils.data.DataLoader[Any]:
    """mAP@0.5 on this split scores the candidates; it is written once per work folder."""
    base = context.base
    root = context.out / "search-data"
    if not (root / "ImageSets" / "Main" / "val.txt").is_file():
        make_synthetic_voc(
            root,
            SEARCH_IMAGES,
            image_size=base.image_size,
            classes=base.classes,
            seed=base.seed + 1000,
            split_fractions=(0.0, 1.0, 0.0),
        )
    dataset = VOCDetection(root, "val", base.image_size, classes=base.classes)
    return torch.utils.data.DataLoader(dataset, batch_size=base.batch_size, collate_fn=collate)


def _calibration(context: Context, run: RecipeRun) -> list[torch.Tensor]:
    """The first training images, without augmentation, in fixed batches: the same for every candidate."""
    train = VOCDetection(context.data, "train", context.base.image_size, classes=context.base.classes)
    loader = torch.utils.data.DataLoader(train, batch_size=context.base.batch_size, collate_fn=collate)
    return [images for images, _ in itertools.islice(loader, CALIBRATION_BATCHES)]


def _ours_search(spec: ArmSpec, context: Context, done: Mapping[str, ArmResult]) -> ArmResult:
    options = dict(spec.options)
    candidates = int(options.pop("search_candidates"))
    config = context.config(spec, **options)
    source = context.folder(spec.reuse["sparse"])
    run = RecipeRun(config, checkpoints={"dense": context.teacher, "sparse": source / "sparse.pt"})
    sparse = _stage_record(source, "sparse")["map50"]
    if not ((run.out / "pruned.json").is_file() and (run.out / "pruned.pt").is_file()):
        model = run.load("sparse")
        pruner = GroupPruner(
            ChannelGraph(model, run.example), min_channels=config.min_channels, round_to=config.round_to
        )
        loader = _search_loader(context)
        started = time.perf_counter()
        result = PlanSearch(
            pruner,
            **config.budget,
            evaluate=lambda m: float(evaluate(m, loader)["map"]),
            calibration=_calibration(context, run),
            calibration_batches=CALIBRATION_BATCHES,
            candidates=candidates,
            seed=spec.seed,
            state_path=run.out / "search.json",
        ).run()
        pruner.apply(result.plan)
        kept = {lg.name: lg.channels_after / max(lg.channels_before, 1) for lg in result.plan.layer_groups}
        search = {
            "best": dataclasses.asdict(result.best),
            "records": [dataclasses.asdict(r) for r in result.records],
            "seconds": result.seconds,
            "wall_seconds_this_call": time.perf_counter() - started,
        }
        extra = {"plan": result.plan.summary(), "kept_channels": kept, "search": search}
        stage = run.measure("pruned", model, run.save("pruned", model), extra)
        with atomic_write(run.out / "pruned.json") as file:
            file.write(json.dumps(dataclasses.asdict(stage), indent=2).encode())
    pruned = _stage_record(run.out, "pruned")
    recovered_seconds = 0.0
    if not ((run.out / "recovered.json").is_file() and (run.out / "recovered.pt").is_file()):
        started = time.perf_counter()
        stage = run.run_stage("recovered")
        recovered_seconds = time.perf_counter() - started
        stage.extra["seconds"] = recovered_seconds
        with atomic_write(run.out / "recovered.json") as file:
            file.write(json.dumps(dataclasses.asdict(stage), indent=2).encode())
    recovered = _stage_record(run.out, "recovered")
    search = pruned["extra"]["search"]
    epoch = recovered["extra"].get("seconds", 0.0) / max(config.recover_epochs, 1)
    scored = [r for r in search["records"] if r["score"] is not None]
    per_candidate = sum(sum(r["seconds"].values()) for r in search["records"]) / max(len(search["records"]), 1)
    return _result(
        spec,
        run.load("recovered"),
        run,
        recovered["map50"],
        sparse=sparse,
        pruned=pruned["map50"],
        extra={
            "kept_channels": pruned["extra"]["kept_channels"],
            "search_best": search["best"],
            "search_scores": {f"{r['index']}:{r['kind']}": r["score"] for r in scored},
            "search_seconds": search["seconds"],
            "seconds_per_candidate": per_candidate,
            "seconds_per_recovery_epoch": epoch,
            "candidate_per_epoch": per_candidate / epoch if epoch else None,
        },
    )


# ----------------------------------------------------------------------------- the diagnosis arms


def _group_widths(model: nn.Module, graph: ChannelGraph) -> dict[str, int]:
    """Per channel group of ``graph`` (built on the unpruned architecture) its width in ``model``."""
    widths = {}
    for group in graph.channel_groups:
        module = model.get_submodule(group.name)
        widths[group.name] = int(module.weight.shape[0])  # the root layer's output channels
    return widths


def _slimming_model(context: Context, run: RecipeRun, sparse_key: str, budget: float) -> YOLOv4:
    """The Torch-Pruning slimming arm's pruned model, rebuilt (its pruning is deterministic)."""
    model = run.new_model()
    load_pruned(model, context.folder(sparse_key) / "sparse.pt")
    tp_prune(model, run.example, budget, importance="bn", global_pruning=True)
    return model


def _transfer(spec: ArmSpec, context: Context, done: Mapping[str, ArmResult]) -> ArmResult:
    """Widths of one method, weights of another (or fresh ones), then the ``tp`` arms' plain fine-tuning."""
    options = spec.options
    run = RecipeRun(context.config(spec), checkpoints={"dense": context.teacher})
    assert spec.budget is not None
    reference = run.new_model()
    graph = ChannelGraph(reference, run.example)
    if options["widths"] == "ours":
        shape = run.new_model()
        load_pruned(shape, context.folder(options["ours"]) / "pruned.pt")
    else:
        shape = _slimming_model(context, run, options["slimming_sparse"], spec.budget)
    widths = _group_widths(shape, graph)
    if options["weights"] == "reinit":
        model = run.new_model()  # seeded by the arm's seed: a fresh initialisation
    else:
        model = run.new_model()
        source = options["ours"] if options["weights"] == "ours" else options["slimming_sparse"]
        load_pruned(model, context.folder(source) / "sparse.pt")
    graph = ChannelGraph(model, run.example)
    narrower = {g.name: w for g, w in ((graph.group(n), w) for n, w in widths.items()) if w < g.size}
    cut = {n: w for n, w in narrower.items() if graph.group(n).prunable}
    # one layer group per channel group that loses channels, each cut to its width (highest |gamma| kept)
    pruner = GroupPruner(graph, layer_groups={name: [name] for name in cut}, min_channels=1)
    plan = pruner.plan(ratios={n: (graph.group(n).size - w + 0.5) / graph.group(n).size for n, w in cut.items()})
    missing = sorted(set(narrower) - {c.name for c in plan.channel_groups})
    pruner.apply(plan)
    got = _group_widths(model, ChannelGraph(run.new_model(), run.example))
    mismatched = sorted(n for n in widths if got.get(n) != widths[n])
    epochs = context.student_epochs - run.config.sparse_epochs
    pruned, final = _fine_tuned(run, model, spec, epochs, "transfer fine-tune")
    return _result(
        spec,
        model,
        run,
        final,
        pruned=pruned,
        extra={
            "widths_of": options["widths"],
            "weights_of": options["weights"],
            "source_params": count_params(shape),
            "widths_not_transferred": sorted(set(missing) | set(mismatched)),
        },
    )
