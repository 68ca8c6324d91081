"""The distiller: :class:`AttentionDistiller` runs a frozen teacher and a student on the same inputs and returns the
weighted difference of their spatial attention maps on chosen layers.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils.errors import (
    DistillerStateError,
    InvalidOptionError,
    LayerNotFoundError,
    LayerOutputError,
    NonFiniteError,
    OptionTypeError,
)
from .._utils.names import close_matches
from .._utils.wrappers import inner_name, unwrap
from .channel import channel_wise_distillation
from .recorder import AttentionRecorder, Selector

logger = logging.getLogger(__name__)

__all__ = ["AttentionDistiller", "ForegroundMask", "LossKind", "ResizeMode"]

LossKind: TypeAlias = Literal["mse", "l1"]
ResizeMode: TypeAlias = Literal["bilinear", "area"]
ForegroundMask: TypeAlias = "Tensor | Callable[[tuple[int, int]], Tensor]"
"""A foreground mask for :meth:`AttentionDistiller.loss`: an ``(N, 1, H, W)`` tensor in ``[0, 1]`` at any
resolution (area-resized to each layer's grid), or a callable ``grid (H, W) -> (N, H, W)`` mask on that grid
(e.g. :func:`grouppruner.detection.box_foreground` for ground-truth boxes)."""


class AttentionDistiller(nn.Module):
    """Spatial-attention distillation from a frozen teacher to a student (typically the pruned teacher).

    Usage in a training loop:

    ```python
    distiller = AttentionDistiller(teacher, student, teacher.distill_layers)
    outputs = distiller(images)        # runs the student, and the teacher under no_grad
    kd, per_layer = distiller.loss()   # weighted sum over layers, per-layer values for logging
    (task_loss(outputs, targets) + kd).backward()
    ```

    The teacher is put in eval mode, frozen (``requires_grad_(False)``) and run under ``torch.no_grad()``; it stays
    in eval when ``train()`` is called on the distiller or on any module holding it, and it is switched back to
    eval at every forward if someone called ``teacher.train()`` directly. It follows the student's device.
    Models wrapped in DistributedDataParallel / DataParallel (``.module``) or ``torch.compile``
    (``._orig_mod``) are accepted; the hooks go on the wrapped model, the forward goes through the wrapper.

    Args:
        teacher: the original model (frozen here).
        student: the model being trained; may be DDP-wrapped or compiled.
        layers: module names present in both models (a pruned student keeps its names), or a mapping
            ``student name -> teacher name``. A ``module.`` / ``_orig_mod.`` prefix is ignored.
        weights: per-layer weights, a mapping by student name (missing layers weigh 1) or a sequence in the
            order of ``layers``. Default 1 for every layer (the paper used larger weights on backbone layers).
        p: exponent of `spatial_attention` (paper: 2).
        loss: ``"mse"`` (paper: mean squared difference of the maps) or ``"l1"`` (mean absolute difference).
        resize: ``None`` makes a spatial-size mismatch between a student and teacher layer an error;
            ``"bilinear"`` or ``"area"`` resize the student's map to the teacher's grid (then renormalise).
        select: per-layer selector (by student name) for layers whose output is a tuple / list / dict:
            an index or key, or a callable returning the ``(N, C, H, W)`` feature. Applied to both models.
        fg_weight: weight of foreground cells when `loss` gets a mask.
        bg_weight: weight of background cells when `loss` gets a mask.
        check_finite: check the per-layer losses for NaN/Inf in `loss` (one device sync per step) and
            raise an error naming the layer and the model at fault.
        channel_index: for the channel-wise term (:meth:`channel_loss`): per student layer name, the teacher
            channel of each student channel, ``(C_student,)`` int64
            (:func:`grouppruner.pruning.teacher_channels`). Only these layers' features are kept (the student's
            whole, the teacher's gathered at the index); without it only attention maps are.

    Raises:
        ValueError: teacher and student are the same object or share a parameter / buffer (``copy.copy``, a
            wrapper around the student's modules), ``layers`` is empty or has duplicates, bad weights / options.
        TypeError: the student is wrapped in ``nn.DataParallel`` (use DistributedDataParallel).
        LayerNotFoundError: a name is missing in a model (the message lists close matches and the names).
    """

    teacher: nn.Module
    student: nn.Module

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        layers: Sequence[str] | Mapping[str, str],
        *,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        p: float = 2.0,
        loss: LossKind = "mse",
        resize: ResizeMode | None = None,
        select: Mapping[str, Selector] | None = None,
        fg_weight: float = 2.0,
        bg_weight: float = 1.0,
        check_finite: bool = True,
        channel_index: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, nn.Module):
                raise OptionTypeError(f"{role} must be an nn.Module, got {type(model).__name__}")
        if isinstance(student, nn.DataParallel):
            # DataParallel runs replicas in threads that share the hooks; each would record its own shard.
            raise OptionTypeError(
                "a DataParallel student is not supported: use DistributedDataParallel (or no wrapper)"
            )
        teacher_root, student_root = unwrap(teacher), unwrap(student)
        if teacher is student or teacher_root is student_root:
            raise InvalidOptionError(
                "teacher and student are the same object; distil from a frozen copy "
                "(e.g. teacher = copy.deepcopy(model) before pruning)"
            )
        _refuse_shared_tensors(teacher_root, student_root)
        if loss not in ("mse", "l1"):
            raise InvalidOptionError(f"loss must be 'mse' or 'l1', got {loss!r}")
        if resize not in (None, "bilinear", "area"):
            raise InvalidOptionError(f"resize must be None, 'bilinear' or 'area', got {resize!r}")
        if not (isinstance(p, int | float) and math.isfinite(p) and p > 0):
            raise InvalidOptionError(f"p must be a positive finite number, got {p!r}")
        if not (fg_weight >= 0 and bg_weight >= 0 and fg_weight + bg_weight > 0):
            raise InvalidOptionError(
                f"fg_weight and bg_weight must be >= 0 and not both 0, got {fg_weight}, {bg_weight}"
            )

        self.pairs = self._resolve_layers(layers, student, teacher)
        self.layer_weights = self._resolve_weights(weights, [s for s, _ in self.pairs], student)
        self.p = float(p)
        self.loss_kind: LossKind = loss
        self.resize: ResizeMode | None = resize
        self.fg_weight = float(fg_weight)
        self.bg_weight = float(bg_weight)
        self.check_finite = check_finite

        self.student = student
        # The teacher needs no gradient synchronisation (and DataParallel replicas would each record a shard),
        # so a DDP / DataParallel teacher is run unwrapped; a compiled teacher keeps its compiled forward.
        parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
        # Kept out of the module tree: the distiller's state_dict / parameters / .to() are the student's alone.
        object.__setattr__(self, "teacher", teacher.module if isinstance(teacher, parallel) else teacher)
        self.teacher.eval()
        self.teacher.requires_grad_(False)

        selector_by_student = dict(select or {})
        unknown = sorted(set(selector_by_student) - {s for s, _ in self.pairs})
        if unknown:
            raise InvalidOptionError(f"select names layers that are not distilled: {unknown}")
        index = {inner_name(student, k): v for k, v in (channel_index or {}).items()}
        unknown = sorted(set(index) - {s for s, _ in self.pairs})
        if unknown:
            raise InvalidOptionError(f"channel_index names layers that are not distilled: {unknown}")
        bad = [n for n, v in index.items() if not (isinstance(v, Tensor) and v.dim() == 1 and v.dtype == torch.long)]
        if bad:
            raise InvalidOptionError(f"channel_index must map layer names to 1-D int64 tensors; not so for {bad}")
        self.channel_index = index
        self.student_recorder = AttentionRecorder(
            student_root,
            [s for s, _ in self.pairs],
            role="student",
            p=self.p,
            select=selector_by_student,
            keep=dict.fromkeys(index),
        )
        self.teacher_recorder = AttentionRecorder(
            teacher_root,
            [t for _, t in self.pairs],
            role="teacher",
            p=self.p,
            select={t: selector_by_student[s] for s, t in self.pairs if s in selector_by_student},
            keep={t: index[s] for s, t in self.pairs if s in index},
        )
        self.last_teacher_output: Any = None
        self.input_size: tuple[int, int] | None = None
        self._probed = False
        self._removed = False

    @staticmethod
    def _resolve_layers(
        layers: Sequence[str] | Mapping[str, str], student: nn.Module, teacher: nn.Module
    ) -> list[tuple[str, str]]:
        if isinstance(layers, str):
            raise OptionTypeError("layers must be a sequence of module names or a mapping, not a single string")
        if isinstance(layers, Mapping):
            raw = [(str(s), str(t)) for s, t in layers.items()]
        else:
            raw = [(str(n), str(n)) for n in layers]
        if not raw:
            raise InvalidOptionError("layers is empty: name at least one layer to distil")
        pairs = [(inner_name(student, s), inner_name(teacher, t)) for s, t in raw]
        student_names = [s for s, _ in pairs]
        duplicates = sorted({s for s in student_names if student_names.count(s) > 1})
        if duplicates:
            raise InvalidOptionError(f"layers names these student layers more than once: {duplicates}")
        student_modules = dict(unwrap(student).named_modules())
        teacher_modules = dict(unwrap(teacher).named_modules())
        missing_s = [s for s, _ in pairs if s not in student_modules]
        missing_t = [t for _, t in pairs if t not in teacher_modules]
        messages = []
        if missing_s:
            messages.append(_missing_message(missing_s, "student", unwrap(student)))
        if missing_t:
            messages.append(_missing_message(missing_t, "teacher", unwrap(teacher)))
        if messages:
            raise LayerNotFoundError("\n".join(messages))
        return pairs

    @staticmethod
    def _resolve_weights(
        weights: Mapping[str, float] | Sequence[float] | None, names: list[str], student: nn.Module
    ) -> dict[str, float]:
        if weights is None:
            resolved = dict.fromkeys(names, 1.0)
        elif isinstance(weights, Mapping):
            unknown = sorted({inner_name(student, k) for k in weights} - set(names))
            if unknown:
                raise InvalidOptionError(f"weights names layers that are not distilled: {unknown}; layers: {names}")
            given = {inner_name(student, k): float(v) for k, v in weights.items()}
            resolved = {n: given.get(n, 1.0) for n in names}
        else:
            if len(weights) != len(names):
                raise InvalidOptionError(f"weights has {len(weights)} values but {len(names)} layers are distilled")
            resolved = {n: float(w) for n, w in zip(names, weights, strict=True)}
        bad = {n: w for n, w in resolved.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise InvalidOptionError(f"layer weights must be finite and >= 0, got {bad}")
        return resolved

    @property
    def layers(self) -> list[str]:
        """Student names of the distilled layers, in order."""
        return [s for s, _ in self.pairs]

    def train(self, mode: bool = True) -> AttentionDistiller:
        """Set the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _prepare_teacher(self) -> None:
        # Someone may have called teacher.train() (or a wrapper's train()) directly: BN statistics and dropout
        # of the teacher must never move.
        if any(m.training for m in self.teacher.modules()):
            logger.debug("teacher was switched to train mode; putting it back in eval")
            self.teacher.eval()
        device = first_device(self.student)
        if device is not None and first_device(self.teacher) not in (None, device):
            logger.info("moving the teacher to %s to follow the student", device)
            self.teacher.to(device)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher (no grad) and the student on the same inputs and record the attention maps.

        Args:
            *args: inputs of the student's forward, e.g. images ``(N, 3, H, W)``.
            **kwargs: keyword inputs of the student's forward.

        Returns:
            The student's output, unchanged. The teacher's output is kept in `last_teacher_output`.

        Raises:
            DistillerStateError: after `remove`.
            LayerOutputError: a hooked layer produced a tuple / non-4-D tensor, ran twice, or did not run.
            ValueError: a student map and a teacher map differ in spatial size and ``resize`` is None.
        """
        if self._removed:
            raise DistillerStateError("this AttentionDistiller was removed (its hooks are gone); create a new one")
        self._prepare_teacher()
        self.clear()
        self.input_size = next(
            (
                (int(a.shape[-2]), int(a.shape[-1]))
                for a in (*args, *kwargs.values())
                if isinstance(a, Tensor) and a.dim() == 4
            ),
            None,
        )
        try:
            self.teacher_recorder.active = True
            with torch.no_grad():
                self.last_teacher_output = self.teacher(*args, **kwargs)
            self.teacher_recorder.active = False
            self.student_recorder.active = True
            output = self.student(*args, **kwargs)
        finally:
            self.teacher_recorder.active = False
            self.student_recorder.active = False
        self._check_records()
        return output

    def _check_records(self) -> None:
        """Every layer ran in both models and the grids match (or may be resized)."""
        for recorder, names in (
            (self.student_recorder, [s for s, _ in self.pairs]),
            (self.teacher_recorder, [t for _, t in self.pairs]),
        ):
            silent = [n for n in names if n not in recorder.maps]
            if silent:
                raise LayerOutputError(
                    f"layer(s) {silent} of the {recorder.role} did not run during its forward; "
                    "distil layers that are part of the forward pass"
                )
        mismatched = [
            f"{s!r}: student {self.student_recorder.grids[s]} vs teacher {self.teacher_recorder.grids[t]}"
            + ("" if s == t else f" ({t!r})")
            for s, t in self.pairs
            if self.student_recorder.grids[s] != self.teacher_recorder.grids[t]
        ]
        if mismatched and self.resize is None:
            raise InvalidOptionError(
                "spatial sizes (H, W) of student and teacher layers differ:\n  "
                + "\n  ".join(mismatched)
                + "\npick layers at the same stride, or pass resize='bilinear' / 'area' to resize the student's map"
            )
        if not self._probed:
            self._probed = True
            logger.debug(
                "distilling %d layers, grids %s",
                len(self.pairs),
                {s: self.teacher_recorder.grids[t] for s, t in self.pairs},
            )

    def clear(self) -> None:
        """Drop the recorded maps of both models and the teacher output (done at every forward)."""
        self.student_recorder.clear()
        self.teacher_recorder.clear()
        self.last_teacher_output = None

    def recorded_bytes(self) -> dict[str, int]:
        """Bytes of attention maps held right now, per model and layer (``"student/<name>"``, ``"teacher/..."``)."""
        out = {f"student/{n}": b for n, b in self.student_recorder.nbytes().items()}
        out.update({f"teacher/{n}": b for n, b in self.teacher_recorder.nbytes().items()})
        return out

    def loss(self, *, mask: ForegroundMask | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted distillation loss over the recorded layers.

        Per layer, with ``d = (A_t - A_s)^2`` (``|A_t - A_s|`` for ``loss="l1"``) of shape ``(N, H*W)``:
        ``mean(d)``, or with a foreground weighting ``w`` (``fg_weight`` on foreground cells, ``bg_weight``
        elsewhere) the weighted mean ``sum(w * d) / sum(w)``. Total = ``sum_l weight_l * loss_l``.

        Args:
            mask: optional foreground: an ``(N, 1, Hm, Wm)`` mask in ``[0, 1]`` at any resolution covering the
                input (usually the input's), area-resized to each layer's grid; or a callable
                ``grid (H, W) -> (N, H, W)`` mask on that grid (ground-truth boxes:
                :func:`grouppruner.detection.box_foreground`).

        Returns:
            ``(total, per_layer)``: the scalar fp32 loss (differentiable w.r.t. the student) and the unweighted
            per-layer losses (detached), keyed by student layer name.

        Raises:
            DistillerStateError: no forward since construction / the last `clear`, or called after `remove`.
            NonFiniteError: a feature had NaN / Inf (names the layer and the model).
            ValueError: the mask's shape does not match the batch or the grid.
        """
        if self._removed:
            raise DistillerStateError(
                "loss() called after remove(): this AttentionDistiller's hooks and records are gone; "
                "create a new one to keep distilling"
            )
        if not self.student_recorder.maps:
            raise DistillerStateError(
                "loss() called before any forward: call outputs = distiller(inputs) first in each step"
            )
        per_layer: dict[str, Tensor] = {}
        for s, t in self.pairs:
            a_t = self.teacher_recorder.maps[t]
            a_s = self._student_map(s, self.teacher_recorder.grids[t])
            diff = (a_t - a_s).square() if self.loss_kind == "mse" else (a_t - a_s).abs()
            grid = self.teacher_recorder.grids[t]
            fg = self._foreground(mask, grid, diff)
            if fg is None:
                per_layer[s] = diff.mean()
            else:
                w = self.bg_weight + (self.fg_weight - self.bg_weight) * fg
                per_layer[s] = (w * diff).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
        values = torch.stack(list(per_layer.values()))
        if self.check_finite and not bool(torch.isfinite(values).all()):
            self._raise_non_finite()
        weights = torch.tensor([self.layer_weights[s] for s in per_layer], dtype=values.dtype, device=values.device)
        total = (values * weights).sum()
        return total, {name: v.detach() for name, v in per_layer.items()}

    def channel_loss(self, *, temperature: float = 1.0, normalize: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Channel-wise distillation over the layers of ``channel_index``: student channel ``j`` against teacher
        channel ``channel_index[layer][j]``.

        Per layer, :func:`~grouppruner.distill.channel_wise_distillation` of the student's ``(N, C_s, H, W)``
        feature and the teacher's gathered at the index; total = ``sum_l weight_l * loss_l``.

        Args:
            temperature: softmax temperature over the spatial positions.
            normalize: standardise each channel over space first.

        Returns:
            ``(total, per_layer)`` as :meth:`loss`.

        Raises:
            DistillerStateError: no ``channel_index``, no forward since the last `clear`, or after `remove`.
            InvalidOptionError: a student feature and the gathered teacher feature differ in shape.
            NonFiniteError: a layer's term is NaN / Inf.
        """
        if self._removed or not self.channel_index or not self.student_recorder.features:
            raise DistillerStateError(
                "channel_loss() needs channel_index at construction and a forward in this step (and no remove())"
            )
        per_layer: dict[str, Tensor] = {}
        for s, t in self.pairs:
            if s not in self.channel_index:
                continue
            student_feat, teacher_feat = self.student_recorder.features[s], self.teacher_recorder.features[t]
            if student_feat.shape != teacher_feat.shape:
                raise InvalidOptionError(
                    f"layer {s!r}: the student's feature {tuple(student_feat.shape)} and the teacher's at the "
                    f"channel index {tuple(teacher_feat.shape)} differ (an index for another student?)"
                )
            per_layer[s] = channel_wise_distillation(
                student_feat, teacher_feat, temperature=temperature, normalize=normalize
            )
        values = torch.stack(list(per_layer.values()))
        if self.check_finite and not bool(torch.isfinite(values).all()):
            bad = [name for name, v in per_layer.items() if not bool(torch.isfinite(v))]
            raise NonFiniteError(f"the channel-wise term of layer(s) {bad} is not finite (NaN / Inf features)")
        weights = torch.tensor([self.layer_weights[s] for s in per_layer], dtype=values.dtype, device=values.device)
        return (values * weights).sum(), {name: v.detach() for name, v in per_layer.items()}

    def _student_map(self, name: str, teacher_grid: tuple[int, int]) -> Tensor:
        a_s = self.student_recorder.maps[name]
        grid = self.student_recorder.grids[name]
        if grid == teacher_grid:
            return a_s
        if self.resize is None:
            raise InvalidOptionError(
                f"spatial size of layer {name!r} differs: student {grid} vs teacher {teacher_grid}; "
                "pass resize='bilinear' or 'area'"
            )
        image = a_s.view(a_s.shape[0], 1, *grid)
        if self.resize == "bilinear":
            image = F.interpolate(image, size=teacher_grid, mode="bilinear", align_corners=False)
        else:
            image = F.interpolate(image, size=teacher_grid, mode="area")
        # Resizing is linear, so renormalising gives the map of the resized energy.
        return F.normalize(image.flatten(1), p=2.0, dim=1)

    def _foreground(self, mask: ForegroundMask | None, grid: tuple[int, int], like: Tensor) -> Tensor | None:
        """``(N, H*W)`` foreground fraction of each cell of ``grid``, or None without a mask."""
        if mask is None:
            return None
        batch = like.shape[0]
        if callable(mask):
            fg = mask(grid)
            if not isinstance(fg, Tensor) or tuple(fg.shape) != (batch, *grid):
                got = tuple(fg.shape) if isinstance(fg, Tensor) else type(fg).__name__
                raise InvalidOptionError(
                    f"the mask callable must return shape ({batch}, {grid[0]}, {grid[1]}), got {got}"
                )
            return fg.detach().to(like.device, torch.float32).flatten(1)
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != batch:
            raise InvalidOptionError(f"mask must have shape ({batch}, 1, H, W), got {tuple(mask.shape)}")
        fg = F.interpolate(mask.detach().to(like.device, torch.float32), size=grid, mode="area")
        return fg.flatten(1)

    def _raise_non_finite(self) -> None:
        for s, t in self.pairs:
            for recorder, name in ((self.teacher_recorder, t), (self.student_recorder, s)):
                if not bool(torch.isfinite(recorder.maps[name]).all()):
                    raise NonFiniteError(
                        f"the feature of layer {name!r} of the {recorder.role} contains NaN or Inf "
                        "(its attention map is not finite)"
                    )
        raise NonFiniteError("the distillation loss is not finite (mask or weights contain NaN / Inf?)")

    def remove(self) -> None:
        """Remove every hook from both models and drop the records. The distiller cannot be used afterwards."""
        self.student_recorder.remove()
        self.teacher_recorder.remove()
        self.last_teacher_output = None
        self._removed = True

    def __enter__(self) -> AttentionDistiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _refuse_shared_tensors(teacher: nn.Module, student: nn.Module) -> None:
    """Raise if the teacher holds any parameter or buffer of the student.

    Freezing the teacher calls ``requires_grad_(False)`` on its parameters; when those are the student's own
    (``copy.copy(model)``, a wrapper module around the same layers) the student would silently stop learning,
    and its BN statistics would be the teacher's too.
    """
    student_tensors: dict[int, str] = {}
    for name, tensor in itertools.chain(
        student.named_parameters(remove_duplicate=False), student.named_buffers(remove_duplicate=False)
    ):
        student_tensors.setdefault(id(tensor), name)
    shared = [
        (t_name, student_tensors[id(tensor)])
        for t_name, tensor in itertools.chain(
            teacher.named_parameters(remove_duplicate=False), teacher.named_buffers(remove_duplicate=False)
        )
        if id(tensor) in student_tensors
    ]
    if shared:
        examples = ", ".join(f"teacher {t!r} is student {s!r}" for t, s in shared[:3])
        more = f" (and {len(shared) - 3} more)" if len(shared) > 3 else ""
        raise InvalidOptionError(
            f"the teacher shares {len(shared)} parameter(s) / buffer(s) with the student ({examples}{more}): "
            "freezing the teacher would freeze the student too. Distil from an independent copy: "
            "teacher = copy.deepcopy(model) (copy.copy and wrappers around the same modules share tensors)"
        )


def first_device(model: nn.Module) -> torch.device | None:
    """Device of the first parameter (else buffer) of ``model``; ``None`` for a model without tensors."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device


def _missing_message(missing: Sequence[str], role: str, model: nn.Module) -> str:
    """Error text for layer names absent from ``model``: close matches per name and the available module names."""
    available = [name for name, _ in model.named_modules() if name]
    lines = [f"{len(missing)} layer(s) not found in the {role} ({type(model).__name__}):"]
    for name in missing:
        close = close_matches(name, available)
        hint = f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        lines.append(f"  {name!r}{hint}")
    shown = available if len(available) <= 40 else [*available[:40], f"... ({len(available)} in all)"]
    lines.append(f"available module names: {', '.join(shown)}")
    return "\n".join(lines)
