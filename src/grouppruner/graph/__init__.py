"""Channel groups: which channels of a CNN must be removed together, and their partition into layer groups.

:class:`ChannelGraph` traces a model once with Torch-Pruning's ``DependencyGraph`` and exposes every set of
coupled channels as a :class:`ChannelGroup` (root layer, member layers with the dimension each loses, BatchNorm
layers that score the group, feature stride, prunable flag and reason). :meth:`ChannelGraph.layer_groups`
partitions the prunable groups into named layer groups (by structural section and feature stride by default),
and :meth:`ChannelGraph.remove_channels` physically removes channels from one group.

What this layer adds over a bare ``DependencyGraph``:

- channels that form a model output are never prunable, and ``ignore=`` keeps both dimensions of a layer intact;
- frozen parameters (``requires_grad=False``) are traced like trainable ones;
- ``chunk`` / ``split`` / channel slices written in ``forward()``, grouped convolutions and channel shuffles keep
  equal parts (channels at the same position of every part are one unit);
- a build-time probe removes one channel of every prunable group and runs the model once; groups that break the
  forward (a split whose sizes are fixed in code, a module reading its width from its input) are found by
  bisection and marked not prunable, with the error;
- split and concat sizes come from autograd metadata (Torch-Pruning 1.6.1 misreads ``chunk`` sizes, maps
  ``x.split(c, 1)[1]`` as part 0 and crashes on some concat / split chains); channel reductions and one-channel
  broadcasts (spatial attention) couple nothing; other ops that change the channel count make their groups
  not prunable;
- functional ops with weights (``F.conv2d`` on a bare parameter) raise :class:`GraphError`;
- removals update the stored indices incrementally instead of re-tracing.

Modules, in the order the data flows: :mod:`.tracing` (one traced forward pass, Torch-Pruning's graph),
:mod:`.repair` (its index mappings fixed), :mod:`.shuffle` (channel shuffles mapped), :mod:`.coupling` (channel
units and groups), :mod:`.groups` (the public records), :mod:`.layer_groups` (the partition), :mod:`.removal`
(physical removal), :mod:`.probe` (the build-time probe) and :mod:`.channel_graph` (the object users hold).
Next steps: :mod:`grouppruner.sparsity` regularizes the groups' BatchNorm scales and
:mod:`grouppruner.pruning` decides which channels to remove.
"""

from __future__ import annotations

from .._utils.errors import GraphError
from .channel_graph import ChannelGraph
from .groups import ChannelGroup, LayerRef
from .layer_groups import LayerGroupSpec

__all__ = ["ChannelGraph", "ChannelGroup", "GraphError", "LayerGroupSpec", "LayerRef"]
