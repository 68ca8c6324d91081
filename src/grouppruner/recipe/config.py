"""The recipe's options: :class:`RecipeConfig` (every choice of the method, validated at construction), and the
stage each option belongs to (:data:`STAGE_OF_OPTION`: what a changed option reruns, :func:`first_changed_stage`).

Reading them from a TOML file is :mod:`grouppruner.recipe.config_file`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

from .._utils.errors import InvalidOptionError
from ..detection.synthetic import SYNTHETIC_CLASSES, split_sizes
from ..run_folder import file_sha256
from ..runtime import DEFAULT_RUNTIME, RUNTIMES

__all__ = [
    "ADDED_OPTIONS",
    "GAMMA_THRESHOLD",
    "STAGES",
    "STAGE_OF_OPTION",
    "Budget",
    "RecipeConfig",
    "check_option",
    "first_changed_stage",
    "stage_fingerprint",
]

logger = logging.getLogger(__name__)

STAGES = ("dense", "sparse", "pruned", "recovered")


#: ``|gamma|`` below this counts as sparsified in the sparse stage's statistics (``StageResult.extra``).
GAMMA_THRESHOLD = 1e-2

#: The allowed values of the options that take one of a few strings.
CHOICES: dict[str, tuple[str, ...]] = {
    "sparse_optimizer": ("sgd", "adamw"),
    "sparsity_schedule": ("dynamic", "constant"),
    "sparsity_scope": ("global", "group"),
    "prune_scope": ("group", "global"),
    "prune_by": ("params", "macs", "latency", "gamma"),
    "teacher": ("dense", "sparse"),
    "amp": ("off", "bf16", "fp16"),
    "distill_layers": ("all", "backbone", "neck"),
    "runtime": RUNTIMES,
}


class Budget(TypedDict, total=False):
    """One budget keyword of :meth:`GroupPruner.plan <grouppruner.pruning.GroupPruner.plan>` and its value."""

    target_params: float
    target_macs: float
    target_latency: float


@dataclass
class RecipeConfig:
    """Options of :func:`run_recipe`. The defaults run in about 12 minutes on two idle CPU cores.

    Invalid values raise ``ValueError`` at construction, naming the field and what it accepts.

    Attributes:
        out_dir: where checkpoints (``<stage>.pt``) and ``results.json`` go; a run with the same ``out_dir``
            resumes after the last finished stage.
        data_root: a VOCdevkit-style folder (its ``train`` and ``val`` splits are used); ``None`` generates a
            synthetic one in ``out_dir/data``.
        classes: class names of the data set.
        num_images: images to generate when ``data_root`` is ``None``.
        val_fraction: fraction of the generated images in the validation split, in (0, 1) (the rest is
            ``train``); a large split keeps the mAP differences between stages above the noise.
        image_size: square network input side in pixels.
        backbone, width, depth: the YOLOv4 variant (see :func:`~grouppruner.detection.yolov4`).
        batch_size: batch size of every training stage.
        lr: AdamW learning rate of the dense stage (cosine-annealed to ``lr / 20``).
        dense_epochs, sparse_epochs, recover_epochs: epochs of each training stage.
        sparse_optimizer: ``"sgd"`` (SGD with Nesterov momentum 0.9, as network slimming and the paper) or
            ``"adamw"``. Adam divides every gradient, the L1 term included, by its running magnitude, so the
            L1 pull on a gamma is no longer ``lr * s`` and the scales do not collapse to zero.
        sparse_lr: learning rate of the sparse stage, constant: the dynamic rule's warmup is a fraction of the
            steps, and under a cosine decay about 70 % of the L1 pull would land in the first 40 % of them, so
            that every gamma collapses before the strongest are spared.
        sparsity: the rate ``s`` of the L1 term on the BatchNorm scales. What matters is the total pull
            ``sparse_lr * s * steps / (1 - momentum)``: a short run needs a larger ``s`` than the paper's
            1e-4 .. 5e-3 over hundreds of epochs. The default (pull 1.8 over the demo's 16 epochs, 0.36 of it in
            the warmup) drives the channels the dynamic rule does not spare below 1e-2; at half the default pull
            (``s`` 0.01 with the former warmup 0.4) too few channels reach zero and pruning to the budget cuts live
            ones (mAP 0.000 after pruning).
        sparsity_schedule: ``"dynamic"`` (the paper's :class:`~grouppruner.sparsity.Dynamic`: constant ``s`` for
            the first ``sparsity_warmup`` of the steps, then the strongest ``sparsity_keep`` of the channels get 1 %
            of ``s``) or ``"constant"`` (:class:`~grouppruner.sparsity.Constant`, as network slimming).
        sparsity_warmup: fraction of the sparse stage with the constant rate before the dynamic rule spares the
            strongest channels (``Dynamic(warmup=)``; paper: 0.4). The warmup pulls every channel, the spared
            ones too; a short one leaves the network more of its strength: on the demo's teacher, mAP@0.5 after
            pruning (before any recovery) was 0.344 / 0.384 / 0.373 at warmup 0.4 / 0.2 / 0.1 (``s`` 0.02, keep
            0.5; ``benchmarks/sparse_schedule.py``).
        sparsity_keep: the fraction of channels the dynamic rule spares (``Dynamic(keep=)``; paper: 0.35).
            Parameters scale with in x out channels, so keeping a fraction ``k`` of every layer's channels keeps
            about ``k^2`` of the parameters: ``k`` a little below ``sqrt(target_params)`` (0.55 for 0.35) lets the
            budget remove only channels that sparse training zeroed. Far above it, pruning must cut live channels
            (measured with an earlier schedule: ``keep=0.6`` fell from 0.46 to 0.01 mAP); far below it, sparse
            training zeroes channels the budget could have kept (``keep=0.35``: 0.30 mAP after sparse training).
            The defaults (``s`` 0.03, warmup 0.2, keep 0.55) gave 0.404 after pruning and 0.609 after recovery
            on the demo's teacher (0.594), against 0.344 and 0.594 with the former ones (``s`` 0.02, warmup 0.4,
            keep 0.5). For a tighter budget lower it by the same rule: ``benchmarks/quality.py`` runs
            ``target_params=0.15`` with ``sparsity_keep=0.35``.
        sparsity_scope: where the dynamic rule's quantile is taken: ``"global"`` (paper) or ``"group"`` (every
            layer group spares its own strongest ``sparsity_keep``).
        target_params: fraction of the parameters the pruned model keeps (``prune_by="params"``).
        target_macs: fraction of the conv + linear MACs at ``image_size`` the pruned model keeps
            (``prune_by="macs"``).
        target_latency: fraction of the batch-1 latency at ``image_size`` the pruned model keeps, measured in
            ``runtime`` against the dense model (``prune_by="latency"``; the plan is verified by measurement and
            corrected, as ``GroupPruner.plan`` does; the measurement is
            recorded in the pruned stage's ``extra["latency"]``).
        prune_by: the budget: ``"params"``, ``"macs"`` or ``"latency"``: the per-layer-group fractions are solved
            for ``target_params`` / ``target_macs`` / ``target_latency``; ``"gamma"``: every layer group drops its
            channels with ``|gamma| < gamma_threshold`` (fractions read off the gamma distributions, whatever size
            that gives).
        gamma_threshold: the |gamma| threshold of ``prune_by="gamma"``.
        prune_scope: ``"group"``: one threshold per layer group (the paper's grouping by feature stride and
            module structure, ``ChannelGraph.layer_groups()``); ``"global"``: one threshold over all channels.
        min_channels, round_to: passed to :class:`~grouppruner.pruning.GroupPruner`.
        runtime: the runtime the pruned detector ships on (:mod:`grouppruner.runtime`): ``"onnxruntime"``
            (default: kept widths on the CPU's vector block, unless ``round_to`` is given) or ``"torch"``.
        search_candidates: with a budget (``prune_by`` other than ``"gamma"``), a
            :class:`~grouppruner.pruning.PlanSearch` of this many plans of the same budget chooses the plan (for
            ``"latency"`` the candidates share the latency model's prediction): BatchNorm statistics recomputed
            on the first 8 batches of the training split (no augmentation), mAP@0.5 on the next 8 (training
            images, as EagleEye; the validation split stays out of the choice); resumable (``search.json``). 0
            (default): the solver's plan. At 15 % of the params ``quality.py`` measured +3.4 to +5.4 points of
            mAP@0.5 with 16 candidates on each of three seeds; at 21.5 % of the MACs +0.4 to +1.3 points on
            each of three seeds (less: at a MACs budget it cannot move MACs into the high-resolution layers); not
            yet measured at a latency budget. A candidate costs about a quarter of a training epoch on the demo.
        recover_lr: AdamW learning rate of the recovery stage (cosine-annealed to ``recover_lr / 20``); the
            dense stage's rate: from the demo's pruned model, 24 recovery epochs reached mAP 0.573 / 0.580 / 0.592 /
            0.608 at 1e-3 / 2e-3 / 3e-3 / 5e-3 (one seed; the dense model has 0.594; ``benchmarks/recover_lr.py``).
        finetune_epochs: the first this many recovery epochs fine-tune on the detection loss alone; the
            remaining ``recover_epochs - finetune_epochs`` add the distillation terms (the paper fine-tunes
            the pruned model before distilling).
        distill_off_epochs: the last this many recovery epochs train on the detection loss alone (as RTMDet
            ends without its strong augmentation); at most ``recover_epochs - finetune_epochs``. 0 (default, not
            yet measured): distil to the end. The recovery logs each distillation term's gradient norm against
            the detection loss's (:class:`~grouppruner.distill.GradientBalance`), means in ``gradient_ratio``.
        teacher: ``"dense"`` (the original model, as in the paper) or ``"sparse"`` (the model that was pruned).
        distill_weight: weight of the spatial-attention distillation loss
            (:class:`~grouppruner.distill.AttentionDistiller` on ``YOLOv4.distill_layers``); 0 disables it.
        distill_layers: which of ``YOLOv4.distill_layers`` the attention term reads: ``"all"`` (the paper's nine
            maps), ``"backbone"`` (the five stage outputs) or ``"neck"`` (SPP and the three head inputs). A darknet
            model (``cfg``) has only its head inputs and takes ``"all"``.
        output_distill_weight: weight of the output-level term
            (:class:`~grouppruner.detection.YoloOutputDistill`); 0 disables it. Its raw value on a freshly
            pruned demo student is about 25 times the detection loss (class KL times ``T^2 = 9``, box L2 in grid
            cells), so the default keeps it at the detection loss's scale; the attention term (about 0.04 raw
            over the nine layers) is weighted 10 for the same reason.
        distill_temperature: temperature of the output-level KL terms.
        channel_distill_weight: weight of the channel-wise term (CWD, softmax over space at temperature 1 on
            standardised features, :meth:`AttentionDistiller.channel_loss
            <grouppruner.distill.AttentionDistiller.channel_loss>`) on the same layers as the attention term,
            each student channel against the teacher channel it was kept from
            (:func:`~grouppruner.pruning.teacher_channels`); 0 (default) disables it and keeps no feature. Instead
            of the attention term, on the demo at 15 % (three seeds): at 0.1 +1.3 / +0.9 / +0.6 points of mAP@0.5
            over attention, at 0.05 level with it.
        seed: seed of data generation, initialization and shuffling.
        weights: the user's trained detector to compress: a ``state_dict`` file of
            :func:`~grouppruner.detection.yolov4` with these ``classes`` / ``backbone`` / ``width`` / ``depth``, or a
            :func:`~grouppruner.checkpoint.save_pruned` file. The dense stage then loads it instead of training
            (``dense_epochs`` is ignored) and only measures it.
        cfg: a darknet ``.cfg`` to run the recipe on instead of the built-in YOLOv4 (``backbone``, ``width``
            and ``depth`` are then unused, the anchors are the cfg's); ``weights`` is then its darknet ``.weights``
            file. Its ``[yolo] classes`` must equal the number of ``classes``. The ``pruned`` and ``recovered``
            stages also write ``<stage>.cfg`` / ``<stage>.weights`` (see the darknet guide).
        device: where the training stages run: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when
            available); graph tracing, pruning and checkpoints stay on the CPU. Not part of a run's identity:
            a run started on one device resumes on another.
        amp: mixed precision of the training forward passes: ``"off"``, ``"bf16"`` (autocast, no scaler; CPU
            or CUDA) or ``"fp16"`` (autocast with a ``GradScaler``; CUDA only). The sparsity regulariser and the
            distiller see unscaled gradients and fp32 attention maps either way.
    """

    out_dir: str
    data_root: str | None = None
    classes: tuple[str, ...] = SYNTHETIC_CLASSES
    num_images: int = 600
    val_fraction: float = 0.5
    image_size: int = 128
    backbone: str = "cspdarknet53"
    width: float = 0.25
    depth: float = 0.34
    batch_size: int = 16
    lr: float = 5e-3
    dense_epochs: int = 50
    sparse_epochs: int = 16
    recover_epochs: int = 24
    sparse_optimizer: str = "sgd"
    sparse_lr: float = 0.02
    sparsity: float = 0.03
    sparsity_schedule: str = "dynamic"
    sparsity_warmup: float = 0.2
    sparsity_keep: float = 0.55
    sparsity_scope: str = "group"
    target_params: float = 0.35
    target_macs: float = 0.5
    target_latency: float = 0.5
    prune_by: str = "params"
    gamma_threshold: float = GAMMA_THRESHOLD
    prune_scope: str = "group"
    min_channels: int = 8
    round_to: int | None = None
    runtime: str = DEFAULT_RUNTIME
    search_candidates: int = 0
    recover_lr: float = 5e-3
    finetune_epochs: int = 6
    distill_off_epochs: int = 0
    teacher: str = "dense"
    distill_weight: float = 10.0
    distill_layers: str = "all"
    output_distill_weight: float = 0.05
    distill_temperature: float = 3.0
    channel_distill_weight: float = 0.0
    seed: int = 0
    weights: str | None = None
    cfg: str | None = None
    device: str = "cpu"
    amp: str = "off"

    @property
    def budget(self) -> Budget:
        """The pruned stage's budget as :meth:`GroupPruner.plan <grouppruner.pruning.GroupPruner.plan>` takes it,
        e.g. ``{"target_macs": 0.5}``; empty for ``prune_by="gamma"``."""
        if self.prune_by == "params":
            return Budget(target_params=self.target_params)
        if self.prune_by == "macs":
            return Budget(target_macs=self.target_macs)
        if self.prune_by == "latency":
            return Budget(target_latency=self.target_latency)
        return Budget()

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            check_option(item.name, getattr(self, item.name))
        if self.finetune_epochs > self.recover_epochs:
            raise InvalidOptionError(
                f"RecipeConfig.finetune_epochs ({self.finetune_epochs}) must be <= recover_epochs "
                f"({self.recover_epochs})"
            )
        if self.finetune_epochs + self.distill_off_epochs > self.recover_epochs:
            raise InvalidOptionError(
                f"RecipeConfig.finetune_epochs + distill_off_epochs ({self.finetune_epochs} + "
                f"{self.distill_off_epochs}) must be <= recover_epochs ({self.recover_epochs})"
            )
        if self.search_candidates and self.prune_by == "gamma":
            raise InvalidOptionError(
                f"RecipeConfig.search_candidates={self.search_candidates} searches plans of one budget: it needs "
                "prune_by='params', 'macs' or 'latency', not 'gamma' (a threshold gives one plan)"
            )
        if self.data_root is None:
            self._check_generated_splits()

    def _check_generated_splits(self) -> None:
        # The generated data must give both splits an image, and the anchors (fitted to the training boxes when
        # no trained detector brings its own) 9 boxes: every generated image holds at least one object.
        fractions = (1.0 - self.val_fraction, self.val_fraction, 0.0)
        need = 1 if self.weights is not None else ANCHORS
        train, val, _ = split_sizes(self.num_images, fractions)
        if train < need or val < 1:
            # rounding puts the smallest fitting count within a few images of this estimate
            estimate = max(need / (1.0 - self.val_fraction), 1.0 / self.val_fraction) - 2
            enough = next(n for n in itertools.count(max(1, int(estimate))) if _splits_fit(n, fractions, need))
            why = "" if self.weights is not None else f" ({ANCHORS} anchors are fitted to their boxes)"
            raise InvalidOptionError(
                f"RecipeConfig.num_images={self.num_images} with val_fraction {self.val_fraction:g} generates {train} "
                f"training and {val} validation images; the recipe needs at least {need} training image(s){why} "
                f"and 1 validation image: use num_images >= {enough}"
            )


#: Anchors of the YOLOv4 heads (3 scales x 3), fitted by k-means to the training boxes unless weights bring theirs.
ANCHORS = 9


def _splits_fit(num_images: int, fractions: tuple[float, float, float], need: int) -> bool:
    train, val, _ = split_sizes(num_images, fractions)
    return train >= need and val >= 1


_POSITIVE = ("num_images", "image_size", "width", "depth", "batch_size", "lr", "sparse_lr", "recover_lr")
_NON_NEGATIVE = (
    "dense_epochs",
    "sparse_epochs",
    "recover_epochs",
    "finetune_epochs",
    "distill_off_epochs",
    "search_candidates",
    "sparsity",
    "gamma_threshold",
    "distill_weight",
    "output_distill_weight",
    "channel_distill_weight",
)


def check_option(name: str, value: Any) -> None:
    """Check one :class:`RecipeConfig` field on its own (choices, ranges, files): what needs no other field.

    Raises:
        ValueError: the value is out of range (the message names ``RecipeConfig.<name>`` and what it accepts).
    """
    if name in CHOICES and value not in CHOICES[name]:
        raise InvalidOptionError(f"RecipeConfig.{name} must be one of {CHOICES[name]}, got {value!r}")
    if name in (*_POSITIVE, "distill_temperature") and not value > 0:
        raise InvalidOptionError(f"RecipeConfig.{name} must be > 0, got {value!r}")
    if name in _NON_NEGATIVE and not value >= 0:
        raise InvalidOptionError(f"RecipeConfig.{name} must be >= 0, got {value!r}")
    fraction = name in ("val_fraction", "target_params", "target_macs", "target_latency", "sparsity_keep")
    if fraction and not 0.0 < value < 1.0 and not (name != "val_fraction" and value == 1.0):
        bounds = "(0, 1)" if name == "val_fraction" else "(0, 1]"
        raise InvalidOptionError(f"RecipeConfig.{name} must be in {bounds}, got {value!r}")
    if name == "image_size" and value % 32:
        raise InvalidOptionError(
            f"RecipeConfig.image_size must be a multiple of 32 (YOLOv4's largest stride), got {value!r}: "
            f"use {max(32, 32 * round(value / 32))}"
        )
    if name == "sparsity_warmup" and not 0.0 <= value <= 1.0:
        raise InvalidOptionError(f"RecipeConfig.sparsity_warmup must be in [0, 1], got {value!r}")
    if name == "device" and value not in ("cpu", "cuda", "auto") and not re.fullmatch(r"cuda:\d+", value):
        raise InvalidOptionError(f"RecipeConfig.device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {value!r}")
    if name == "weights" and value is not None:
        if Path(value).is_dir():
            raise InvalidOptionError(
                f"RecipeConfig.weights: {value!r} is a folder; give the trained detector's file (a state_dict or "
                "save_pruned .pt file)"
            )
        if not Path(value).is_file():
            raise InvalidOptionError(f"RecipeConfig.weights: no such file {value!r}")
    if name == "cfg" and value is not None and not Path(value).is_file():
        raise InvalidOptionError(f"RecipeConfig.cfg: no such file {value!r}")
    if name == "data_root" and value is not None and not Path(value).is_dir():
        what = "is a file, not a folder" if Path(value).exists() else "no such folder"
        raise InvalidOptionError(f"RecipeConfig.data_root: {value!r} {what} (give a VOCdevkit-style folder)")
    if name == "classes" and (not value or len(set(value)) != len(value)):
        raise InvalidOptionError(f"RecipeConfig.classes must be distinct class names, got {value!r}")


#: The first stage each option affects: changing it reruns that stage and the ones after it.
STAGE_OF_OPTION: dict[str, str] = {
    **dict.fromkeys(
        (
            "data_root",
            "classes",
            "num_images",
            "val_fraction",
            "image_size",
            "backbone",
            "width",
            "depth",
            "batch_size",
            "lr",
            "dense_epochs",
            "seed",
            "weights",
            "cfg",
            "amp",
        ),
        "dense",
    ),
    **dict.fromkeys(
        (
            "sparse_optimizer",
            "sparse_lr",
            "sparsity",
            "sparsity_schedule",
            "sparsity_warmup",
            "sparsity_keep",
            "sparsity_scope",
            "sparse_epochs",
        ),
        "sparse",
    ),
    **dict.fromkeys(
        (
            "target_params",
            "target_macs",
            "target_latency",
            "prune_by",
            "gamma_threshold",
            "prune_scope",
            "min_channels",
            "round_to",
            "search_candidates",
            "runtime",
        ),
        "pruned",
    ),
    **dict.fromkeys(
        (
            "recover_lr",
            "recover_epochs",
            "finetune_epochs",
            "distill_off_epochs",
            "teacher",
            "distill_weight",
            "distill_layers",
            "output_distill_weight",
            "distill_temperature",
            "channel_distill_weight",
        ),
        "recovered",
    ),
}


#: Options added after epoch states first recorded fingerprints, with their defaults: at the default they stay out
#: of :func:`stage_fingerprint`, so that an epoch state written before they existed still resumes (and out of
#: ``benchmarks/quality.py``'s arm digests, so that its committed records still match).
ADDED_OPTIONS: dict[str, Any] = {"target_macs": 0.5, "target_latency": 0.5, "channel_distill_weight": 0.0}

#: Options that do not change what a stage computes, only where: a run may resume with other values.
_NOT_STAGE_OPTIONS = ("out_dir", "device")


def first_changed_stage(previous: Mapping[str, Any], config: RecipeConfig) -> str | None:
    """The first stage whose options differ between a saved configuration and ``config``.

    Args:
        previous: the ``config`` of an earlier ``results.json`` (JSON values).
        config: the new options.

    Returns:
        A stage of :data:`STAGES` (``"dense"`` for an option unknown to :data:`STAGE_OF_OPTION`), or ``None``
        when nothing that matters changed (``out_dir`` never matters).
    """
    before, current = _comparable(previous), _comparable(recorded_options(config))
    keys = (set(before) | set(current)) - set(_NOT_STAGE_OPTIONS)
    if "cfg_sha256" not in before:  # results.json of an earlier version: the cfg was recorded by path only
        keys.discard("cfg_sha256")
    # An option added since the folder was written changes nothing while it keeps its default (the old behaviour).
    defaults = _comparable(
        {
            f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(RecipeConfig)
            if f.name not in before and (f.default, f.default_factory) != (dataclasses.MISSING, dataclasses.MISSING)
        }
    )
    changed = [k for k in keys if before.get(k, defaults.get(k)) != current.get(k)]
    stages = [STAGE_OF_OPTION.get(k, "dense") for k in changed]
    if changed:
        first = min(stages, key=STAGES.index)
        logger.info("options changed since the last run (%s): rerunning from %s", ", ".join(sorted(changed)), first)
        return first
    return None


def stage_fingerprint(config: RecipeConfig, stage: str) -> str:
    """A digest of the options that affect ``stage`` and the stages before it (16 hex characters).

    An epoch state of a stage records it (:meth:`~grouppruner.recipe.RecipeRun.train`): a state made
    with other options is refused instead of resumed. ``stage`` may be a label such as ``"recovered (distill)"``:
    its first word names the stage; a label that names no stage covers every option.
    """
    first_word = stage.split()[0] if stage.split() else stage
    last = STAGES.index(first_word) if first_word in STAGES else len(STAGES) - 1
    options = _comparable(recorded_options(config))
    for key, value in ADDED_OPTIONS.items():
        if options.get(key) == value:
            del options[key]
    relevant = {k: v for k, v in options.items() if STAGES.index(STAGE_OF_OPTION.get(k, "dense")) <= last}
    for key in _NOT_STAGE_OPTIONS:
        relevant.pop(key, None)
    text = json.dumps({"stage": stage, "options": relevant}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded_options(config: RecipeConfig) -> dict[str, Any]:
    """The options as ``results.json`` records them: the fields of ``config`` and, with a darknet ``cfg``, the
    SHA-256 of its content (``cfg_sha256``), so that a cfg edited in place makes its stages run again."""
    options = asdict(config)
    if config.cfg is not None:
        options["cfg_sha256"] = file_sha256(config.cfg)
    return options


def _comparable(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as JSON values, with the paths of ``data_root``, ``weights`` and ``cfg`` resolved: a relative and an
    absolute spelling of one path are the same option."""
    values: dict[str, Any] = json.loads(json.dumps(dict(options)))
    for key in ("data_root", "weights", "cfg"):
        if isinstance(values.get(key), str):
            values[key] = str(Path(values[key]).resolve())
    return values
