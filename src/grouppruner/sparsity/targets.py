"""Which norm channels :class:`~grouppruner.sparsity.BNSparsity` regularizes: from a model or a ChannelGraph.

Both resolvers return ``(layers, layer_group_names)``: ``layers`` lists ``(qualified name, norm, owners)`` in
model order, where ``owners[c]`` is the layer-group index of channel ``c`` or ``-1`` for a protected channel.
``norm_types`` says which norms count: BatchNorm by default; GroupNorm / LayerNorm where asked (their per-channel
``weight`` plays the role of gamma).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._utils.errors import InvalidOptionError, OptionTypeError
from .._utils.names import assign_layer_groups, select_modules

if TYPE_CHECKING:
    from ..graph import ChannelGraph, ChannelGroup

logger = logging.getLogger(__name__)

ExcludeSpec = Iterable["str | nn.Module"]
LayerGroupsSpec = Mapping[str, Any] | Callable[[Any], str] | None
"""A layer-group spec (:data:`~grouppruner.graph.LayerGroupSpec`); with a model instead of a graph, its entries
match BatchNorm names and a callable gets a BatchNorm name."""
Layers = list[tuple[str, nn.Module, list[int]]]
NormTypes = tuple[type[nn.Module], ...]
DEFAULT_NORM_TYPES: NormTypes = (_BatchNorm,)


def _excluded_names(model: nn.Module, exclude: ExcludeSpec) -> Callable[[str], bool]:
    """Predicate on module names: the named modules and their submodules are excluded."""
    prefixes = select_modules(dict(model.named_modules()), list(exclude), option="exclude")

    def excluded(name: str) -> bool:
        return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)

    return excluded


def _check_bn(name: str, module: nn.Module, norm_types: NormTypes = DEFAULT_NORM_TYPES) -> nn.Module:
    if not isinstance(module, norm_types):
        kinds = " / ".join(t.__name__.lstrip("_") for t in norm_types)
        raise InvalidOptionError(f"layer {name!r} scores a channel group but is a {type(module).__name__}, not {kinds}")
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise InvalidOptionError(
            f"{type(module).__name__} {name!r} is not affine per channel (no gamma to regularize); make it affine "
            "or pass it in exclude="
        )
    return module


def layers_from_model(
    model: nn.Module, exclude: ExcludeSpec, layer_groups: LayerGroupsSpec, norm_types: NormTypes = DEFAULT_NORM_TYPES
) -> tuple[Layers, list[str]]:
    """Every trainable norm of ``norm_types`` not excluded, its channels owned by its layer group (``layer_groups``)."""
    is_excluded = _excluded_names(model, exclude)
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, norm_types)]
    if not bns:
        raise InvalidOptionError(
            f"{type(model).__name__} has no BatchNorm layer ({norm_types=}): nothing to regularize"
        )
    chosen = [(n, _check_bn(n, m, norm_types)) for n, m in bns if not is_excluded(n)]
    chosen = _trainable(chosen)
    if not chosen:
        raise InvalidOptionError(
            f"{type(model).__name__}: every BatchNorm is excluded or frozen: nothing to regularize"
        )
    if layer_groups is None:
        group_of = {n: "all" for n, _ in chosen}
    elif isinstance(layer_groups, Mapping):
        # the same resolver as the graph's layer groups, on BatchNorm names; BNs it leaves out are not regularized
        group_of = assign_layer_groups([n for n, _ in chosen], layer_groups, what="BatchNorm")
        chosen = [(n, bn) for n, bn in chosen if n in group_of]
        if not chosen:
            raise InvalidOptionError(f"{type(model).__name__}: layer_groups leaves no BatchNorm to regularize")
    elif callable(layer_groups):
        group_of = {n: str(layer_groups(n)) for n, _ in chosen}
    else:
        raise OptionTypeError(
            f"layer_groups must be None, a mapping of glob patterns / names or a callable, got {type(layer_groups)}"
        )
    names = list(dict.fromkeys(group_of.values()))
    ids = {g: i for i, g in enumerate(names)}
    return [(n, bn, [ids[group_of[n]]] * _width(bn)) for n, bn in chosen], names


def layers_from_graph(
    graph: ChannelGraph,
    model: nn.Module,
    exclude: ExcludeSpec,
    layer_groups: LayerGroupsSpec,
    norm_types: NormTypes = DEFAULT_NORM_TYPES,
) -> tuple[Layers, list[str]]:
    """The norms of ``norm_types`` in the graph's prunable groups; channels of no prunable group are ``-1``."""
    is_excluded = _excluded_names(model, exclude)
    partition: dict[str, list[ChannelGroup]] = graph.layer_groups(layer_groups)
    owners: dict[str, list[int]] = {}
    modules: dict[str, nn.Module] = {}
    names = list(partition)
    for g, groups in enumerate(partition.values()):
        for group in groups:
            for ref in group.layers:
                if ref.role == "parameter" or is_excluded(ref.name):
                    continue
                module = model.get_submodule(ref.name)
                if not isinstance(module, norm_types):
                    continue
                if ref.name not in modules:
                    modules[ref.name] = _check_bn(ref.name, module, norm_types)
                    owners[ref.name] = [-1] * _width(module)
                # a BN after a concat scores several groups: each group claims its own channels
                for index in ref.indices:
                    owners[ref.name][index] = g
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    chosen = _trainable(sorted(modules.items(), key=lambda item: order[item[0]]))
    if not chosen:
        raise InvalidOptionError(
            f"{type(model).__name__}: no prunable channel group is scored by a trainable affine BatchNorm "
            "(no BatchNorms, all excluded, or all frozen): nothing to regularize"
        )
    return [(n, bn, owners[n]) for n, bn in chosen], names


def norm_weight(norm: nn.Module) -> torch.Tensor:
    """The per-channel scale (gamma) of a norm checked by ``_check_bn``: shape (C,)."""
    weight = norm.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _width(norm: nn.Module) -> int:
    """Channels of a per-channel affine norm: the length of its weight."""
    return int(norm_weight(norm).numel())


def _trainable(bns: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    frozen = [n for n, bn in bns if not norm_weight(bn).requires_grad]
    if frozen:
        logger.warning("BNSparsity: skipping %d frozen BatchNorm(s) (requires_grad=False): %s", len(frozen), frozen)
    return [(n, bn) for n, bn in bns if norm_weight(bn).requires_grad]
