"""Seeing through the wrappers a training loop puts around a model (DDP, DataParallel, torch.compile)."""

from __future__ import annotations

from torch import nn


def _wrapped(model: nn.Module) -> nn.Module | None:
    """The module directly inside ``model`` if ``model`` is a known wrapper, else ``None``."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        inner = model.module
    elif type(model).__name__ == "OptimizedModule":  # torch.compile's wrapper; its class lives in torch._dynamo
        inner = getattr(model, "_orig_mod", None)
    else:
        return None
    return inner if isinstance(inner, nn.Module) else None


def unwrap(model: nn.Module) -> nn.Module:
    """The model that owns the named layers, inside any DDP / DataParallel / torch.compile wrappers.

    Only those wrapper types are looked through: a user model with a child named ``module`` is left alone.
    """
    inner = _wrapped(model)
    while inner is not None:
        model = inner
        inner = _wrapped(model)
    return model
