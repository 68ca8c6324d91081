"""Recorders: forward hooks on named layers that keep the layers' spatial attention maps, and their features only
where a channel-wise term asks for them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._utils.errors import LayerOutputError
from .attention import spatial_attention

__all__ = ["AttentionRecorder", "Selector"]

Selector: TypeAlias = "int | str | Callable[[Any], Tensor]"
"""Picks the feature map out of a layer output that is not a plain tensor: an index, a key or a callable."""


def _select_feature(output: Any, selector: Selector | None, layer: str, role: str) -> Tensor:
    feature = output
    if selector is not None:
        feature = selector(output) if callable(selector) else output[selector]
    if not isinstance(feature, Tensor):
        raise LayerOutputError(
            f"layer {layer!r} of the {role} produced {type(feature).__name__}, not a tensor; pass "
            f"select={{{layer!r}: index_or_callable}} to pick the (N, C, H, W) feature out of it"
        )
    if feature.dim() != 4:
        raise LayerOutputError(
            f"layer {layer!r} of the {role} produced a tensor of shape {tuple(feature.shape)}; spatial attention "
            f"needs an (N, C, H, W) feature map (hook a convolutional layer, or pass select={{{layer!r}: ...}})"
        )
    return feature


class AttentionRecorder:
    """Forward hooks on named layers of one model that record only their spatial attention maps.

    While `active`, each hooked layer stores ``spatial_attention(output)`` (``(N, H*W)`` fp32) in
    `maps` and its grid ``(H, W)`` in `grids`. The feature itself is kept (in `features`) only for the layers
    named in ``keep``: ``feature[:, keep[name]]`` (``(N, len(index), H, W)``), or the whole feature for ``None``.

    Args:
        model: the (unwrapped) model owning the layers.
        layers: qualified module names to hook.
        role: ``"teacher"`` or ``"student"``, used in error messages.
        p: exponent of `spatial_attention`.
        select: optional per-layer selector for layers whose output is not a tensor.
        keep: layers whose feature to keep, each with the channel indices to keep (``(C',)`` int64) or ``None``
            for all channels.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        *,
        role: str,
        p: float = 2.0,
        select: Mapping[str, Selector] | None = None,
        keep: Mapping[str, Tensor | None] | None = None,
    ) -> None:
        self.role = role
        self.keep = dict(keep or {})
        self.features: dict[str, Tensor] = {}
        # checked against each feature's channel count without a device sync per step
        self._needed = {n: int(i.max()) + 1 if i.numel() else 0 for n, i in self.keep.items() if i is not None}
        self.p = p
        self.active = False
        self.maps: dict[str, Tensor] = {}
        self.grids: dict[str, tuple[int, int]] = {}
        self._handles: list[RemovableHandle] = []
        modules = dict(model.named_modules())
        select = select or {}
        for name in layers:
            hook = self._make_hook(name, select.get(name))
            self._handles.append(modules[name].register_forward_hook(hook))

    def _make_hook(self, name: str, selector: Selector | None) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.active:
                return
            if name in self.maps:
                raise LayerOutputError(
                    f"layer {name!r} of the {self.role} ran more than once in one forward (a shared module?); "
                    "hook a module that runs once per forward"
                )
            feature = _select_feature(output, selector, name, self.role)
            self.maps[name] = spatial_attention(feature, p=self.p)
            self.grids[name] = (int(feature.shape[-2]), int(feature.shape[-1]))
            if name in self.keep:
                index = self.keep[name]
                if index is None:
                    self.features[name] = feature
                    return
                if self._needed[name] > feature.shape[1]:
                    raise LayerOutputError(
                        f"layer {name!r} of the {self.role} has {feature.shape[1]} channels, but channel "
                        f"{self._needed[name] - 1} is asked for (a channel map made for another model?)"
                    )
                if index.device != feature.device:
                    index = self.keep[name] = index.to(feature.device)
                self.features[name] = feature[:, index]

        return hook

    def clear(self) -> None:
        """Drop the recorded maps and features (and the autograd graph they hold)."""
        self.maps.clear()
        self.features.clear()
        self.grids.clear()

    def nbytes(self) -> dict[str, int]:
        """Bytes held per layer: each recorded map's storage (``N * H * W * 4``) plus its kept feature's, if any."""
        return {
            name: m.untyped_storage().nbytes()
            + (self.features[name].untyped_storage().nbytes() if name in self.features else 0)
            for name, m in self.maps.items()
        }

    def remove(self) -> None:
        """Remove every hook and drop the records."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
        self.active = False

    @property
    def num_hooks(self) -> int:
        """Number of hooks still registered."""
        return len(self._handles)
