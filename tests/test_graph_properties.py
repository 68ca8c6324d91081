"""Property test: removing any channels whose outputs are zero leaves the model's function unchanged.

For random models from the zoo and random channel subsets of every prunable group, the channels are first made
exactly zero where they are produced (weights and biases of every ``dim="out"`` member), then removed with
``remove_channels``. Any wrong index mapping (concat offsets, split parts, grouped-conv positions, flatten
slots, shifted indices after an earlier removal) would remove a live channel or keep a dead one and change the
output.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grouppruner.graph import ChannelGraph
from test_graph import check_partition, outputs, zero_channels
from zoo import ZOO, example_input

MODELS = [
    "resnet", "densenet", "c2f", "tiny_slice", "tiny_split", "resnext", "mobilenetv2", "fpn", "spp",
    "flatten_head", "linear_head", "se", "frozen", "detector",
]


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(MODELS), data=st.data())
def test_removing_zeroed_channels_keeps_outputs(name: str, data: st.DataObject) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    x = example_input(2)
    graph = ChannelGraph(model, x)
    plan: dict[str, list[int]] = {}
    for g in graph.channel_groups:
        if g.prunable:
            units = data.draw(st.sets(st.integers(0, g.size - 1), max_size=g.size - 1), label=g.name)
            plan[g.name] = sorted(units)
            zero_channels(model, g, plan[g.name])
    with torch.no_grad():
        before = outputs(model, x)
    order = data.draw(st.permutations(sorted(plan)), label="order")
    for gname in order:
        graph.remove_channels(gname, plan[gname])
    check_partition(graph)
    with torch.no_grad():
        after = outputs(model, x)
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
