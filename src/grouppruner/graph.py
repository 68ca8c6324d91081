"""Channel groups: which channels of a CNN must be removed together, and their partition into layer groups.

:class:`ChannelGraph` traces a model once with Torch-Pruning's ``DependencyGraph`` and exposes every set of
coupled channels as a :class:`ChannelGroup` (root layer, member layers with the dimension each loses, BatchNorm
layers that score the group, feature stride, prunable flag and reason). :meth:`ChannelGraph.layer_groups`
partitions the prunable groups into named layer groups (by structural section and feature stride by default),
and :meth:`ChannelGraph.remove_channels` physically removes channels from one group.

What this layer adds over a bare ``DependencyGraph``:

- channels that form a model output are never prunable, and ``ignore=`` keeps both dimensions of a layer intact;
- frozen parameters (``requires_grad=False``) are traced like trainable ones;
- ``chunk`` / ``split`` / channel slices written in ``forward()`` and grouped convolutions keep equal parts
  (channels at the same position of every part are one unit); a split whose sizes are fixed in code is found
  by a trial removal on a copy of the model and marked not prunable;
- split and concat sizes come from autograd metadata (Torch-Pruning 1.6.1 misreads ``chunk`` sizes, maps
  ``x.split(c, 1)[1]`` as part 0 and crashes on some concat / split chains); channel reductions and one-channel
  broadcasts (spatial attention) couple nothing; other ops that change the channel count make their groups
  not prunable;
- functional ops with weights (``F.conv2d`` on a bare parameter) raise :class:`GraphError`;
- removals update the stored indices incrementally instead of re-tracing.

Interface changes since the first commit: additions only (``ChannelGraph.example_inputs``, ``.forward_fn`` and
``.output_transform`` keep the constructor arguments for later forward passes, e.g. by the pruner).
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import logging
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

import torch
from torch import nn

from . import _graph_impl as impl
from . import _graph_trace as tracing
from ._graph_trace import GraphError

__all__ = ["ChannelGraph", "ChannelGroup", "GraphError", "LayerGroupSpec", "LayerRef"]

logger = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class LayerRef:
    """One layer that loses channels when its channel group does.

    Attributes:
        name: Qualified module name in the model, e.g. ``"backbone.stage3.0.conv"``.
        kind: Module class name, e.g. ``"Conv2d"``, ``"BatchNorm2d"``, ``"Linear"``.
        dim: Which dimension of this layer loses the group's channels: ``"out"`` (output channels of a conv
            ``weight[out, in, kH, kW]``, output features of a Linear, the features of a BatchNorm) or ``"in"``.
        indices: Group channel ``i`` is channel ``indices[i]`` of that dimension; ``len(indices)`` equals the
            group's size. A layer may appear several times in one group (e.g. once per half of a ``chunk(2)``).
    """

    name: str
    kind: str
    dim: Literal["out", "in"]
    indices: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """A set of channels that must be removed together.

    Attributes:
        name: Qualified name of the root layer (the Conv / Linear producing the channels).
        size: Number of channels in the group (current, after any removal).
        layers: Every layer that loses channels when the group does, the root's output first.
        stride: Spatial stride of the group's feature map relative to the input (``input H / feature H``),
            ``None`` when the root output is not a 4-D ``(N, C, H, W)`` map.
        prunable: Whether channels may be removed.
        reason: Why the group is not prunable (``None`` when it is).
    """

    name: str
    size: int
    layers: tuple[LayerRef, ...]
    stride: int | None
    prunable: bool
    reason: str | None

    @property
    def bns(self) -> tuple[LayerRef, ...]:
        """The BatchNorm members; ``|weight[ref.indices[i]]|`` (gamma) scores group channel ``i``."""
        return tuple(ref for ref in self.layers if "BatchNorm" in ref.kind)

    @property
    def bn_names(self) -> tuple[str, ...]:
        """Qualified names of the BatchNorm members, each once, in order."""
        return tuple(dict.fromkeys(ref.name for ref in self.bns))


LayerGroupSpec: TypeAlias = "Mapping[str, Sequence[str] | str] | Callable[[ChannelGroup], str] | None"
"""How to partition channel groups: ``None`` (automatic), ``{layer_group: [glob patterns]}`` or a callable."""


def _close(name: str, names: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f"; close matches: {', '.join(repr(m) for m in matches)}" if matches else ""


def _apply_removal(
    modules: dict[str, nn.Module],
    pruners: dict[str, Any],
    groups: list[ChannelGroup],
    index: dict[tuple[str, str], set[int]],
    gi: int,
    units: Sequence[int],
) -> None:
    """Remove group-local channels ``units`` of ``groups[gi]`` from the layers and shift every stored index."""
    unit_set = set(units)
    removed: dict[tuple[str, Literal["out", "in"]], set[int]] = {}
    for ref in groups[gi].layers:
        removed.setdefault((ref.name, ref.dim), set()).update(ref.indices[u] for u in units)
    ordered = {key: sorted(v) for key, v in removed.items()}
    impl.prune_layers(modules, pruners, ordered)
    affected = set().union(*(index.get(key, set()) for key in ordered))
    for gj in sorted(affected | {gi}):
        layers = []
        for ref in groups[gj].layers:
            idx: Sequence[int] = ref.indices
            if gj == gi:
                idx = [c for u, c in enumerate(idx) if u not in unit_set]
            key = (ref.name, ref.dim)
            if key in ordered:
                idx = impl.shift(idx, ordered[key])
            layers.append(replace(ref, indices=tuple(idx)))
        size = groups[gj].size - (len(unit_set) if gj == gi else 0)
        groups[gj] = replace(groups[gj], layers=tuple(layers), size=size)


class ChannelGraph:
    """The coupled channels of a CNN, built once from a traced forward pass.

    Args:
        model: The network. It is traced in eval mode with autograd on; its train/eval modes and the
            ``requires_grad`` flags of its parameters are restored afterwards.
        example_inputs: Inputs for one forward pass, e.g. a ``(1, 3, H, W)`` tensor. A tuple / list is
            unpacked as positional arguments, a dict as keyword arguments. Strides are measured against the
            first 4-D tensor in it.
        ignore: Layers whose weights must stay untouched (neither their input nor output channels change):
            modules, qualified names or glob patterns (``"head.*"``). A container module covers its children.
        forward_fn: ``forward_fn(model, example_inputs) -> outputs``, called instead of ``model(...)``.
        output_transform: ``output_transform(outputs) -> tensors`` selecting the model outputs whose channels
            are protected (default: every tensor in the returned nested list / tuple / dict).

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` (or is a DataParallel / DDP wrapper: pass ``model.module``),
            or an ``ignore`` entry has the wrong type.
        ValueError: the model has no convolution, its forward fails on ``example_inputs`` (the model's own
            error is chained), an ``ignore`` name / pattern matches no module (close matches are listed), or
            the graph is built inside ``torch.inference_mode()``.
        GraphError: the model uses an op whose channels cannot be mapped (named with its module).

    Attributes:
        model: The traced model; :meth:`remove_channels` prunes it in place.
        channel_groups: All channel groups, prunable or not, in model order; always current.
        example_inputs: The ``example_inputs`` given (for later forward passes over the same model).
        forward_fn: The ``forward_fn`` given, or ``None``.
        output_transform: The ``output_transform`` given, or ``None``.

    Example:
        >>> graph = ChannelGraph(model, torch.randn(1, 3, 416, 416))   # doctest: +SKIP
        >>> for name, groups in graph.layer_groups().items():           # doctest: +SKIP
        ...     print(name, [g.name for g in groups])
    """

    model: nn.Module
    channel_groups: list[ChannelGroup]
    example_inputs: Any
    forward_fn: Callable[[nn.Module, Any], Any] | None
    output_transform: Callable[[Any], Any] | None

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        ignore: Iterable[nn.Module | str] | nn.Module | str = (),
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            raise TypeError(
                f"model is wrapped in {type(model).__name__}; build the graph on the wrapped model (model.module)"
            )
        if not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
            raise ValueError(
                f"{type(model).__name__} has no convolution layer (nn.Conv1d/2d/3d); ChannelGraph needs a CNN"
            )
        self.model = model
        # Kept so that later stages (pruning's cost model and folding probe) trace the model the same way.
        self.example_inputs = example_inputs
        self.forward_fn = forward_fn
        self.output_transform = output_transform
        self._modules: dict[str, nn.Module] = dict(model.named_modules())
        ignored = self._resolve_ignore(ignore)
        tr = tracing.trace(model, example_inputs, forward_fn, output_transform)
        tracing.check_unsupported(tr.dg)
        tr.unmapped_ops = tracing.cut_channel_mismatches(tr.dg)
        tr.unmapped_concats = tracing.fix_index_mappings(tr.dg)
        raws = impl.extract_groups(model, tr, ignored)
        if not raws:
            raise ValueError(
                f"tracing {type(model).__name__} found no Conv/Linear layer on the path to its outputs "
                f"{tr.output_shapes}: they are not computed from its parameters "
                "(pass output_transform to select the tensor outputs)"
            )
        self.channel_groups = [
            ChannelGroup(
                name=r.name,
                size=r.size,
                layers=tuple(LayerRef(n, k, d, tuple(i)) for n, k, d, i in r.refs),
                stride=r.stride,
                prunable=r.reason is None,
                reason=r.reason,
            )
            for r in raws
        ]
        self._position = {g.name: i for i, g in enumerate(self.channel_groups)}
        self._pruners: dict[str, Any] = {
            ref.name: tr.dg.get_pruner_of_module(self._modules[ref.name])
            for g in self.channel_groups
            for ref in g.layers
        }
        self._index: dict[tuple[str, str], set[int]] = {}
        for gi, g in enumerate(self.channel_groups):
            for ref in g.layers:
                self._index.setdefault((ref.name, ref.dim), set()).add(gi)
        constrained = {i: r.constrained_by for i, r in enumerate(raws) if r.constrained_by and r.reason is None}
        if constrained:
            self._probe(constrained, example_inputs, forward_fn, output_transform, tr.output_shapes)
        logger.info(
            "ChannelGraph: %d channel groups, %d prunable",
            len(self.channel_groups),
            sum(g.prunable for g in self.channel_groups),
        )

    def _resolve_ignore(self, ignore: Iterable[nn.Module | str] | nn.Module | str) -> set[nn.Module]:
        entries: list[nn.Module | str] = [ignore] if isinstance(ignore, (str, nn.Module)) else list(ignore)
        by_id = {id(m): m for m in self._modules.values()}
        names = [n for n in self._modules if n]
        out: set[nn.Module] = set()
        for entry in entries:
            if isinstance(entry, nn.Module):
                if id(entry) not in by_id:
                    raise ValueError(f"ignore: module {type(entry).__name__} is not part of the model")
                out.update(entry.modules())
            elif isinstance(entry, str):
                if _GLOB_CHARS & set(entry):
                    hits = [n for n in names if fnmatch.fnmatchcase(n, entry)]
                    if not hits:
                        raise ValueError(f"ignore: pattern {entry!r} matches no module{_close(entry, names)}")
                    for n in hits:
                        out.update(self._modules[n].modules())
                elif entry in self._modules and entry:
                    out.update(self._modules[entry].modules())
                else:
                    raise ValueError(f"ignore: no module named {entry!r} in the model{_close(entry, names)}")
            else:
                raise TypeError(f"ignore entries must be modules or names, got {type(entry).__name__}")
        return out

    def _probe(
        self,
        constrained: dict[int, list[str]],
        example_inputs: Any,
        forward_fn: Callable[[nn.Module, Any], Any] | None,
        output_transform: Callable[[Any], Any] | None,
        output_shapes: list[tuple[int, ...]],
    ) -> None:
        """Remove one channel of each split-constrained group on a copy of the model and run it.

        A split whose sizes are written as constants in ``forward()`` cannot follow a removal; the trial finds
        exactly those groups (first all together, then one by one if that fails) and marks them not prunable.
        """

        def trial(ids: Sequence[int]) -> str | None:
            try:
                model = copy.deepcopy(self.model)
            except Exception as err:  # a model holding un-copyable state cannot be checked
                return f"the model cannot be copied to check the split ({type(err).__name__}: {err})"
            modules = dict(model.named_modules())
            groups = list(self.channel_groups)
            for gi in ids:
                _apply_removal(modules, self._pruners, groups, self._index, gi, [groups[gi].size - 1])
            model.eval()
            try:
                with torch.no_grad():
                    out = tracing.call_model(model, example_inputs, forward_fn)
                    if output_transform is not None:
                        out = output_transform(out)
            except Exception as err:
                return str(err.__cause__ or err)
            shapes = [tuple(t.shape) for t in tracing.flat_tensors(out)]
            return None if shapes == output_shapes else f"output shapes change from {output_shapes} to {shapes}"

        ids = sorted(constrained)
        if trial(ids) is None:
            return
        for gi in ids:
            err = trial([gi])
            if err is not None:
                ops_text = ", ".join(constrained[gi])
                reason = f"removing a channel breaks the forward (split / slice {ops_text} has fixed sizes): {err}"
                self.channel_groups[gi] = replace(self.channel_groups[gi], prunable=False, reason=reason)

    def group(self, name: str) -> ChannelGroup:
        """The current channel group whose root layer is ``name``.

        Raises:
            KeyError: no group has that root (close matches are listed).
        """
        if name not in self._position:
            raise KeyError(f"no channel group rooted at {name!r}{_close(name, self._position)}")
        return self.channel_groups[self._position[name]]

    def layer_groups(self, by: LayerGroupSpec = None) -> dict[str, list[ChannelGroup]]:
        """Partition the prunable channel groups into named layer groups (each gets its own pruning threshold).

        Args:
            by: ``None``: automatic, ``"<section>/s<stride>"`` where section is the first component of the root
                layer's qualified name (``backbone``, ``neck``, ``head``; ``model`` for unnamed Sequential
                children) and stride the group's feature stride (``"<section>/flat"`` without one).
                A mapping ``{layer_group: [glob patterns]}``: patterns are matched against the root layer name
                (``ChannelGroup.name``) in order, first match wins; every prunable group must be matched and
                every pattern must match a group not taken by an earlier pattern.
                A callable ``ChannelGroup -> str`` naming the layer group of each prunable group.

        Returns:
            ``{layer_group: [ChannelGroup, ...]}`` in model order; only non-empty layer groups.

        Raises:
            ValueError: a pattern mapping leaves groups unmatched or has patterns that match nothing new.
            TypeError: ``by`` or a pattern has the wrong type, or the callable returns a non-string.
        """
        prunable = [g for g in self.channel_groups if g.prunable]
        if by is None:
            names = {g.name: _default_layer_group(g) for g in prunable}
        elif isinstance(by, Mapping):
            names = self._match_patterns(by)
        elif callable(by):
            names = {}
            for g in prunable:
                label = by(g)
                if not isinstance(label, str):
                    raise TypeError(f"layer group callable returned {type(label).__name__} for '{g.name}'")
                names[g.name] = label
        else:
            raise TypeError(f"by must be None, a mapping of glob patterns or a callable, got {type(by).__name__}")
        out: dict[str, list[ChannelGroup]] = {}
        for g in prunable:
            out.setdefault(names[g.name], []).append(g)
        return out

    def _match_patterns(self, spec: Mapping[str, Sequence[str] | str]) -> dict[str, str]:
        rules: list[tuple[str, str]] = []
        for label, patterns in spec.items():
            if not isinstance(label, str):
                raise TypeError(f"layer group names must be strings, got {label!r}")
            plist = [patterns] if isinstance(patterns, str) else list(patterns)
            for p in plist:
                if not isinstance(p, str):
                    raise TypeError(f"layer group {label!r}: patterns must be strings, got {p!r}")
                rules.append((label, p))
        assigned: dict[str, str] = {}
        productive: set[int] = set()
        matched_any: set[int] = set()
        for g in self.channel_groups:
            for k, (label, pattern) in enumerate(rules):
                if fnmatch.fnmatchcase(g.name, pattern):
                    matched_any.add(k)
                    if g.name not in assigned:
                        productive.add(k)
                        assigned[g.name] = label
                    else:
                        logger.debug("pattern %r also matches %s (taken earlier)", pattern, g.name)
        problems = []
        unmatched = [g.name for g in self.channel_groups if g.prunable and g.name not in assigned]
        if unmatched:
            problems.append(f"prunable channel groups matched by no pattern: {', '.join(unmatched)}")
        for k, (label, pattern) in enumerate(rules):
            if k not in matched_any:
                problems.append(
                    f"pattern {pattern!r} of {label!r} matches no channel group{_close(pattern, self._position)}"
                )
            elif k not in productive:
                problems.append(
                    f"pattern {pattern!r} of {label!r} overlaps earlier patterns: every group it matches is taken"
                )
        if problems:
            raise ValueError("invalid layer-group patterns: " + "; ".join(problems))
        return assigned

    def remove_channels(self, group: ChannelGroup | str, indices: Sequence[int]) -> ChannelGroup:
        """Physically remove channels of one group from every member layer.

        Args:
            group: The group or its name (a stale ``ChannelGroup`` object is looked up by name).
            indices: Group-local channel indices in ``0 .. size-1`` of the group's current channels.

        Returns:
            The updated group; ``channel_groups`` and every other group sharing a layer are updated too.
            Layer shapes change, e.g. a conv ``weight (C_out, C_in, k, k)`` becomes ``(C_out - len(indices), ...)``;
            build optimizers after pruning.

        Raises:
            ValueError: the group is not prunable (the reason is given), an index is out of range or
                repeated, or all channels would be removed.
            TypeError: an index is not an integer.
            KeyError: unknown group name.
        """
        name = group.name if isinstance(group, ChannelGroup) else group
        current = self.group(name)
        if not current.prunable:
            raise ValueError(f"channel group '{name}' is not prunable: {current.reason}")
        units: list[int] = []
        for i in indices:
            if isinstance(i, bool):
                raise TypeError(f"channel indices must be integers, got {i!r}")
            try:
                units.append(operator.index(i))
            except TypeError as err:
                raise TypeError(f"channel indices must be integers, got {type(i).__name__}") from err
        bad = sorted({u for u in units if not 0 <= u < current.size})
        if bad:
            raise ValueError(f"indices {bad} out of range for channel group '{name}' with {current.size} channels")
        dups = sorted({u for u in units if units.count(u) > 1}) if len(set(units)) != len(units) else []
        if dups:
            raise ValueError(f"duplicate indices {dups} for channel group '{name}'")
        if len(units) >= current.size:
            raise ValueError(f"cannot remove all {current.size} channels of group '{name}'; keep at least one")
        if units:
            _apply_removal(
                self._modules, self._pruners, self.channel_groups, self._index, self._position[name], units
            )
        return self.channel_groups[self._position[name]]

    def summary(self) -> str:
        """A table: group, size, stride, layer group (automatic partition), status (prunable / the reason)."""
        labels = {g.name: label for label, gs in self.layer_groups().items() for g in gs}
        rows = [("group", "size", "stride", "layer group", "status")]
        for g in self.channel_groups:
            status = "prunable" if g.prunable else f"fixed: {g.reason}"
            stride = "-" if g.stride is None else str(g.stride)
            rows.append((g.name, str(g.size), stride, labels.get(g.name, "-"), status))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
        n_prunable = sum(g.prunable for g in self.channel_groups)
        lines.append(
            f"{len(self.channel_groups)} channel groups, {n_prunable} prunable, "
            f"{sum(g.size for g in self.channel_groups if g.prunable)} prunable channels"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        n_prunable = sum(g.prunable for g in self.channel_groups)
        return f"ChannelGraph({type(self.model).__name__}, {len(self.channel_groups)} groups, {n_prunable} prunable)"


def _default_layer_group(group: ChannelGroup) -> str:
    head = group.name.split(".", 1)[0]
    section = "model" if head.isdigit() or not head else head
    return f"{section}/s{group.stride}" if group.stride is not None else f"{section}/flat"
