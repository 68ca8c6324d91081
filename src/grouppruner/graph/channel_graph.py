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
from typing import Any

import torch
from torch import nn

from .._utils.calls import call_model, eval_mode
from .._utils.modules import ModuleSnapshot
from .._utils.names import did_you_mean, select_modules
from .._utils.wrappers import inner_name, unwrap
from . import coupling, removal, repair, tracing
from .groups import ChannelGroup, LayerRef, layer_role
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
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        given, model = model, unwrap(model)
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
        ignored = self._resolve_ignore(given, ignore)
        tr = tracing.trace(model, example_inputs, forward_fn, output_transform)
        products, own_ops = tracing.check_unsupported(tr.dg)
        tr.unmapped_ops = {**repair.cut_channel_mismatches(tr.dg, own_ops), **products}
        tr.unmapped_concats = repair.fix_index_mappings(tr.dg, tr.unmapped_ops)
        raws = coupling.extract_groups(model, tr, ignored)
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
        constrained = {i: r.constrained_by for i, r in enumerate(raws) if r.constrained_by and r.reason is None}
        if constrained:
            self._probe(constrained, example_inputs, forward_fn, output_transform, tr.output_shapes)
        logger.info(
            "ChannelGraph: %d channel groups, %d prunable",
            len(self.channel_groups),
            sum(g.prunable for g in self.channel_groups),
        )

    def _resolve_ignore(
        self, given: nn.Module, ignore: Iterable[nn.Module | str] | nn.Module | str
    ) -> set[nn.Module]:
        entries: list[nn.Module | str] = [ignore] if isinstance(ignore, (str, nn.Module)) else list(ignore)
        entries = [inner_name(given, e) if isinstance(e, str) else e for e in entries]
        out: set[nn.Module] = set()
        for name in select_modules(self._modules, entries, option="ignore"):
            out.update(self._modules[name].modules())
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
        Each trial removes the channels from the model itself and puts every module back afterwards.
        """

        def trial(ids: Sequence[int]) -> str | None:
            # On the model itself, undone afterwards: a deep copy per trial cost more than the whole trace.
            snapshot = ModuleSnapshot(self.model)
            groups = list(self.channel_groups)
            try:
                for gi in ids:
                    removal.remove_units(self._modules, self._pruners, groups, self._index, gi, [groups[gi].size - 1])
                with eval_mode(self.model), torch.no_grad():
                    out = call_model(self.model, example_inputs, forward_fn)
                    if output_transform is not None:
                        out = output_transform(out)
            except Exception as err:
                return str(err.__cause__ or err)
            finally:
                snapshot.restore()
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
            raise KeyError(f"no channel group rooted at {name!r}{did_you_mean(name, self._position)}")
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
            removal.remove_units(
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
