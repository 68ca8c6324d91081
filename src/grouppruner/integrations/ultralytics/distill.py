"""Distillation terms for Ultralytics' anchor-free heads, and the criterion that adds them to the YOLO loss.

In training mode an Ultralytics head returns a dict: ``"boxes"`` ``(N, 4 * reg_max, A)`` (per anchor point, a
distribution over ``reg_max`` distance bins for each side: the DFL logits), ``"scores"`` ``(N, nc, A)`` (class
logits, one sigmoid per class) and ``"feats"`` (the neck outputs that feed the head, one ``(N, C_i, H_i, W_i)``
map per scale; end-to-end heads nest this under ``"one2many"``). Teacher and pruned student have the same head
outputs, so the terms compare them directly:

- attention: per scale, ``H W * mean((A_t - A_s)^2)`` on :func:`~grouppruner.distill.spatial_attention` maps of
  the neck outputs (the squared distance of two unit vectors, so every scale counts alike whatever its size);
- channel-wise: per scale, :func:`~grouppruner.distill.channel_wise_distillation` (temperature 1, standardised
  features) of each student channel against the teacher channel it was kept from (:func:`head_feature_channels`);
- output: the class logits against the teacher's sigmoid at temperature ``T`` (binary KL divergence) plus the
  DFL distributions against the teacher's softmax at ``T`` (KL), both weighted per anchor by the teacher's top
  class probability (its foreground) and normalised by that weight's sum, times ``T^2``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._utils.errors import UsageError
from ...distill import GradientBalance, channel_wise_distillation, spatial_attention
from ...pruning import teacher_channels
from .model import channel_graph, detection_model, head

__all__ = ["DistillCriterion", "HeadDistillLoss", "head_feature_channels", "raw_outputs"]

logger = logging.getLogger(__name__)


def raw_outputs(preds: Any) -> dict[str, Any]:
    """The one-to-many raw output dict of an Ultralytics head, from a training or an eval-mode forward."""
    if isinstance(preds, tuple):  # eval mode: (decoded, raw)
        preds = preds[1]
    if isinstance(preds, Mapping) and "one2many" in preds:
        preds = preds["one2many"]
    if not isinstance(preds, Mapping) or "scores" not in preds:
        raise TypeError(f"not the raw output of an Ultralytics detection head: {type(preds).__name__}")
    return dict(preds)


def head_feature_channels(model: Any, *, imgsz: int = 640) -> list[Tensor]:
    """The teacher channel of each channel of the neck outputs that feed a pruned YOLO's head.

    Args:
        model: the pruned ``YOLO`` or its ``DetectionModel``, with its applied plans.
        imgsz: the square input side to trace at (a multiple of the largest stride).

    Returns:
        One ``(C_i,)`` int64 tensor per head input, in the head's order (see
        :func:`~grouppruner.pruning.teacher_channels`).

    Raises:
        LayerOutputError: a head input is not one conv's output (names the layer).
    """
    inner = detection_model(model)
    graph = channel_graph(inner, imgsz=imgsz)
    sources = head(inner).f
    return [
        teacher_channels(inner, f"model.{i}", graph=graph) for i in ([sources] if isinstance(sources, int) else sources)
    ]


class HeadDistillLoss(nn.Module):
    """The attention, channel-wise and output terms between a student's and a teacher's raw head outputs.

    Args:
        reg_max: DFL bins per box side (the head's ``reg_max``).
        attention: weight of the attention term (0 disables it).
        output: weight of the output term (0 disables it).
        temperature: the softening temperature ``T`` of the output term.
        channel: weight of the channel-wise term (0 disables it); it needs ``channel_index``.
        channel_index: per head input, the teacher channel of each student channel
            (:func:`head_feature_channels`); may be set on the attribute before the first forward.
    """

    def __init__(
        self,
        reg_max: int,
        *,
        attention: float = 1.0,
        output: float = 1.0,
        temperature: float = 3.0,
        channel: float = 0.0,
        channel_index: list[Tensor] | None = None,
    ) -> None:
        super().__init__()
        if attention < 0 or output < 0 or channel < 0 or temperature <= 0:
            raise ValueError(
                f"HeadDistillLoss: weights must be >= 0 and temperature > 0, got attention={attention}, "
                f"output={output}, channel={channel}, temperature={temperature}"
            )
        self.reg_max = reg_max
        self.attention = attention
        self.output = output
        self.temperature = temperature
        self.channel = channel
        self.channel_index = channel_index

    def channel_term(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        """Sum over scales of the CWD term of the student's ``(N, C_i, H_i, W_i)`` features against the teacher's
        at ``channel_index``; 0 when the student is the teacher with channels removed."""
        if self.channel_index is None or len(self.channel_index) != len(student):
            raise UsageError(
                f"HeadDistillLoss: the channel-wise term needs channel_index, one tensor per head input "
                f"({len(student)}); build it with head_feature_channels(student)"
            )
        total = student[0].new_zeros((), dtype=torch.float32)
        for s, t, index in zip(student, teacher, self.channel_index, strict=True):
            total = total + channel_wise_distillation(s, t.detach()[:, index.to(t.device)], normalize=True)
        return total

    def attention_term(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        """Sum over scales of ``H W * mean((A_t - A_s)^2)``; features ``(N, C_i, H_i, W_i)`` (C may differ)."""
        total = student[0].new_zeros((), dtype=torch.float32)
        for s, t in zip(student, teacher, strict=True):
            a_s, a_t = spatial_attention(s), spatial_attention(t.detach())
            total = total + (a_t - a_s).pow(2).sum(1).mean()
        return total

    def output_term(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> Tensor:
        """Class and DFL KL divergences at temperature ``T``, weighted by the teacher's foreground; a 0-d fp32
        tensor, 0 when the student's outputs are the teacher's."""
        temp = self.temperature
        s_cls, t_cls = student["scores"].float(), teacher["scores"].detach().float()  # (N, nc, A)
        weight = t_cls.sigmoid().amax(1)  # (N, A) the teacher's confidence that an object is there
        norm = weight.sum().clamp(min=1.0)
        soft = (t_cls / temp).sigmoid()
        # The binary KL divergence: cross-entropy less the teacher's own entropy (the same gradient, and 0 at a
        # perfect match, so that the logged value says how far the student is).
        kl_cls = F.binary_cross_entropy_with_logits(s_cls / temp, soft, reduction="none")
        kl_cls = (kl_cls - F.binary_cross_entropy_with_logits(t_cls / temp, soft, reduction="none")).sum(1)
        n, _, anchors = s_cls.shape
        s_box = student["boxes"].float().view(n, 4, self.reg_max, anchors)
        t_box = teacher["boxes"].detach().float().view(n, 4, self.reg_max, anchors)
        kl = F.kl_div(F.log_softmax(s_box / temp, 2), F.log_softmax(t_box / temp, 2), reduction="none", log_target=True)
        dfl = kl.sum(2).mean(1)  # (N, A)
        return (((kl_cls + dfl) * weight).sum() / norm) * temp**2

    def forward(self, student: Any, teacher: Any) -> dict[str, Tensor]:
        """The weighted feature terms (attention plus channel-wise) and output term, ``{"att": (), "kd": ()}``,
        from raw head outputs (see :func:`raw_outputs`)."""
        s, t = raw_outputs(student), raw_outputs(teacher)
        zero = s["scores"].new_zeros((), dtype=torch.float32)
        att = self.attention * self.attention_term(list(s["feats"]), list(t["feats"])) if self.attention else zero
        if self.channel:
            att = att + self.channel * self.channel_term(list(s["feats"]), list(t["feats"]))
        kd = self.output * self.output_term(s, t) if self.output else zero
        return {"att": att, "kd": kd}


class DistillCriterion:
    """An Ultralytics criterion plus :class:`HeadDistillLoss` against a frozen teacher run on the same images.

    Set as ``model.criterion`` of the student, it is what ``model.loss(batch, preds)`` calls inside the
    trainer's forward (under its autocast, inside DDP's forward): the teacher sees ``batch["img"]`` as the
    student did. Returns the stock loss vector with the two terms appended (times the batch size, as the stock
    terms are) and their detached values under ``"att"`` and ``"kd"``. With ``active`` false the teacher is not
    run and both terms are 0 (the schedule's last epochs). With a ``balance``, each term's gradient norm against
    the stock loss's is measured on its schedule and logged (``balance.summary()`` has the means).

    Args:
        base: the student's own criterion (``model.init_criterion()``).
        teacher: the dense model, in eval mode, on the student's device.
        terms: the distillation terms.
        balance: measures the terms' gradient norms against the stock loss's (``None``: not measured).
    """

    def __init__(
        self, base: Any, teacher: nn.Module, terms: HeadDistillLoss, *, balance: GradientBalance | None = None
    ) -> None:
        self.base = base
        self.teacher = teacher
        self.terms = terms
        self.balance = balance
        self.active = True

    def __getattr__(self, name: str) -> Any:
        # Ultralytics calls criterion.update() (and may read other attributes) on the stock criterion.
        if name in ("base", "teacher", "terms", "balance", "active"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, items = self.base(preds, batch)
        if not self.active:  # the same loss vector (the trainer's running means keep their length), terms at 0
            zero = loss.new_zeros(())
            extra = torch.stack([zero, zero])
            return torch.cat([loss.flatten(), extra]), {**items, "att": zero, "kd": zero}
        with torch.no_grad():
            self.teacher.eval()  # nothing may put it back in train mode (its BatchNorm statistics are final)
            teacher_preds = self.teacher(batch["img"])
        terms = self.terms(preds, teacher_preds)
        batch_size = batch["img"].shape[0]
        if self.balance is not None and loss.requires_grad:
            ratios = self.balance.observe(
                {"detection": loss.sum(), "att": terms["att"] * batch_size, "kd": terms["kd"] * batch_size}
            )
            if ratios is not None:
                logger.info(
                    "distillation gradient norms against the detection loss's: att %.3f, kd %.3f",
                    ratios["att"],
                    ratios["kd"],
                )
        extra = torch.stack([terms["att"], terms["kd"]]).to(loss.dtype) * batch_size
        return torch.cat([loss.flatten(), extra]), {**items, "att": terms["att"].detach(), "kd": terms["kd"].detach()}
