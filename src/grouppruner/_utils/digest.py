"""What identifies a model: its architecture (:func:`model_fingerprint`) and its weights (:func:`weights_digest`).

Plans, checkpoints and run folders all record these two, so they are written once, here, and agree everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["model_fingerprint", "weights_digest"]


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the architecture: module names, classes and parameter / buffer shapes (not values).

    Args:
        model: any module.

    Returns:
        16 hex characters; equal for two instances built the same way, different once channels are removed.
    """
    entries: list[Any] = []
    for name, module in model.named_modules():
        params = [(n, list(p.shape)) for n, p in module.named_parameters(recurse=False)]
        buffers = [(n, list(b.shape)) for n, b in module.named_buffers(recurse=False)]
        entries.append([name, type(module).__name__, params, buffers])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def weights_digest(model: nn.Module, *, only: Iterable[str] | None = None) -> str:
    """A short hash of the model's ``state_dict``: names, shapes and values.

    Unlike :func:`model_fingerprint` (architecture only) it tells two instances of one architecture apart, e.g.
    the dense and the sparse model. Floating-point tensors are hashed in float32 on the CPU, so the digest does not
    depend on the device or on a half-precision copy of the same values.

    Args:
        model: any module.
        only: the ``state_dict`` keys to hash (e.g. the BatchNorm scales a plan was scored on); default all.
            Keys the model does not have are skipped.

    Returns:
        16 hex characters.
    """
    state = model.state_dict()
    keys = list(state) if only is None else sorted(key for key in set(only) if key in state)
    digest = hashlib.sha256()
    for key in keys:
        tensor = state[key].detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
