"""Which module of an Ultralytics YOLO is pruned, its channel graph, and :func:`prune`.

An Ultralytics ``YOLO`` object wraps a ``DetectionModel`` (``SegmentationModel``, ``PoseModel`` and ``OBBModel``
derive from it): an ``nn.Sequential``-like stack ``model.model`` whose last entry is the head (``Detect`` and its
subclasses). The graph traces it in eval mode, where it returns ``(predictions, raw outputs)``; only the decoded
predictions count as model outputs, so the neck features that the raw dict also carries stay prunable while
every head output conv (box distributions, class logits, mask coefficients and prototypes, keypoints) keeps its
output channels. DFL, a fixed conv that Ultralytics never trains, is ignored by the graph.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..._utils.errors import InvalidOptionError, OptionTypeError, UsageError
from ..._utils.wrappers import unwrap
from ...graph import ChannelGraph
from ...pruning import GroupPruner, PruningPlan, pop_plans
from ...runtime import Runtime
from ._require import require_ultralytics
from .deploy import planning_runtime, resolve_split_free
from .deploy import split_free as rewrite_split_free

__all__ = [
    "PLANS_ATTRIBUTE",
    "REBUILD_REFUSAL",
    "PlanChooser",
    "channel_graph",
    "check_budget",
    "detection_model",
    "head",
    "is_pruned",
    "neck_layers",
    "plan_records",
    "prune",
    "refuse_rebuild",
    "sync_hidden_widths",
]

logger = logging.getLogger(__name__)

#: Ultralytics tasks whose models this integration prunes (classification has no detection head).
SUPPORTED_TASKS = ("detect", "segment", "pose", "obb")

#: The module attribute holding the applied plans as JSON (``PruningPlan.to_dict`` records, oldest first). A
#: string, not plan objects, so that Ultralytics' pickled checkpoints of a pruned model load where grouppruner is
#: not installed, and so that it travels with every copy Ultralytics makes (EMA, checkpoints, DDP workers).
PLANS_ATTRIBUTE = "grouppruner_plans"


class PlanChooser(Protocol):
    """What :func:`prune` asks for the plan instead of :meth:`GroupPruner.plan
    <grouppruner.pruning.GroupPruner.plan>` (:class:`~.search.YoloPlanSearch` is one)."""

    def choose(
        self, pruner: GroupPruner, budget: Mapping[str, float], *, imgsz: int, prepare: Callable[[nn.Module], None]
    ) -> PruningPlan:
        """The plan for ``budget`` (``{"target_macs": 0.5}``) of ``pruner``'s model, traced at ``imgsz``;
        ``prepare(model)`` makes a pruned copy of it consistent before it runs (the split widths of C2f)."""


def detection_model(model: Any) -> nn.Module:
    """The ``DetectionModel`` (or subclass) inside an Ultralytics ``YOLO`` object, or ``model`` itself.

    Args:
        model: a ``YOLO`` object or its ``.model``.

    Raises:
        OptionTypeError: not an Ultralytics YOLO model (e.g. a plain ``nn.Module`` or an exported file).
        UsageError: a classification model (no detection head to keep).
    """
    require_ultralytics()
    from ultralytics.engine.model import Model
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import ClassificationModel, DetectionModel

    inner = model.model if isinstance(model, Model) else unwrap(model) if isinstance(model, nn.Module) else model
    if isinstance(inner, ClassificationModel):
        raise UsageError(
            f"{type(inner).__name__}: a classification model; grouppruner's Ultralytics integration compresses "
            f"models with a detection head (tasks {', '.join(SUPPORTED_TASKS)})"
        )
    if isinstance(inner, (str, Path)):
        raise OptionTypeError(f"{inner}: an exported model file, not a PyTorch YOLO model; load the .pt weights")
    if not isinstance(inner, DetectionModel) or not isinstance(inner.model[-1], Detect):
        raise OptionTypeError(
            f"{type(model).__name__} is not an Ultralytics YOLO model (expected ultralytics.YOLO or its "
            "DetectionModel / SegmentationModel / PoseModel / OBBModel)"
        )
    result: nn.Module = inner
    return result


def plan_records(model: nn.Module) -> list[dict[str, Any]]:
    """The applied plans of a module as ``PruningPlan.to_dict`` records (empty: never pruned)."""
    raw = getattr(model, PLANS_ATTRIBUTE, None)
    records: list[dict[str, Any]] = json.loads(raw) if isinstance(raw, str) else []
    return records


def is_pruned(model: Any) -> bool:
    """Whether ``model`` (a ``YOLO``, a module or an Ultralytics checkpoint dict) was pruned by grouppruner."""
    if isinstance(model, dict):
        model = model.get("ema") or model.get("model")
    if not isinstance(model, nn.Module) and hasattr(model, "model"):
        model = model.model
    return isinstance(model, nn.Module) and bool(plan_records(model))


def _keep_plans_as_json(model: nn.Module) -> None:
    records = plan_records(model) + [plan.to_dict() for plan in pop_plans(model)]
    setattr(model, PLANS_ATTRIBUTE, json.dumps(records, allow_nan=False))


def head(model: Any) -> Any:
    """The model's head (``Detect``, ``Segment``, ``Pose``, ``OBB``): the last layer of ``model.model``."""
    inner: Any = detection_model(model)
    return inner.model[-1]


