"""Optimizers after pruning: pruned layers hold new parameter tensors, so optimizers must be rebuilt."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .._utils.errors import InvalidOptionError
from .plan import applied_plans

__all__ = ["rebuild_optimizer", "remember_parameter_names"]

_OLD_PARAMS_ATTR = "_grouppruner_old_params"


def remember_parameter_names(model: nn.Module) -> None:
    # Optimizers keep the old parameter objects alive, so their ids stay unique while anyone can ask about them.
    names: dict[int, str] = model.__dict__.setdefault(_OLD_PARAMS_ATTR, {})
    names.update({id(p): n for n, p in model.named_parameters()})


def rebuild_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """A new optimizer of the same class and hyper-parameters for the pruned ``model``.

    Pruning replaces the parameters of every pruned layer, so an optimizer created before ``apply`` would keep
    updating tensors the model no longer uses. Each old parameter is mapped to the model's parameter of the same
    name; param-group options (lr, weight decay, ...) are kept; biases created by beta folding join the first
    param group. Optimizer state (momentum buffers) is dropped, since its shapes no longer fit.

    Args:
        optimizer: the optimizer built for the model before pruning.
        model: the model after :meth:`GroupPruner.apply`.

    Returns:
        A fresh optimizer over the model's current parameters.

    Raises:
        ValueError: an optimizer parameter is neither in the model nor a parameter replaced by pruning.
    """
    current = dict(model.named_parameters())
    by_id = {id(p): p for p in current.values()}
    old_names: dict[int, str] = model.__dict__.get(_OLD_PARAMS_ATTR, {})
    used: set[int] = set()
    groups: list[dict[str, Any]] = []
    for param_group in optimizer.param_groups:
        params = []
        for p in param_group["params"]:
            if id(p) in by_id:
                new = p
            elif id(p) in old_names and old_names[id(p)] in current:
                new = current[old_names[id(p)]]
            else:
                raise InvalidOptionError(
                    f"rebuild_optimizer: an optimizer parameter of shape {tuple(p.shape)} is not part of the model"
                )
            used.add(id(new))
            params.append(new)
        groups.append({**{k: v for k, v in param_group.items() if k != "params"}, "params": params})
    added = [
        p
        for plan in applied_plans(model)
        for name in plan.add_bias
        if (p := current.get(f"{name}.bias")) is not None and id(p) not in used
    ]
    if added and groups:
        groups[0]["params"].extend(_unique(added))
    return type(optimizer)(groups, **optimizer.defaults)


def _unique(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())
