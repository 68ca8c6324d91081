"""Reach on a real model: how many of its convolutions a ``plan(target_params=...)`` shrinks, and why the rest stay.

Shared by the real-library tests (tests/test_graph_timm.py, tests/test_graph_torchvision.py) and
benchmarks/reach.py, which prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from grouppruner.graph import ChannelGraph
from grouppruner.pruning import GroupPruner


@dataclass
class Reach:
    """Convs whose output channels shrank, all convs, the whole ones with the graph's reason (or None)."""

    shrunk: int
    convs: int
    whole: dict[str, str | None]
    params_ratio: float


def measure_reach(model: nn.Module, x: torch.Tensor, target_params: float = 0.5, min_channels: int = 8) -> Reach:
    """Plan ``target_params`` at free widths (``runtime="torch"``), apply it, check the forward, count the convs that
    shrank.

    ``whole`` maps each conv that kept its width to ``graph.fixed_convs(min_channels)``'s reason; ``None`` means
    the graph allows it to shrink and the solver left it whole.
    """
    model.eval()
    shape = model(x).shape
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    graph = ChannelGraph(model, x)
    fixed = graph.fixed_convs(min_channels=min_channels)
    # Free widths: reach measures what the graph allows, not what a runtime's channel block rounds away.
    pruner = GroupPruner(graph, min_channels=min_channels, runtime="torch")
    plan = pruner.plan(target_params=target_params)
    pruner.apply(plan)
    assert model(x).shape == shape
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    whole = {n: fixed.get(n) for n in before if after[n] == before[n]}
    return Reach(len(before) - len(whole), len(before), whole, plan.params_ratio)


def assert_reach(reach: Reach, least: int, convs: int) -> None:
    """At least ``least`` of the model's ``convs`` convs shrink, the plan is at half the parameters, and every conv
    left whole has a reason from ``ChannelGraph.fixed_convs``."""
    assert reach.convs == convs
    assert reach.shrunk >= least, reach.whole
    assert abs(reach.params_ratio - 0.5) <= 0.005
    unexplained = [name for name, reason in reach.whole.items() if reason is None]
    assert not unexplained, f"convs the graph allows to shrink but the plan left whole: {unexplained}"
