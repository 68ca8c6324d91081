"""Step 4, spatial-attention distillation: a frozen teacher teaches a (pruned) student through attention maps.

For a feature map ``F`` of shape ``(N, C, H, W)`` the spatial attention map is

``A(F) = normalize_L2(mean_c |F|^p).view(N, H*W)``

It is aggregated over channels, so a pruned student with fewer channels can still be compared with the original
teacher layer by layer. :class:`AttentionDistiller` hooks the chosen layers of both models, keeps only the maps
(``N * H * W`` fp32 values per layer; the features only for its channel-wise term) and returns the weighted
per-layer loss.

Modules, in the order the data flows: :mod:`.attention` (:func:`spatial_attention`), :mod:`.recorder` (hooks that
record maps) and :mod:`.distiller` (:class:`AttentionDistiller`); :mod:`.channel` (:func:`channel_wise_distillation`,
the channel-wise term on the channels a pruned student kept); :mod:`.balance` (:class:`GradientBalance`) measures
how strongly each loss term pulls on the student against the task loss. The pruned model it trains comes from
:mod:`grouppruner.pruning`; detection-specific parts (foreground masks from boxes, the output-level term) live in
:mod:`grouppruner.detection`.
"""

from __future__ import annotations

from .._utils.errors import DistillerStateError, LayerNotFoundError, LayerOutputError, NonFiniteError
from .attention import spatial_attention
from .balance import GradientBalance, gradient_norms
from .channel import channel_wise_distillation
from .distiller import AttentionDistiller, ForegroundMask
from .recorder import AttentionRecorder, Selector

__all__ = [
    "AttentionDistiller",
    "AttentionRecorder",
    "DistillerStateError",
    "ForegroundMask",
    "GradientBalance",
    "LayerNotFoundError",
    "LayerOutputError",
    "NonFiniteError",
    "Selector",
    "channel_wise_distillation",
    "gradient_norms",
    "spatial_attention",
]
