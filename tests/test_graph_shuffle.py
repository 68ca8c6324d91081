"""Channel shuffle (ShuffleNetV2): pruned through, the same positions going from every shuffle group."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grouppruner.graph import ChannelGraph
from grouppruner.pruning import GroupPruner


def conv_bn(c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return [*layers, nn.ReLU()] if act else layers


def channel_shuffle(x: torch.Tensor, groups: int, fixed: int | None = None) -> torch.Tensor:
    n, c, h, w = x.shape
    per_group = c // groups if fixed is None else fixed  # fixed: sizes written as constants
    x = x.view(n, groups, per_group, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(n, -1, h, w)


class Block(nn.Module):
    """A ShuffleNetV2 unit: stride 2 (both branches on the input) or stride 1 (chunk, identity half)."""

    def __init__(self, c_in: int, c_out: int, stride: int, fixed: bool = False) -> None:
        super().__init__()
        half = c_out // 2
        self.stride, self.fixed = stride, half if fixed else None
        if stride == 2:
            self.branch1 = nn.Sequential(*conv_bn(c_in, c_in, 3, 2, c_in, act=False), *conv_bn(c_in, half))
        b_in = c_in if stride == 2 else half
        self.branch2 = nn.Sequential(
            *conv_bn(b_in, half), *conv_bn(half, half, 3, stride, half, act=False), *conv_bn(half, half)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2, self.fixed)


class ShuffleNetLike(nn.Module):
    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, 3, 2))
        self.stage = nn.Sequential(Block(8, 16, 2, fixed), Block(16, 16, 1, fixed))
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)))


def x_in() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def randomize(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g)
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


def test_shuffle_stream_is_one_prunable_group_of_aligned_positions() -> None:
    graph = ChannelGraph(ShuffleNetLike().eval(), x_in())
    stream = graph.group("stage.0.branch1.2")
    assert stream.prunable, stream.reason
    # 8 positions per shuffle group; the chunk of the second block pairs positions 2j, 2j + 1: 4 units
    assert stream.size == 4
    members = {(r.name, r.dim) for r in stream.layers}
    assert {("stage.0.branch2.5", "out"), ("stage.1.branch2.5", "out"), ("head", "in")} <= members
    # the second block's branch2 output was reached through the first shuffle: no group of its own
    assert all(g.name != "stage.1.branch2.5" for g in graph.channel_groups)


def test_removing_zeroed_positions_keeps_the_output_exactly() -> None:
    """Positions whose channels are exactly zero, removed through two shuffles: the output does not move.

    A wrong index mapping would drop other channels, or leave the consumers' columns misaligned.
    """
    model = ShuffleNetLike().eval()
    randomize(model)
    graph = ChannelGraph(model, x_in())
    zero_and_remove(model, graph, "stage.0.branch1.2", [1, 3])
    assert model.head.in_channels == 8 and model.stage[1].branch2[0].in_channels == 4


def zero_and_remove(model: nn.Module, graph: ChannelGraph, name: str, gone: list[int]) -> None:
    """Zero the BatchNorm channels of group units ``gone``, remove them: the output must stay the same."""
    x = x_in()
    modules = dict(model.named_modules())
    for ref in graph.group(name).bns:
        bn = modules[ref.name]
        assert isinstance(bn, nn.BatchNorm2d)
        for u in gone:
            bn.weight.data[ref.indices[u]] = 0.0
            bn.bias.data[ref.indices[u]] = 0.0
    with torch.no_grad():
        reference = model(x)
    graph.remove_channels(name, gone)
    with torch.no_grad():
        pruned = model(x)
    torch.testing.assert_close(pruned, reference, rtol=0, atol=1e-5)


def test_shuffle_model_prunes_to_a_budget() -> None:
    model = ShuffleNetLike().eval()
    x = x_in()
    shape = model(x).shape
    pruner = GroupPruner(ChannelGraph(model, x), min_channels=1, runtime="torch")
    plan = pruner.plan(target_params=0.7)
    pruner.apply(plan)
    assert model.head.in_channels < 16
    assert model(x).shape == shape
    assert sum(p.numel() for p in model.parameters()) == plan.params_after


def test_shuffle_with_constant_sizes_is_fixed_by_the_probe() -> None:
    model = ShuffleNetLike(fixed=True).eval()
    x = x_in()
    graph = ChannelGraph(model, x)
    stream = graph.group("stage.0.branch1.2")
    assert not stream.prunable and "breaks the forward" in str(stream.reason)
    pruner = GroupPruner(graph, min_channels=1, runtime="torch")
    pruner.apply(pruner.plan(target_params=0.8))
    assert model(x).shape == (2, 10, 8, 8)


@pytest.mark.parametrize("groups", [2, 4])
def test_shuffle_of_one_conv_output(groups: int) -> None:
    """A shuffle right after one conv (ShuffleNet v1 style): pruned or fixed, never a broken forward."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(*conv_bn(3, 16))
            self.b = nn.Sequential(*conv_bn(16, 16, 3))
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.b(channel_shuffle(self.a(x), groups)))

    model = Net().eval()
    randomize(model)
    x = x_in()
    graph = ChannelGraph(model, x)
    group = graph.group("a.0")
    assert group.prunable and group.size == 16 // groups
    zero_and_remove(model, graph, "a.0", [0, group.size - 1])
    assert model.b[0].in_channels == 16 - 2 * groups
    pruner = GroupPruner(graph, min_channels=1, runtime="torch")
    pruner.apply(pruner.plan(target_params=0.6))
    assert model(x).shape == (2, 4, 32, 32)
