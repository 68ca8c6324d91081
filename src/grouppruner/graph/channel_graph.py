"""The channel graph: :class:`ChannelGraph` traces a model once and holds its channel groups, always current.

It wires the other modules of this package together: :mod:`.tracing` builds Torch-Pruning's graph, :mod:`.repair`
fixes its index mappings, :mod:`.coupling` collects the channel groups, :mod:`.layer_groups` partitions them and
:mod:`.removal` removes channels.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal

from torch import nn

from .._utils.errors import InvalidOptionError, LayerNotFoundError, OptionTypeError
from .._utils.names import did_you_mean, select_modules
from .._utils.wrappers import inner_name, unwrap
from . import coupling, probe, removal, repair, shuffle, tracing
from .groups import ChannelGroup, LayerRef, layer_role, min_units
from .layer_groups import LayerGroupSpec, partition

__all__ = ["ChannelGraph"]

logger = logging.getLogger(__name__)


class ChannelGraph:
    """The coupled channels of a CNN, built once from a traced forward pass.

    Args:
        model: The network. It is traced in eval mode with autograd on; its train/eval modes and the
            ``requires_grad`` flags of its parameters are restored afterwards. A DDP / DataParallel /
            ``torch.compile`` wrapper is seen through: the graph and its names are the wrapped model's (re-wrap
            DDP after pruning; its buckets hold the old shapes).
        example_inputs: Inputs for one forward pass, e.g. a ``(1, 3, H, W)`` tensor. A tuple / list is
            unpacked as positional arguments, a dict as keyword arguments. Strides are measured against the
            first 4-D tensor in it.
        ignore: Layers whose weights must stay untouched (neither their input nor output channels change):
            modules, qualified names or glob patterns (``"head.*"``). A container module covers its children.
        forward_fn: ``forward_fn(model, example_inputs) -> outputs``, called instead of ``model(...)``.
        output_transform: ``output_transform(outputs) -> tensors`` selecting the model outputs whose channels
            are protected (default: every tensor in the returned nested list / tuple / dict).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or an ``ignore`` entry has the wrong type.
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
            raise OptionTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        given, model = model, unwrap(model)
        if not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
            raise InvalidOptionError(
                f"{type(model).__name__} has no convolution layer (nn.Conv1d/2d/3d); ChannelGraph needs a CNN"
            )
        self.model = model
        # Kept so that later stages (pruning's cost model and folding probe) trace the model the same way.
        self.example_inputs = example_inputs
        self.forward_fn = forward_fn
        self.output_transform = output_transform
        self._modules: dict[str, nn.Module] = dict(model.named_modules())
        ignored = self._resolve_ignore(given, ignore)
        tr = tracing.trace(model, example_inputs, forward_fn, output_transform)
        products, own_ops = tracing.check_unsupported(tr.dg)
        shuffles = shuffle.find_shuffles(tr.dg)
        tr.shuffle_nodes = {node for s in shuffles for node in s.nodes}
        tr.shuffle_parts = {s.first: (s.groups * s.part, s.part) for s in shuffles}
        tr.unmapped_ops = {**repair.cut_channel_mismatches(tr.dg, own_ops | tr.shuffle_nodes), **products}
        tr.unmapped_concats = repair.fix_index_mappings(tr.dg, tr.unmapped_ops, tr.shuffle_nodes)
        shuffle.map_shuffles(shuffles)
        raws = coupling.extract_groups(model, tr, ignored)
        if not raws:
            raise InvalidOptionError(
                f"tracing {type(model).__name__} found no Conv/Linear layer on the path to its outputs "
                f"{tr.output_shapes}: they are not computed from its parameters "
                "(pass output_transform to select the tensor outputs)"
            )
        self.channel_groups = [
            ChannelGroup(
                name=r.name,
                size=r.size,
                layers=tuple(
                    LayerRef(n, k, d, tuple(i), layer_role(None if k == removal.PARAMETER else self._modules[n]))
                    for n, k, d, i in r.refs
                ),
                stride=r.stride,
                prunable=r.reason is None,
                reason=r.reason,
            )
            for r in raws
        ]
        self._position = {g.name: i for i, g in enumerate(self.channel_groups)}
        self._pruners: dict[str, Any] = {
            ref.name: (
                removal.ParameterChannels(ref.name)
                if ref.kind == removal.PARAMETER
                else tr.dg.get_pruner_of_module(self._modules[ref.name])
            )
            for g in self.channel_groups
            for ref in g.layers
        }
        self._index: dict[tuple[str, str], set[int]] = {}
        for gi, g in enumerate(self.channel_groups):
            for ref in g.layers:
                self._index.setdefault((ref.name, ref.dim), set()).add(gi)
        self._probe({i: r.constrained_by for i, r in enumerate(raws)}, tr.output_shapes)
        logger.info(
            "ChannelGraph: %d channel groups, %d prunable",
            len(self.channel_groups),
            sum(g.prunable for g in self.channel_groups),
        )

    def _resolve_ignore(self, given: nn.Module, ignore: Iterable[nn.Module | str] | nn.Module | str) -> set[nn.Module]:
        entries: list[nn.Module | str] = [ignore] if isinstance(ignore, (str, nn.Module)) else list(ignore)
        entries = [inner_name(given, e) if isinstance(e, str) else e for e in entries]
        out: set[nn.Module] = set()
        for name in select_modules(self._modules, entries, option="ignore"):
            out.update(self._modules[name].modules())
        return out

    def _probe(self, constrained: dict[int, list[str]], output_shapes: list[tuple[int, ...]]) -> None:
        """Fix exactly the prunable groups whose shrinking breaks the forward (see :mod:`.probe`).

        ``constrained``: the split / slice ops each group's equal parts depend on, named in the reason.
        """

        def remove_one(ids: Sequence[int]) -> None:
            # The last channel of each group, all layers at once: the groups partition each layer's channels, so
            # the original indices are distinct and no group's indices need shifting (the modules are restored
            # after the trial, the graph's records are never touched).
            removed: dict[tuple[str, Literal["out", "in"]], set[int]] = {}
            for gi in ids:
                group = self.channel_groups[gi]
                for ref in group.layers:
                    removed.setdefault((ref.name, ref.dim), set()).add(ref.indices[group.size - 1])
            removal.prune_layers(self._modules, self._pruners, {key: sorted(v) for key, v in removed.items()})

        trial = probe.make_trial(
            self.model, remove_one, self.example_inputs, self.forward_fn, self.output_transform, output_shapes
        )
        ids = [i for i, g in enumerate(self.channel_groups) if g.prunable]
        suspects = [i for i in ids if constrained.get(i)]
        for gi, err in probe.find_breaking(trial, ids, suspects).items():
            first = err.strip().splitlines()[0] if err.strip() else "no message"
            first = first if len(first) <= 300 else first[:297] + "..."
            if constrained.get(gi):
                what = f"split / slice {', '.join(constrained[gi])} has fixed sizes"
                reason = f"removing a channel breaks the forward ({what}): {first}"
            else:
                reason = f"removing a channel breaks the forward: {first}"
            logger.info("channel group %s is fixed: %s", self.channel_groups[gi].name, reason)
            self.channel_groups[gi] = replace(self.channel_groups[gi], prunable=False, reason=reason)

    def group(self, name: str) -> ChannelGroup:
        """The current channel group whose root layer is ``name``.

        Raises:
            KeyError: no group has that root (close matches are listed).
        """
        if name not in self._position:
            raise LayerNotFoundError(f"no channel group rooted at {name!r}{did_you_mean(name, self._position)}")
        return self.channel_groups[self._position[name]]

    def layer_groups(self, by: LayerGroupSpec = None) -> dict[str, list[ChannelGroup]]:
        """Partition the prunable channel groups into named layer groups (each gets its own pruning threshold).

        See :func:`~grouppruner.graph.layer_groups.partition` for the forms of ``by``.

        Returns:
            ``{layer_group: [ChannelGroup, ...]}`` in model order; only non-empty layer groups.
        """
        return partition(self.channel_groups, by)

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
            raise InvalidOptionError(f"channel group '{name}' is not prunable: {current.reason}")
        units: list[int] = []
        for i in indices:
            if isinstance(i, bool):
                raise OptionTypeError(f"channel indices must be integers, got {i!r}")
            try:
                units.append(operator.index(i))
            except TypeError as err:
                raise OptionTypeError(f"channel indices must be integers, got {type(i).__name__}") from err
        bad = sorted({u for u in units if not 0 <= u < current.size})
        if bad:
            raise InvalidOptionError(
                f"indices {bad} out of range for channel group '{name}' with {current.size} channels"
            )
        dups = sorted({u for u in units if units.count(u) > 1}) if len(set(units)) != len(units) else []
        if dups:
            raise InvalidOptionError(f"duplicate indices {dups} for channel group '{name}'")
        if len(units) >= current.size:
            raise InvalidOptionError(f"cannot remove all {current.size} channels of group '{name}'; keep at least one")
        if units:
            removal.remove_units(
                self._modules, self._pruners, self.channel_groups, self._index, self._position[name], units
            )
        return self.channel_groups[self._position[name]]

    def fixed_convs(self, min_channels: int = 1) -> dict[str, str]:
        """Every convolution whose output channels cannot shrink, with the reason, in model order.

        A conv can shrink when one of the channel groups holding its output channels is prunable and larger than
        what ``min_channels`` keeps (:class:`~grouppruner.pruning.GroupPruner`'s rule, counted per member layer).
        Otherwise the reason names each group and why it is fixed, or that it is already at the minimum; a conv
        that the traced forward never reached (or whose output does not reach a model output) says so.

        Args:
            min_channels: the pruner's ``min_channels`` (``GroupPruner`` uses 8 by default); 1 lists only what
                the graph itself fixes.

        Returns:
            ``{conv name: reason}``; convs that can shrink are absent.

        Raises:
            InvalidOptionError: ``min_channels`` is not an int >= 1.
        """
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
            raise InvalidOptionError(f"fixed_convs: min_channels must be an int >= 1, got {min_channels!r}")
        fixed: dict[str, str] = {}
        for name, module in self._modules.items():
            if not isinstance(module, nn.modules.conv._ConvNd):
                continue
            groups = [self.channel_groups[i] for i in sorted(self._index.get((name, "out"), ()))]
            if not groups:
                fixed[name] = "not in any channel group: the traced forward does not reach it or its output"
                continue
            if any(g.prunable and g.size > min_units(g, min_channels) for g in groups):
                continue
            reasons = []
            for g in groups:
                where = "" if g.name == name else f"in channel group '{g.name}': "
                if not g.prunable:
                    reasons.append(f"{where}{g.reason}")
                else:
                    reasons.append(f"{where}{g.size} group channels, no more than min_channels={min_channels} keeps")
            fixed[name] = "; ".join(dict.fromkeys(reasons))
        return fixed

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