def neck_layers(model: Any) -> list[str]:
    """Qualified names of the layers whose outputs feed the head (one per scale), e.g. ``["model.15", ...]``."""
    inner: Any = detection_model(model)
    return [f"model.{i}" for i in head(inner).f]


def _decoded(outputs: Any) -> Any:
    # eval mode returns (decoded predictions, raw dict); the raw dict repeats the neck features ("feats"),
    # which must not count as outputs (they would protect every channel of the neck).
    return outputs[0] if isinstance(outputs, tuple) else outputs


def example_input(model: nn.Module, imgsz: int) -> torch.Tensor:
    """A ``(1, C, imgsz, imgsz)`` zero image on the model's device and dtype (C from the first conv)."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    weight = first.weight
    return torch.zeros(1, first.in_channels, imgsz, imgsz, device=weight.device, dtype=weight.dtype)


def channel_graph(model: Any, *, imgsz: int = 640) -> ChannelGraph:
    """The :class:`~grouppruner.graph.ChannelGraph` of a YOLO, traced at ``imgsz`` x ``imgsz``.

    The head's output convs are protected (their channels form the model outputs) and DFL is ignored.

    Args:
        model: a ``YOLO`` object or its ``DetectionModel``.
        imgsz: the square input side the example input has (a multiple of the largest stride, 32).

    Raises:
        OptionTypeError, UsageError: see :func:`detection_model`.
        GraphError: a module of the model uses an op the graph cannot map (the message names module and op).
    """
    inner: Any = detection_model(model)
    dfl_module = getattr(head(inner), "dfl", None)
    has_dfl = isinstance(dfl_module, nn.Module) and any(True for _ in dfl_module.parameters())
    dfl = [f"model.{len(inner.model) - 1}.dfl"] if has_dfl else []
    return ChannelGraph(inner, example_input(inner, imgsz), ignore=dfl, output_transform=_decoded)


def _hidden_widths(model: nn.Module) -> dict[str, int]:
    """Modules that split ``cv1``'s output into two halves of a stored width ``c`` (C2f and its kin)."""
    return {
        name: module.c
        for name, module in model.named_modules()
        if isinstance(getattr(module, "c", None), int)
        and isinstance(getattr(getattr(module, "cv1", None), "conv", None), nn.Conv2d)
        and module.cv1.conv.out_channels == 2 * module.c
    }


def sync_hidden_widths(model: nn.Module, before: dict[str, int]) -> None:
    """After pruning: set ``c`` of the modules :func:`_hidden_widths` found to half their ``cv1`` width.

    ``C2f.forward`` uses ``chunk(2)`` and works at any width, but ``forward_split`` (which Ultralytics' exporter
    switches to) splits at the stored ``c``; the graph keeps the two halves equal, so the new ``c`` is exact.
    """
    modules = dict(model.named_modules())
    for name in before:
        module: Any = modules[name]
        width = module.cv1.conv.out_channels
        if width % 2:
            raise RuntimeError(f"{name}: cv1 has {width} channels after pruning, which do not split in two halves")
        module.c = width // 2


