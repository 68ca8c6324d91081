"""Output-level knowledge distillation for YOLOv4: class / objectness KL and box L2 at ground-truth cells.

The term the paper combined with spatial-attention distilling (`grouppruner.AttentionDistiller`):
the student's raw head maps are pulled towards the teacher's. Positions are those the training loss assigns
to each ground-truth box (`grouppruner.detection.YoloLoss`'s multi-anchor assignment), so the class and
box terms act where the detector is trained, while the objectness term covers every anchor position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils.errors import InvalidOptionError
from .decode import BoxCoding, box_cells, split_head_map
from .loss import YoloLoss, _targets_tensor
from .models import YOLOv4

__all__ = ["YoloOutputDistill"]


class YoloOutputDistill(nn.Module):
    """KL on class / objectness distributions (with temperature) and L2 on decoded boxes, teacher -> student.

    Per scale ``s`` with raw maps split into anchors (``(N, A, H, W, 5 + C)``, channels
    ``tx, ty, tw, th, obj, cls_0..cls_{C-1}``), temperature ``T``:

    * ``obj_s`` = mean over all ``N * A * H * W`` positions of the Bernoulli KL
      ``KL(sigmoid(o_t / T) || sigmoid(o_s / T)) * T^2``;
    * ``cls_s`` = mean over the ground-truth positions ``P_s`` of
      ``KL(softmax(c_t / T) || softmax(c_s / T)) * T^2`` (sum over the C classes);
    * ``box_s`` = mean over ``P_s`` of the squared L2 distance between the decoded boxes
      ``(cx, cy, w, h)`` in grid cells of that scale: ``xy = 2 sigmoid(t_xy) - 0.5`` (relative to the cell),
      ``wh = (2 sigmoid(t_wh))^2 * anchor / stride`` (the parameterisation of `decode`).

    ``total = cls_weight * sum_s cls_s + obj_weight * sum_s obj_s + box_weight * sum_s box_s``; a scale without
    ground-truth positions contributes 0 to ``cls`` and ``box``. The teacher's maps are detached. The ``T^2``
    factor keeps gradient magnitudes comparable across temperatures (Hinton et al., 2015).

    Args:
        num_classes: number of classes C.
        anchors: ``(S, A, 2)`` anchor (w, h) in input pixels per scale; default those of ``yolov4.cfg``
            (pass ``model.anchors`` when the model uses others, or build with `from_model`).
        strides: stride of each head map.
        temperature: softmax / sigmoid temperature T (paper: 3).
        cls_weight: weight of the class KL.
        obj_weight: weight of the objectness KL.
        box_weight: weight of the box L2.
        anchor_threshold: anchor-to-box size ratio of the assignment (as in `YoloLoss`).
        use_difficult: also use boxes flagged ``difficult`` as ground-truth positions.
        coding: the :class:`~grouppruner.detection.decode.BoxCoding` of each map (default: this library's).

    Shape:
        ``forward(student_outputs, teacher_outputs, targets)``: two lists of S raw maps
        ``(N, A * (5 + C), H_s, W_s)`` of equal shapes, ``targets`` N dicts with ``"boxes"`` ``(M, 4)`` xyxy in
        input pixels and ``"labels"`` ``(M,)``. Returns ``(total, parts)``: a scalar fp32 loss and the detached
        weighted parts ``"cls"``, ``"obj"``, ``"box"`` (they sum to total).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        anchors: Tensor | Sequence[Sequence[Sequence[float]]] | None = None,
        strides: Sequence[int] = (8, 16, 32),
        temperature: float = 3.0,
        cls_weight: float = 1.0,
        obj_weight: float = 1.0,
        box_weight: float = 1.0,
        anchor_threshold: float = 4.0,
        use_difficult: bool = False,
        coding: Sequence[BoxCoding] | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise InvalidOptionError(f"YoloOutputDistill: temperature must be positive, got {temperature}")
        for label, weight in (("cls_weight", cls_weight), ("obj_weight", obj_weight), ("box_weight", box_weight)):
            if not weight >= 0:
                raise InvalidOptionError(f"YoloOutputDistill: {label} must be >= 0, got {weight}")
        # The assignment of ground truths to (image, anchor, row, column) is the training loss's own, so the
        # output term acts exactly where the detector is trained.
        self.assigner = YoloLoss(
            num_classes,
            anchors=anchors,
            strides=strides,
            balance=(1.0,) * len(strides),  # objectness balance is not used for the assignment
            anchor_threshold=anchor_threshold,
            use_difficult=use_difficult,
            coding=coding,
        )
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.cls_weight = float(cls_weight)
        self.obj_weight = float(obj_weight)
        self.box_weight = float(box_weight)

    @classmethod
    def from_model(cls, model: YOLOv4 | nn.Module, **kwargs: float | bool) -> YoloOutputDistill:
        """Build for a `YOLOv4` or a darknet model (its ``num_classes``, ``anchors``, ``strides`` and, if it has
        one, ``coding``); ``kwargs`` as above."""
        return cls(
            model.num_classes,  # type: ignore[arg-type]
            anchors=model.anchors,  # type: ignore[arg-type]
            strides=model.strides,  # type: ignore[arg-type]
            coding=getattr(model, "coding", None),
            **kwargs,  # type: ignore[arg-type]
        )

    def forward(
        self,
        student_outputs: Sequence[Tensor],
        teacher_outputs: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the output-level distillation loss (see the class docstring for the formula).

        Args:
            student_outputs: S raw head maps ``(N, A * (5 + C), H_s, W_s)`` of the student.
            teacher_outputs: the teacher's maps for the same images (e.g.
                ``AttentionDistiller.last_teacher_output``), same shapes.
            targets: N dicts with ``"boxes"`` ``(M, 4)`` xyxy input pixels and ``"labels"`` ``(M,)``.

        Returns:
            ``(total, {"cls": ..., "obj": ..., "box": ...})``.

        Raises:
            ValueError: number or shapes of the maps do not match each other, the strides or the classes.
        """
        strides = self.assigner.strides
        num_anchors = self.assigner.anchors.shape[1]
        if len(student_outputs) != len(strides) or len(teacher_outputs) != len(strides):
            raise InvalidOptionError(
                f"YoloOutputDistill: expected {len(strides)} head maps from student and teacher, "
                f"got {len(student_outputs)} and {len(teacher_outputs)}"
            )
        expected = num_anchors * (5 + self.num_classes)
        for scale, (s_map, t_map) in enumerate(zip(student_outputs, teacher_outputs, strict=True)):
            if s_map.shape != t_map.shape or s_map.dim() != 4 or s_map.shape[1] != expected:
                raise InvalidOptionError(
                    f"YoloOutputDistill: head map {scale}: student {tuple(s_map.shape)} and teacher "
                    f"{tuple(t_map.shape)} must be equal, (N, {expected}, H, W) ({num_anchors} anchors x "
                    f"(5 + {self.num_classes} classes))"
                )
        batch = student_outputs[0].shape[0]
        if len(targets) != batch:
            raise InvalidOptionError(f"YoloOutputDistill: {batch} images in the outputs but {len(targets)} targets")
        device = student_outputs[0].device
        gt = _targets_tensor(targets, use_difficult=self.assigner.use_difficult, device=device)
        t = self.temperature
        cls_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        box_loss = torch.zeros((), device=device)
        for scale, (s_map, t_map, stride) in enumerate(zip(student_outputs, teacher_outputs, strides, strict=True)):
            ps = split_head_map(s_map, num_anchors).float()  # (N, A, H, W, 5 + C)
            pt = split_head_map(t_map.detach(), num_anchors).float()
            obj_loss = obj_loss + _bernoulli_kl(pt[..., 4] / t, ps[..., 4] / t).mean() * t * t
            b, a, gj, gi, _, _ = self.assigner._assign(gt, scale, stride, ps.shape[2], ps.shape[3])
            if b.numel() == 0:
                continue
            ms, mt = ps[b, a, gj, gi], pt[b, a, gj, gi]  # (P, 5 + C)
            log_q = F.log_softmax(ms[:, 5:] / t, dim=1)
            log_p = F.log_softmax(mt[:, 5:] / t, dim=1)
            cls_loss = cls_loss + (log_p.exp() * (log_p - log_q)).sum(dim=1).mean() * t * t
            anchor_wh = self.assigner.anchors[scale].to(device)[a] / stride  # (P, 2) in cells
            coding = self.assigner.coding[scale]
            box_s, box_t = box_cells(ms, anchor_wh, coding), box_cells(mt, anchor_wh, coding)
            box_loss = box_loss + (box_s - box_t).square().sum(dim=1).mean()
        cls_part = self.cls_weight * cls_loss
        obj_part = self.obj_weight * obj_loss
        box_part = self.box_weight * box_loss
        total = cls_part + obj_part + box_part
        return total, {"cls": cls_part.detach(), "obj": obj_part.detach(), "box": box_part.detach()}


def _bernoulli_kl(teacher_logit: Tensor, student_logit: Tensor) -> Tensor:
    """Elementwise ``KL(Bern(sigmoid(t)) || Bern(sigmoid(s)))`` from logits, numerically stable."""
    p = torch.sigmoid(teacher_logit)
    return p * (F.logsigmoid(teacher_logit) - F.logsigmoid(student_logit)) + (1 - p) * (
        F.logsigmoid(-teacher_logit) - F.logsigmoid(-student_logit)
    )
