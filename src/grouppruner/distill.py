"""Spatial-attention distillation: a frozen teacher teaches a (pruned) student through attention maps.

For a feature map ``F`` of shape ``(N, C, H, W)`` the spatial attention map is

``A(F) = normalize_L2(mean_c |F|^p).view(N, H*W)``

It is aggregated over channels, so a pruned student with fewer channels can still be compared with the original
teacher layer by layer. `AttentionDistiller` hooks the chosen layers of both models, keeps only the maps
(``N * H * W`` fp32 values per layer, never the feature) and returns the weighted per-layer loss.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._distill_impl import (
    ChannelEnergy,
    first_device,
    grid_stride,
    missing_message,
    strip_wrapper_prefix,
)
from ._wrappers import unwrap

logger = logging.getLogger(__name__)

__all__ = [
    "AttentionDistiller",
    "AttentionRecorder",
    "DistillerStateError",
    "LayerNotFoundError",
    "LayerOutputError",
    "NonFiniteFeatureError",
    "boxes_to_grid_mask",
    "spatial_attention",
]

Selector: TypeAlias = "int | str | Callable[[Any], Tensor]"
"""Picks the feature map out of a layer output that is not a plain tensor: an index, a key or a callable."""

LossKind: TypeAlias = Literal["mse", "l1"]
ResizeMode: TypeAlias = Literal["bilinear", "area"]


class LayerNotFoundError(KeyError):
    """A requested layer name does not exist in the teacher or the student."""

    def __str__(self) -> str:
        # KeyError would print the repr of the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class LayerOutputError(TypeError):
    """A hooked layer produced something other than one (N, C, H, W) tensor, or ran twice in one forward."""


class NonFiniteFeatureError(ValueError):
    """A hooked feature map contains NaN or Inf."""


class DistillerStateError(RuntimeError):
    """The distiller was used out of order (``loss()`` before a forward, use after ``remove()``)."""


def spatial_attention(feature: Tensor, *, p: float = 2.0) -> Tensor:
    """Spatial attention map of a feature map, computed in fp32 whatever the input dtype (fp64 stays fp64).

    ``A = normalize_L2(mean_c |F|^p)`` flattened over space. The map does not change when channels are
    permuted or duplicated, nor when the feature is multiplied by a positive constant. An all-zero feature
    gives an all-zero map.

    Args:
        feature: ``(N, C, H, W)`` feature map (any floating dtype, autocast or not).
        p: exponent applied to ``|F|`` before averaging over channels (paper: 2).

    Returns:
        ``(N, H*W)`` fp32 map (fp64 for an fp64 feature), each row of unit L2 norm (or zero). Exact for
        feature magnitudes from about 1e-18 to 1e18 (``p = 2``); beyond, fp32 under/overflows.

    Raises:
        TypeError: ``feature`` is not a tensor.
        ValueError: ``feature`` is not 4-D or ``p`` is not a positive finite number.
    """
    if not isinstance(feature, Tensor):
        raise TypeError(f"spatial_attention expects a tensor, got {type(feature).__name__}")
    if feature.dim() != 4:
        raise ValueError(f"spatial_attention expects an (N, C, H, W) feature map, got shape {tuple(feature.shape)}")
    if not (isinstance(p, int | float) and math.isfinite(p) and p > 0):
        raise ValueError(f"p must be a positive finite number, got {p!r}")
    if feature.shape[-2] * feature.shape[-1] == 0:
        raise ValueError(f"spatial_attention got an empty spatial grid, shape {tuple(feature.shape)}")
    if not feature.is_floating_point():
        feature = feature.float()
    tiny = torch.finfo(torch.float32).tiny
    # Autocast off: the map must be computed in fp32 from features of any dtype.
    with torch.autocast(device_type=feature.device.type, enabled=False):
        energy = ChannelEnergy.apply(feature, float(p)).flatten(1)  # type: ignore[no-untyped-call]
        # The normalised map does not depend on the scale of the energy (nor on the 1/C of the mean): divide by the
        # per-sample peak first (detached: the result does not depend on it, so gradients stay exact) so that the
        # L2 norm of tiny energies (an untrained teacher in eval mode emits ~1e-10 features) does not underflow.
        peak = energy.detach().amax(dim=1, keepdim=True).clamp_min(tiny)
        return F.normalize(energy / peak, p=2.0, dim=1, eps=tiny)


def boxes_to_grid_mask(
    boxes: Sequence[Tensor],
    grid_size: tuple[int, int],
    stride: float | tuple[float, float],
) -> Tensor:
    """Foreground mask of ground-truth boxes on a feature grid.

    Cell ``(i, j)`` (row ``i``, column ``j``) covers input pixels ``y in [i*sy, (i+1)*sy)``,
    ``x in [j*sx, (j+1)*sx)``; it is foreground when it overlaps a box with positive area, so even a box smaller
    than a cell marks at least one cell.

    Args:
        boxes: ``N`` tensors of shape ``(M_i, 4)``, ``x1, y1, x2, y2`` in input pixels (``M_i`` may be 0).
        grid_size: ``(H, W)`` of the feature grid (rows, columns).
        stride: input pixels per cell, one number or ``(sy, sx)``.

    Returns:
        ``(N, H, W)`` float mask with values in ``{0, 1}``.

    Raises:
        ValueError: a box tensor is not ``(M, 4)`` or the stride is not positive.
    """
    height, width = grid_size
    sy, sx = (stride, stride) if isinstance(stride, int | float) else stride
    if sy <= 0 or sx <= 0:
        raise ValueError(f"stride must be positive, got {stride!r}")
    masks = []
    for index, image_boxes in enumerate(boxes):
        if image_boxes.dim() != 2 or image_boxes.shape[-1] != 4:
            raise ValueError(f"boxes[{index}] must have shape (M, 4) xyxy, got {tuple(image_boxes.shape)}")
        b = image_boxes.detach().float()
        rows = torch.arange(height, device=b.device, dtype=torch.float32)
        cols = torch.arange(width, device=b.device, dtype=torch.float32)
        # Strict inequalities: a box edge lying exactly on a cell border does not claim the next cell.
        in_rows = (b[:, 1, None] < (rows + 1) * sy) & (b[:, 3, None] > rows * sy)  # (M, H)
        in_cols = (b[:, 0, None] < (cols + 1) * sx) & (b[:, 2, None] > cols * sx)  # (M, W)
        cover = (in_rows[:, :, None] & in_cols[:, None, :]).any(dim=0)  # (H, W)
        masks.append(cover.float())
    if not masks:
        raise ValueError("boxes is empty: expected one (M, 4) tensor per image")
    return torch.stack(masks)


def _select_feature(output: Any, selector: Selector | None, layer: str, role: str) -> Tensor:
    feature = output
    if selector is not None:
        feature = selector(output) if callable(selector) else output[selector]
    if not isinstance(feature, Tensor):
        raise LayerOutputError(
            f"layer {layer!r} of the {role} produced {type(feature).__name__}, not a tensor; pass "
            f"select={{{layer!r}: index_or_callable}} to pick the (N, C, H, W) feature out of it"
        )
    if feature.dim() != 4:
        raise LayerOutputError(
            f"layer {layer!r} of the {role} produced a tensor of shape {tuple(feature.shape)}; spatial attention "
            f"needs an (N, C, H, W) feature map (hook a convolutional layer, or pass select={{{layer!r}: ...}})"
        )
    return feature


class AttentionRecorder:
    """Forward hooks on named layers of one model that record only their spatial attention maps.

    While `active`, each hooked layer stores ``spatial_attention(output)`` (``(N, H*W)`` fp32) in
    `maps` and its grid ``(H, W)`` in `grids`; the feature itself is never kept.

    Args:
        model: the (unwrapped) model owning the layers.
        layers: qualified module names to hook.
        role: ``"teacher"`` or ``"student"``, used in error messages.
        p: exponent of `spatial_attention`.
        select: optional per-layer selector for layers whose output is not a tensor.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        *,
        role: str,
        p: float = 2.0,
        select: Mapping[str, Selector] | None = None,
    ) -> None:
        self.role = role
        self.p = p
        self.active = False
        self.maps: dict[str, Tensor] = {}
        self.grids: dict[str, tuple[int, int]] = {}
        self._handles: list[RemovableHandle] = []
        modules = dict(model.named_modules())
        select = select or {}
        for name in layers:
            hook = self._make_hook(name, select.get(name))
            self._handles.append(modules[name].register_forward_hook(hook))

    def _make_hook(self, name: str, selector: Selector | None) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.active:
                return
            if name in self.maps:
                raise LayerOutputError(
                    f"layer {name!r} of the {self.role} ran more than once in one forward (a shared module?); "
                    "hook a module that runs once per forward"
                )
            feature = _select_feature(output, selector, name, self.role)
            self.maps[name] = spatial_attention(feature, p=self.p)
            self.grids[name] = (int(feature.shape[-2]), int(feature.shape[-1]))

        return hook

    def clear(self) -> None:
        """Drop the recorded maps (and the autograd graph they hold)."""
        self.maps.clear()
        self.grids.clear()

    def nbytes(self) -> dict[str, int]:
        """Bytes held per layer: the size of each recorded map's storage (``N * H * W * 4``)."""
        return {name: m.untyped_storage().nbytes() for name, m in self.maps.items()}

    def remove(self) -> None:
        """Remove every hook and drop the records."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
        self.active = False

    @property
    def num_hooks(self) -> int:
        """Number of hooks still registered."""
        return len(self._handles)


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
        fg_weight: weight of foreground cells when `loss` gets a mask or boxes.
        bg_weight: weight of background cells when `loss` gets a mask or boxes.
        check_finite: check the per-layer losses for NaN/Inf in `loss` (one device sync per step) and
            raise an error naming the layer and the model at fault.

    Raises:
        ValueError: teacher and student are the same object, ``layers`` is empty or has duplicates, bad
            weights / options.
        TypeError: the student is wrapped in ``nn.DataParallel`` (use DistributedDataParallel).
        LayerNotFoundError: a name is missing in a model (the message lists close matches and the names).
    """

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
    ) -> None:
        super().__init__()
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, nn.Module):
                raise TypeError(f"{role} must be an nn.Module, got {type(model).__name__}")
        if isinstance(student, nn.DataParallel):
            # DataParallel runs replicas in threads that share the hooks; each would record its own shard.
            raise TypeError("a DataParallel student is not supported: use DistributedDataParallel (or no wrapper)")
        teacher_root, student_root = unwrap(teacher), unwrap(student)
        if teacher is student or teacher_root is student_root:
            raise ValueError(
                "teacher and student are the same object; distil from a frozen copy "
                "(e.g. teacher = copy.deepcopy(model) before pruning)"
            )
        if loss not in ("mse", "l1"):
            raise ValueError(f"loss must be 'mse' or 'l1', got {loss!r}")
        if resize not in (None, "bilinear", "area"):
            raise ValueError(f"resize must be None, 'bilinear' or 'area', got {resize!r}")
        if not (isinstance(p, int | float) and math.isfinite(p) and p > 0):
            raise ValueError(f"p must be a positive finite number, got {p!r}")
        if not (fg_weight >= 0 and bg_weight >= 0 and fg_weight + bg_weight > 0):
            raise ValueError(f"fg_weight and bg_weight must be >= 0 and not both 0, got {fg_weight}, {bg_weight}")

        self.pairs = self._resolve_layers(layers, student_root, teacher_root)
        self.layer_weights = self._resolve_weights(weights, [s for s, _ in self.pairs])
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
        self.teacher = teacher.module if isinstance(teacher, parallel) else teacher
        self.teacher.eval()
        self.teacher.requires_grad_(False)

        selector_by_student = dict(select or {})
        unknown = sorted(set(selector_by_student) - {s for s, _ in self.pairs})
        if unknown:
            raise ValueError(f"select names layers that are not distilled: {unknown}")
        self.student_recorder = AttentionRecorder(
            student_root, [s for s, _ in self.pairs], role="student", p=self.p, select=selector_by_student
        )
        self.teacher_recorder = AttentionRecorder(
            teacher_root,
            [t for _, t in self.pairs],
            role="teacher",
            p=self.p,
            select={t: selector_by_student[s] for s, t in self.pairs if s in selector_by_student},
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
            raise TypeError("layers must be a sequence of module names or a mapping, not a single string")
        if isinstance(layers, Mapping):
            raw = [(str(s), str(t)) for s, t in layers.items()]
        else:
            raw = [(str(n), str(n)) for n in layers]
        if not raw:
            raise ValueError("layers is empty: name at least one layer to distil")
        pairs = [(strip_wrapper_prefix(s), strip_wrapper_prefix(t)) for s, t in raw]
        student_names = [s for s, _ in pairs]
        duplicates = sorted({s for s in student_names if student_names.count(s) > 1})
        if duplicates:
            raise ValueError(f"layers names these student layers more than once: {duplicates}")
        student_modules = dict(student.named_modules())
        teacher_modules = dict(teacher.named_modules())
        missing_s = [s for s, _ in pairs if s not in student_modules]
        missing_t = [t for _, t in pairs if t not in teacher_modules]
        messages = []
        if missing_s:
            messages.append(missing_message(missing_s, "student", student))
        if missing_t:
            messages.append(missing_message(missing_t, "teacher", teacher))
        if messages:
            raise LayerNotFoundError("\n".join(messages))
        return pairs

    @staticmethod
    def _resolve_weights(weights: Mapping[str, float] | Sequence[float] | None, names: list[str]) -> dict[str, float]:
        if weights is None:
            resolved = dict.fromkeys(names, 1.0)
        elif isinstance(weights, Mapping):
            unknown = sorted(set(map(strip_wrapper_prefix, weights)) - set(names))
            if unknown:
                raise ValueError(f"weights names layers that are not distilled: {unknown}; layers: {names}")
            given = {strip_wrapper_prefix(k): float(v) for k, v in weights.items()}
            resolved = {n: given.get(n, 1.0) for n in names}
        else:
            if len(weights) != len(names):
                raise ValueError(f"weights has {len(weights)} values but {len(names)} layers are distilled")
            resolved = {n: float(w) for n, w in zip(names, weights, strict=True)}
        bad = {n: w for n, w in resolved.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"layer weights must be finite and >= 0, got {bad}")
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
            raise ValueError(
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

    def loss(
        self,
        *,
        mask: Tensor | None = None,
        boxes: Sequence[Tensor] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted distillation loss over the recorded layers.

        Per layer, with ``d = (A_t - A_s)^2`` (``|A_t - A_s|`` for ``loss="l1"``) of shape ``(N, H*W)``:
        ``mean(d)``, or with a foreground weighting ``w`` (``fg_weight`` on foreground cells, ``bg_weight``
        elsewhere) the weighted mean ``sum(w * d) / sum(w)``. Total = ``sum_l weight_l * loss_l``.

        Args:
            mask: optional ``(N, 1, Hm, Wm)`` foreground mask in ``[0, 1]`` at any resolution covering the input
                (usually the input's); area-resized to each layer's grid.
            boxes: optional ground-truth boxes, ``N`` tensors ``(M_i, 4)`` xyxy in input pixels; mapped to each
                layer's grid with the layer's stride (input size / grid size) by `boxes_to_grid_mask`.
            input_size: ``(H, W)`` of the input for ``boxes``; default: the 4-D tensor given to the last forward.

        Returns:
            ``(total, per_layer)``: the scalar fp32 loss (differentiable w.r.t. the student) and the unweighted
            per-layer losses (detached), keyed by student layer name.

        Raises:
            DistillerStateError: no forward since construction / the last `clear`.
            NonFiniteFeatureError: a feature had NaN / Inf (names the layer and the model).
            ValueError: both ``mask`` and ``boxes`` given, or their shapes do not match the batch.
        """
        if not self.student_recorder.maps:
            raise DistillerStateError(
                "loss() called before any forward: call outputs = distiller(inputs) first in each step"
            )
        if mask is not None and boxes is not None:
            raise ValueError("pass either mask or boxes, not both")
        if boxes is not None:
            input_size = input_size or self.input_size
            if input_size is None:
                raise ValueError("boxes need input_size=(H, W): the last forward had no 4-D tensor input")
        per_layer: dict[str, Tensor] = {}
        for s, t in self.pairs:
            a_t = self.teacher_recorder.maps[t]
            a_s = self._student_map(s, self.teacher_recorder.grids[t])
            diff = (a_t - a_s).square() if self.loss_kind == "mse" else (a_t - a_s).abs()
            grid = self.teacher_recorder.grids[t]
            fg = self._foreground(mask, boxes, input_size, grid, diff)
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

    def _student_map(self, name: str, teacher_grid: tuple[int, int]) -> Tensor:
        a_s = self.student_recorder.maps[name]
        grid = self.student_recorder.grids[name]
        if grid == teacher_grid:
            return a_s
        if self.resize is None:
            raise ValueError(
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

    def _foreground(
        self,
        mask: Tensor | None,
        boxes: Sequence[Tensor] | None,
        input_size: tuple[int, int] | None,
        grid: tuple[int, int],
        like: Tensor,
    ) -> Tensor | None:
        """``(N, H*W)`` foreground fraction of each cell of ``grid``, or None without mask / boxes."""
        batch = like.shape[0]
        if mask is not None:
            if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != batch:
                raise ValueError(f"mask must have shape ({batch}, 1, H, W), got {tuple(mask.shape)}")
            fg = F.interpolate(mask.detach().to(like.device, torch.float32), size=grid, mode="area")
            return fg.flatten(1)
        if boxes is not None:
            if len(boxes) != batch:
                raise ValueError(f"boxes has {len(boxes)} entries for a batch of {batch}")
            assert input_size is not None  # checked in loss()
            stride = (grid_stride(input_size[0], grid[0]), grid_stride(input_size[1], grid[1]))
            return boxes_to_grid_mask(boxes, grid, stride).to(like.device).flatten(1)
        return None

    def _raise_non_finite(self) -> None:
        for s, t in self.pairs:
            for recorder, name in ((self.teacher_recorder, t), (self.student_recorder, s)):
                if not bool(torch.isfinite(recorder.maps[name]).all()):
                    raise NonFiniteFeatureError(
                        f"the feature of layer {name!r} of the {recorder.role} contains NaN or Inf "
                        "(its attention map is not finite)"
                    )
        raise NonFiniteFeatureError("the distillation loss is not finite (mask or weights contain NaN / Inf?)")

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
