"""Property tests: random CNNs (conv/BN/act, residual add, concat, max-pool, upsample, depthwise and grouped
convs, chunk).

For every example: plan with random per-layer-group ratios -> apply; the forward pass works, output shapes are
kept, the pruned model equals the unpruned model whose removed channels have gamma = 0 (beta folding is exact
because every consumer is 1x1), the cost model predicted the real parameter and MAC counts, and min_channels /
round_to hold for every channel group and every layer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from grouppruner.graph import ChannelGraph
from grouppruner.profile import count_macs, count_params
from grouppruner.pruning import GroupPruner
from nets import RandomNet, gamma_zero_reference, net_specs, randomize_bn

# Tiny tensors: one thread avoids thread-pool overhead.
pytestmark = pytest.mark.usefixtures("one_thread")

INPUT = (2, 3, 16, 16)


def check_random_net(spec: tuple, data: st.DataObject) -> None:
    ops, c0, act = spec
    seed = data.draw(st.integers(0, 2**16), label="seed")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = RandomNet(ops, c0, act).eval()
    randomize_bn(model, generator)
    x = torch.randn(*INPUT, generator=generator)
    graph = ChannelGraph(model, x)
    min_channels = data.draw(st.integers(1, 4), label="min_channels")
    round_to = data.draw(st.sampled_from([None, 2, 4]), label="round_to")
    coupling = data.draw(st.sampled_from(["mean", "max", "vote"]), label="coupling")
    pruner = GroupPruner(
        graph, min_channels=min_channels, round_to=round_to, coupling=coupling, example_inputs=x, runtime="torch"
    )
    ratios = {name: data.draw(st.floats(0.0, 0.95), label=f"ratio[{name}]") for name in pruner.layer_groups}
    plan = pruner.plan(ratios=ratios)
    reference = gamma_zero_reference(model, graph, plan)
    widths = {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))}
    expected = reference(x)

    pruned = pruner.apply(plan)
    assert pruned is model
    out = pruned(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert count_params(pruned) == plan.params_after
    assert count_macs(pruned, x) == plan.macs_after

    for entry in plan.channel_groups:
        kept = len(entry.kept)
        group = graph.group(entry.name)
        assert group.size == kept
        # min_channels counts layer channels: a layer listed m times (chunk halves, conv groups) keeps m per unit;
        # every member layer keeps min_channels, so the member listed the fewest times decides
        per_unit = min(sum(r.name == ref.name and r.dim == ref.dim for r in group.layers) for ref in group.layers)
        assert kept * per_unit >= min(entry.size * per_unit, min_channels)
        if round_to is not None:
            assert kept % round_to == 0 or kept == entry.size
    for name, module in pruned.named_modules():
        if name in widths:
            width = module.weight.shape[0]
            assert width >= min(widths[name], min_channels), name


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=net_specs(), data=st.data())
def test_random_nets_prune_exactly(spec: tuple, data: st.DataObject) -> None:
    check_random_net(spec, data)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=net_specs(), data=st.data())
def test_random_nets_prune_exactly_many(spec: tuple, data: st.DataObject) -> None:
    check_random_net(spec, data)


def test_unfolded_removal_moves_outputs() -> None:
    """Without folding (torch-pruning's behaviour) the same removal changes outputs far beyond rounding."""
    generator = torch.Generator().manual_seed(3)
    model = RandomNet([("conv", 16), ("res",), ("concat", 8)], 16, "leaky").eval()
    randomize_bn(model, generator)
    x = torch.randn(*INPUT, generator=generator)
    errors = {}
    for fold in (True, False):
        candidate = copy.deepcopy(model)
        graph = ChannelGraph(candidate, x)
        pruner = GroupPruner(graph, min_channels=1, example_inputs=x, runtime="torch")
        plan = pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, 0.5))
        reference = gamma_zero_reference(candidate, graph, plan)
        expected = reference(x)
        errors[fold] = (pruner.apply(plan, fold=fold)(x) - expected).abs().max().item()
    assert errors[True] < 1e-5
    assert errors[False] > 1e-2