def prune(
    model: Any,
    *,
    target_params: float | None = None,
    target_macs: float | None = None,
    target_latency: float | None = None,
    ratios: dict[str, float] | None = None,
    imgsz: int = 640,
    importance: str = "auto",
    min_channels: int = 8,
    round_to: int | None = None,
    fold: bool = True,
    runtime: str | Runtime | None = None,
    search: PlanChooser | None = None,
    split_free: bool | None = None,
) -> PruningPlan:
    """Group-prune a YOLO in place: per-layer-group thresholds on |gamma| to a budget, with beta folding.

    Exactly one of ``target_params``, ``target_macs``, ``target_latency`` (fractions to keep) or ``ratios``
    (layer group -> fraction to remove) is given. The layer groups are the graph's automatic partition by
    feature stride and module structure (:meth:`~grouppruner.graph.ChannelGraph.layer_groups`).

    Args:
        model: a ``YOLO`` object (its module is pruned) or its ``DetectionModel``.
        target_params: fraction of the parameters to keep (see :meth:`~grouppruner.pruning.GroupPruner.plan`).
        target_macs: fraction of the MACs to keep.
        target_latency: fraction of the latency at ``imgsz`` to keep, measured in ``runtime`` against the dense
            model (see :meth:`~grouppruner.pruning.GroupPruner.plan`).
        ratios: layer group -> fraction of its channels to remove.
        imgsz: input side for the graph, the MACs and the latency model.
        importance: the channel score (``"auto"``: |gamma| where there is a BatchNorm).
        min_channels: every layer keeps at least this many channels.
        round_to: kept channel counts are multiples of it (e.g. 8 for tensor cores).
        fold: fold the constant output of removed channels into the next layers.
        runtime: the runtime the model ships on (:mod:`grouppruner.runtime`; default ``"onnxruntime"``: kept widths
            on the CPU's vector block, latency measured in onnxruntime); ``"torch"`` for eager PyTorch.
        search: chooses the plan for the budget by measured accuracy instead of the solver alone, e.g.
            :class:`~grouppruner.integrations.ultralytics.YoloPlanSearch` (not with ``ratios``).
        split_free: after pruning, rewrite every C2f / C3k2 block without its ``Split``
            (:func:`~grouppruner.integrations.ultralytics.deploy.split_free`, in place, same outputs), and measure
            ``target_latency`` through that rewrite; ``None`` (default): on when ``runtime`` is onnxruntime
            (:func:`~.deploy.resolve_split_free`).

    Returns:
        The applied plan, also kept on the module as JSON (:data:`PLANS_ATTRIBUTE`) for
        :func:`~grouppruner.integrations.ultralytics.save`.

    Raises:
        OptionTypeError, UsageError, GraphError: see :func:`channel_graph`; ``split_free`` not a bool or ``None``.
        ValueError: an unreachable budget (the message gives the closest reachable value).
        InvalidOptionError: ``search`` with ``ratios``.
    """
    inner = detection_model(model)
    if search is not None and ratios is not None:
        raise InvalidOptionError("prune: search= chooses among plans of one budget; give a target_*, not ratios")
    split = resolve_split_free(split_free, runtime)
    plan = _prune_in_place(
        inner,
        target_params,
        target_macs,
        target_latency,
        ratios,
        imgsz,
        importance,
        min_channels,
        round_to,
        fold,
        planning_runtime(runtime, split),
        search,
    )
    if split:
        rewrite_split_free(inner, inplace=True)
    refuse_rebuild(inner)
    logger.info("pruned %s: params x%.3f, MACs x%.3f", type(inner).__name__, plan.params_ratio, plan.macs_ratio)
    return plan


def _prune_in_place(
    inner: nn.Module,
    target_params: float | None,
    target_macs: float | None,
    target_latency: float | None,
    ratios: dict[str, float] | None,
    imgsz: int,
    importance: str,
    min_channels: int,
    round_to: int | None,
    fold: bool,
    runtime: str | Runtime | None,
    search: PlanChooser | None,
) -> PruningPlan:
    device = next(inner.parameters()).device
    inner.float().cpu()
    graph = channel_graph(inner, imgsz=imgsz)
    pruner = GroupPruner(graph, importance=importance, min_channels=min_channels, round_to=round_to, runtime=runtime)
    widths = _hidden_widths(inner)
    if search is not None:
        budget = {"target_params": target_params, "target_macs": target_macs, "target_latency": target_latency}
        given = {k: float(v) for k, v in budget.items() if v is not None}
        plan = search.choose(pruner, given, imgsz=imgsz, prepare=lambda pruned: sync_hidden_widths(pruned, widths))
    else:
        plan = pruner.plan(
            target_params=target_params, target_macs=target_macs, target_latency=target_latency, ratios=ratios
        )
    pruner.apply(plan, fold=fold)
    sync_hidden_widths(inner, widths)
    _keep_plans_as_json(inner)
    inner.to(device)
    return plan


