"""Seeing through the wrappers a training loop puts around a model (DDP, DataParallel, torch.compile).

The policy, the same for every stage: a model given inside ``DistributedDataParallel``, ``DataParallel`` or
``torch.compile``'s wrapper is worked on through the model it wraps (:func:`unwrap`), and layer names are that
inner model's names; a name copied from the wrapped model's ``state_dict`` (``module.backbone.x``) is accepted
too (:func:`inner_name`). Only those wrapper types are looked through: a user model with a child named
``module`` is left alone, so ``module.0`` still names that child.
"""

from __future__ import annotations

import sys

from torch import nn

__all__ = ["inner_name", "unwrap"]


def _compiled_module_type() -> type | None:
    """``torch.compile``'s wrapper class, if torch._dynamo is loaded: without it no such wrapper can exist, and
    importing it just to check would cost every caller a second."""
    module = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(module, "OptimizedModule", None) if module is not None else None


def _wrapped(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The module directly inside ``model`` and the prefix its names get, if ``model`` is a known wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        inner, prefix = model.module, "module."
    elif (compiled := _compiled_module_type()) is not None and isinstance(model, compiled):
        inner, prefix = getattr(model, "_orig_mod", None), "_orig_mod."
    else:
        return None
    return (inner, prefix) if isinstance(inner, nn.Module) else None


def unwrap(model: nn.Module) -> nn.Module:
    """The model that owns the named layers, inside any DDP / DataParallel / torch.compile wrappers."""
    level = _wrapped(model)
    while level is not None:
        model = level[0]
        level = _wrapped(model)
    return model


def inner_name(model: nn.Module, name: str) -> str:
    """``name`` relative to :func:`unwrap(model) <unwrap>`: each wrapper's prefix is dropped where present.

    ``inner_name(DDP(net), "module.backbone.x") == "backbone.x"``; for an unwrapped model ``name`` is returned
    unchanged (a child called ``module`` keeps its name).
    """
    level = _wrapped(model)
    while level is not None:
        inner, prefix = level
        if name.startswith(prefix):
            name = name[len(prefix) :]
        level = _wrapped(inner)
    return name
