"""YOLOv4 training loss (CIoU box, BCE objectness and class terms, multi-anchor assignment) and k-means anchors.

Assignment (Scaled-YOLOv4): at every scale, a ground-truth box is assigned to each anchor whose width and
height ratios to the box are all within ``anchor_threshold`` (so one box may train several anchors and
several scales), in its own grid cell and in the two neighbouring cells closest to its centre (the decoded
centre may move half a cell outside its cell, see :mod:`grouppruner.detection.decode`). Maps with a darknet
:class:`~grouppruner.detection.decode.BoxCoding` whose centre cannot leave its cell (``scale_x_y < 2``, as in
``yolov4.cfg``) train the own cell only, and their boxes are decoded in that coding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils.errors import DataError, InvalidOptionError
from .decode import DEFAULT_ANCHORS, BoxCoding, box_cells, split_head_map

__all__ = ["YoloLoss", "ciou", "kmeans_anchors"]

# Neighbour-cell offsets (in cells) for: own cell, left, up, right, down.
_OFFSETS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0), (0.0, -0.5))

#: Objectness weight per stride when ``balance`` is not given (small strides have more positions).
_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4}


def ciou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of paired boxes in (cx, cy, w, h) form.

    ``CIoU = IoU - rho^2 / c^2 - alpha * v`` with ``rho`` the centre distance, ``c`` the diagonal of the
    smallest enclosing box and ``v`` the aspect-ratio consistency term (Zheng et al., 2020); ``alpha`` is
    treated as a constant in the backward pass, as in the paper.

    Args:
        boxes1: (M, 4) cx, cy, w, h.
        boxes2: (M, 4) cx, cy, w, h (paired with ``boxes1`` row by row).
        eps: numerical guard.

    Returns:
        (M,) CIoU in [-1.5, 1]; 1 for identical boxes.
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes1.unbind(-1), boxes2.unbind(-1)
    left1, right1, top1, bottom1 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    left2, right2, top2, bottom2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.minimum(right1, right2) - torch.maximum(left1, left2)).clamp(min=0) * (
        torch.minimum(bottom1, bottom2) - torch.maximum(top1, top2)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    enclose_w = torch.maximum(right1, right2) - torch.minimum(left1, left2)
    enclose_h = torch.maximum(bottom1, bottom2) - torch.minimum(top1, top2)
    diag2 = enclose_w**2 + enclose_h**2 + eps
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / diag2 + alpha * v)


def _targets_tensor(targets: Sequence[dict[str, Tensor]], *, use_difficult: bool, device: torch.device) -> Tensor:
    """Stack contract-format targets into (T, 6): image index, label, cx, cy, w, h (input pixels)."""
    rows = []
    for i, target in enumerate(targets):
        for key in ("boxes", "labels"):
            if key not in target:
                raise DataError(f"YoloLoss: target {i} has no {key!r} entry (keys: {sorted(target)})")
        boxes = target["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4)
        labels = target["labels"].to(device=device).reshape(-1)
        if labels.shape[0] != boxes.shape[0]:
            raise InvalidOptionError(f"YoloLoss: target {i} has {boxes.shape[0]} boxes but {labels.shape[0]} labels")
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not use_difficult and "difficult" in target:
            keep &= ~target["difficult"].to(device=device, dtype=torch.bool).reshape(-1)
        boxes, labels = boxes[keep], labels[keep]
        wh = boxes[:, 2:] - boxes[:, :2]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        index = torch.full((boxes.shape[0], 1), float(i), device=device)
        rows.append(torch.cat([index, labels.float()[:, None], centre, wh], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 6, device=device)


class YoloLoss(nn.Module):
    """YOLOv4 loss: CIoU box loss, BCE objectness and BCE class losses with multi-anchor assignment.

    ``total = box_weight * box + obj_weight * obj + cls_weight * cls`` where ``box`` is the mean of
    ``1 - CIoU`` over assigned predictions, ``obj`` the BCE over all anchor positions (target: the detached,
    clamped CIoU at assigned positions, 0 elsewhere; weighted per scale by ``balance``) and ``cls`` the BCE
    of the class logits at assigned positions (one-hot targets, optional label smoothing). All terms are
    means, so the loss does not grow with the batch size.

    Args:
        num_classes: number of classes C.
        anchors: (3, 3, 2) anchor (w, h) in input pixels per stride; default those of ``yolov4.cfg``
            (pass ``model.anchors`` when the model uses others).
        strides: strides of the three head maps.
        box_weight: weight of the box term.
        obj_weight: weight of the objectness term.
        cls_weight: weight of the class term.
        balance: per-scale weights of the objectness term (small strides have more positions); default 4.0,
            1.0, 0.4 for strides 8, 16, 32 (1.0 for other strides).
        anchor_threshold: an anchor is assigned to a box when ``max(w/aw, aw/w, h/ah, ah/h) <`` this.
        label_smoothing: eps of class label smoothing (targets ``1 - eps/2`` and ``eps/2``).
        use_difficult: train on boxes flagged ``difficult`` too (darknet's VOC recipe drops them).
        coding: the :class:`~grouppruner.detection.decode.BoxCoding` of each map (default: this library's,
            ``BoxCoding()``); a darknet model passes its ``model.coding``.

    Shape:
        outputs: three raw maps (N, 3 * (5 + C), H_i, W_i); targets: N dicts with ``"boxes"`` (M, 4) xyxy
        input pixels, ``"labels"`` (M,) int64 and optionally ``"difficult"`` (M,) bool.
        Returns ``(total, parts)``: total a scalar with gradient, parts a dict of detached scalars
        ``"box"``, ``"obj"``, ``"cls"`` (weighted, they sum to total).
    """

    anchors: Tensor

    def __init__(
        self,
        num_classes: int,
        *,
        anchors: Tensor | Sequence[Sequence[Sequence[float]]] | None = None,
        strides: Sequence[int] = (8, 16, 32),
        box_weight: float = 0.05,
        obj_weight: float = 1.0,
        cls_weight: float = 0.5,
        balance: Sequence[float] | None = None,
        anchor_threshold: float = 4.0,
        label_smoothing: float = 0.0,
        use_difficult: bool = False,
        coding: Sequence[BoxCoding] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise InvalidOptionError(f"YoloLoss: num_classes must be positive, got {num_classes}")
        anchor_t = torch.tensor(DEFAULT_ANCHORS) if anchors is None else torch.as_tensor(anchors).float()
        anchor_t = anchor_t.detach().clone().float()
        if anchor_t.dim() != 3 or anchor_t.shape[0] != len(strides) or anchor_t.shape[2] != 2:
            raise InvalidOptionError(
                f"YoloLoss: anchors must have shape ({len(strides)}, A, 2), got {tuple(anchor_t.shape)}"
            )
        if balance is None:
            balance = [_BALANCE.get(int(s), 1.0) for s in strides]
        if len(balance) != len(strides):
            raise InvalidOptionError(f"YoloLoss: balance needs {len(strides)} values, got {len(balance)}")
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.register_buffer("anchors", anchor_t)
        self.box_weight = box_weight
        self.obj_weight = obj_weight
        self.cls_weight = cls_weight
        self.balance = tuple(float(b) for b in balance)
        self.coding = tuple(coding) if coding is not None else (BoxCoding(),) * len(strides)
        if len(self.coding) != len(strides):
            raise InvalidOptionError(f"YoloLoss: coding needs {len(strides)} entries, got {len(self.coding)}")
        self.anchor_threshold = anchor_threshold
        self.label_smoothing = label_smoothing
        self.use_difficult = use_difficult

    def forward(
        self, outputs: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            outputs: three raw head maps (N, A * (5 + C), H_i, W_i), as returned by ``YOLOv4.forward``.
            targets: N dicts, ``"boxes"`` (M, 4) xyxy in input pixels and ``"labels"`` (M,) int64.

        Returns:
            ``(total, {"box": ..., "obj": ..., "cls": ...})``: scalar loss and its detached weighted parts.
        """
        if len(outputs) != len(self.strides):
            raise InvalidOptionError(f"YoloLoss: expected {len(self.strides)} head maps, got {len(outputs)}")
        batch = outputs[0].shape[0]
        if len(targets) != batch:
            raise InvalidOptionError(f"YoloLoss: {batch} images in outputs but {len(targets)} targets")
        device = outputs[0].device
        num_anchors = self.anchors.shape[1]
        expected = num_anchors * (5 + self.num_classes)
        for output in outputs:
            if output.shape[1] != expected:
                raise InvalidOptionError(
                    f"YoloLoss: head map has {output.shape[1]} channels, expected {expected} "
                    f"({num_anchors} anchors x (5 + {self.num_classes} classes))"
                )
        gt = _targets_tensor(targets, use_difficult=self.use_difficult, device=device)
        if gt.shape[0] and not bool(((gt[:, 1] >= 0) & (gt[:, 1] < self.num_classes)).all()):
            bad = gt[(gt[:, 1] < 0) | (gt[:, 1] >= self.num_classes)][0]
            raise InvalidOptionError(
                f"YoloLoss: target {int(bad[0])} has label {int(bad[1])} outside [0, {self.num_classes})"
            )
        box_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        cls_loss = torch.zeros((), device=device)
        for scale, (output, stride) in enumerate(zip(outputs, self.strides, strict=True)):
            pred = split_head_map(output, num_anchors).float()
            tobj = torch.zeros(pred.shape[:4], device=device)
            b, a, gj, gi, tbox, labels = self._assign(gt, scale, stride, pred.shape[2], pred.shape[3])
            if b.numel():
                matched = pred[b, a, gj, gi]
                anchor_wh = self.anchors[scale].to(device)[a] / stride
                score = ciou(box_cells(matched, anchor_wh, self.coding[scale]), tbox)
                box_loss = box_loss + (1.0 - score).mean()
                tobj[b, a, gj, gi] = score.detach().clamp(min=0).to(tobj.dtype)
                cls_target = torch.full_like(matched[:, 5:], self.label_smoothing / 2)
                cls_target[torch.arange(labels.shape[0], device=device), labels] = 1.0 - self.label_smoothing / 2
                cls_loss = cls_loss + F.binary_cross_entropy_with_logits(matched[:, 5:], cls_target)
            obj_loss = obj_loss + self.balance[scale] * F.binary_cross_entropy_with_logits(pred[..., 4], tobj)
        box_part = self.box_weight * box_loss
        obj_part = self.obj_weight * obj_loss
        cls_part = self.cls_weight * cls_loss
        total = box_part + obj_part + cls_part
        parts = {"box": box_part.detach(), "obj": obj_part.detach(), "cls": cls_part.detach()}
        return total, parts

    def _assign(
        self, gt: Tensor, scale: int, stride: int, height: int, width: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Positions trained by each ground truth at one scale.

        Returns image index, anchor index, cell row, cell column (each (P,) int64), the target box (P, 4)
        as (cx, cy, w, h) in cells relative to the cell's corner, and the class label (P,) int64.
        """
        device = gt.device
        empty = torch.zeros(0, dtype=torch.long, device=device)
        if gt.shape[0] == 0:
            return empty, empty, empty, empty, torch.zeros(0, 4, device=device), empty
        anchors = self.anchors[scale].to(device) / stride  # (A, 2) in cells
        gxy = gt[:, 2:4] / stride
        gwh = gt[:, 4:6] / stride
        ratio = gwh[None] / anchors[:, None]  # (A, T, 2)
        match = torch.maximum(ratio, 1 / ratio).amax(dim=2) < self.anchor_threshold
        a, t = match.nonzero(as_tuple=True)
        xy = gxy[t]
        frac = xy % 1
        # A neighbouring cell can reach the centre only when the decoded centre may leave its cell by half a cell.
        neighbours = self.coding[scale].scale_x_y >= 2.0
        near = torch.stack(
            [
                torch.ones_like(frac[:, 0], dtype=torch.bool),
                (frac[:, 0] < 0.5) & (xy[:, 0] > 1) & neighbours,
                (frac[:, 1] < 0.5) & (xy[:, 1] > 1) & neighbours,
                (frac[:, 0] > 0.5) & (xy[:, 0] < width - 1) & neighbours,
                (frac[:, 1] > 0.5) & (xy[:, 1] < height - 1) & neighbours,
            ]
        )  # (5, P0)
        offsets = torch.tensor(_OFFSETS, device=device)[:, None].expand(-1, a.shape[0], -1)[near]
        a = a.repeat(5, 1)[near]
        t = t.repeat(5, 1)[near]
        xy = gxy[t]
        cell = (xy - offsets).long()
        gi = cell[:, 0].clamp(0, width - 1)
        gj = cell[:, 1].clamp(0, height - 1)
        tbox = torch.cat([xy - torch.stack([gi, gj], dim=1).float(), gwh[t]], dim=1)
        return gt[t, 0].long(), a, gj, gi, tbox, gt[t, 1].long()


def kmeans_anchors(boxes_wh: Tensor, k: int = 9, *, seed: int = 0, max_iter: int = 300) -> Tensor:
    """Anchor sizes for a data set by k-means with the ``1 - IoU`` distance (boxes aligned at a corner).

    Centroids start at ``k`` distinct boxes drawn with ``seed`` and move to the median of their cluster
    until assignments stop changing. Reshape the result with ``.view(3, k // 3, 2)`` for :func:`yolov4`.

    Args:
        boxes_wh: (M, 2) box widths and heights in input pixels, M >= k.
        k: number of anchors.
        seed: random seed of the initial centroids (the result is deterministic given the seed).
        max_iter: iteration cap.

    Returns:
        (k, 2) float anchors (w, h), sorted by increasing area.
    """
    wh = torch.as_tensor(boxes_wh, dtype=torch.float32).reshape(-1, 2)
    wh = wh[(wh > 0).all(dim=1)]
    if wh.shape[0] < k:
        raise InvalidOptionError(f"kmeans_anchors: need at least k={k} boxes with positive size, got {wh.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    unique = torch.unique(wh, dim=0)
    if unique.shape[0] < k:
        raise InvalidOptionError(f"kmeans_anchors: only {unique.shape[0]} distinct box sizes for k={k} anchors")
    centroids = unique[torch.randperm(unique.shape[0], generator=generator)[:k]].clone()
    assignment = torch.full((wh.shape[0],), -1, dtype=torch.long)
    for _ in range(max_iter):
        inter = torch.minimum(wh[:, None], centroids[None]).prod(dim=2)
        iou = inter / (wh.prod(dim=1)[:, None] + centroids.prod(dim=1)[None] - inter)
        new_assignment = iou.argmax(dim=1)
        if torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for c in range(k):
            members = wh[assignment == c]
            if members.shape[0]:
                centroids[c] = members.median(dim=0).values
    anchors: Tensor = centroids[centroids.prod(dim=1).argsort()]
    return anchors
