"""Step 2, dynamic sparse training: a scheduled L1 regularizer on BatchNorm scales (gamma).

:class:`BNSparsity` adds ``rate * sign(gamma)`` to the gradients of the BatchNorm scales after ``backward()``
(equivalently ``rate * sum|gamma|`` in the loss), so that the scales of unimportant channels shrink to zero and
pruning can later remove those channels. The rate comes from a :class:`Schedule`: :class:`Constant`,
:class:`Linear`, :class:`Cosine`, :class:`Step` or :class:`Dynamic` (the paper's rule: constant ``s`` first, then
the strongest channels get only ``decay * s``).

Typical loop::

    sparsity = BNSparsity(graph, schedule=Dynamic(1e-3, total_steps=epochs * len(loader)))
    for images, targets in loader:
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        sparsity.step()          # after backward, before optimizer.step
        optimizer.step()

Modules: :mod:`.targets` (which BatchNorm channels are regularized: those scoring prunable channel groups of a
:class:`~grouppruner.graph.ChannelGraph`, or every affine BatchNorm of a model), :mod:`.schedules` (the rate) and
:mod:`.regularizer` (:class:`BNSparsity`). Next step: :mod:`grouppruner.pruning` removes the channels whose
scales sparse training drove to zero.
"""

from __future__ import annotations

from .._utils.errors import NonFiniteError
from .regularizer import BNSparsity, LayerGroupStats
from .schedules import Constant, Cosine, Dynamic, Linear, Schedule, Step

__all__ = [
    "BNSparsity",
    "Constant",
    "Cosine",
    "Dynamic",
    "LayerGroupStats",
    "Linear",
    "NonFiniteError",
    "Schedule",
    "Step",
]