def check_budget(
    model: Any,
    *,
    target_params: float | None = None,
    target_macs: float | None = None,
    target_latency: float | None = None,
    imgsz: int = 640,
    min_channels: int = 8,
    round_to: int | None = None,
    runtime: str | Runtime | None = None,
    split_free: bool | None = None,
) -> None:
    """Check on a copy that the graph maps ``model`` and that the budget is reachable; ``model`` is not changed.

    The graph and the plan of :func:`prune`, made on a deep copy and logged as a check: the plan of the trained
    model differs (its BatchNorm scales are sparse by then). ``split_free`` as :func:`prune` (``target_latency``
    is measured through the rewrite when it is on).

    Raises:
        OptionTypeError, UsageError, GraphError: see :func:`channel_graph`.
        InvalidOptionError: the budget cannot be reached (the message gives the closest reachable value).
    """
    inner = copy.deepcopy(detection_model(model)).float().cpu()
    budget = {"target_params": target_params, "target_macs": target_macs, "target_latency": target_latency}
    shipped = planning_runtime(runtime, resolve_split_free(split_free, runtime))
    pruner = GroupPruner(
        channel_graph(inner, imgsz=imgsz), min_channels=min_channels, round_to=round_to, runtime=shipped
    )
    try:
        pruner.plan(target_params=target_params, target_macs=target_macs, target_latency=target_latency)
    except ValueError as error:
        if type(error) is ValueError:
            raise InvalidOptionError(f"{type(inner).__name__}: {error}") from error
        raise
    given = ", ".join(f"{k}={v}" for k, v in budget.items() if v is not None)
    logger.info(
        "budget check: %s is reachable on the dense model (a plan on a copy; the model is pruned after sparse "
        "training, from its sparse gammas)",
        given,
    )


#: What ``YOLO(path).train()`` with Ultralytics' stock trainer says about a pruned model instead of rebuilding it.
REBUILD_REFUSAL = (
    "grouppruner pruned this model; Ultralytics' stock trainer would rebuild it unpruned from its yaml. Fine-tune "
    "it with grouppruner.integrations.ultralytics.load(path).train(...), or pass "
    "trainer=grouppruner.integrations.ultralytics.trainer_class(task) to .train()"
)


def refuse_rebuild(model: nn.Module) -> None:
    """Make Ultralytics' stock trainer stop at a pruned model instead of silently training a dense rebuild of it.

    ``YOLO(path).train()`` and ``resume=`` hand the module's ``yaml`` (a dict) to the trainer's ``get_model``,
    which builds a fresh model from it and copies the weights that fit. The first backbone entry of the pruned
    module's ``yaml`` becomes a layer named :data:`REBUILD_REFUSAL`, so that build stops with a ``KeyError``
    carrying that sentence before anything trains; the dense entries are kept under ``"dense_backbone"``. Nothing
    else reads the backbone (validation, prediction, export, ``info``, ``fuse`` and tracking read ``nc``,
    ``channels`` or ``head``), the ``yaml`` stays plain data (the file loads without grouppruner), and the trainers
    of :mod:`.trainer` (and :func:`~.checkpoint.load`'s ``.train()``) never build from it.
    """
    spec = getattr(model, "yaml", None)
    if not isinstance(spec, dict) or not isinstance(spec.get("backbone"), list):
        return
    if spec.get("dense_backbone") is None:
        refusing = {**spec, "backbone": [[-1, 1, REBUILD_REFUSAL, []]], "dense_backbone": spec["backbone"]}
        setattr(model, "yaml", refusing)  # noqa: B010 - nn.Module's typed __setattr__ is for tensors and modules
