"""BNSparsity driven by a ChannelGraph: exactly the BN channels that score prunable groups are regularized."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grouppruner.graph import ChannelGraph
from grouppruner.sparsity import BNSparsity, Constant, Dynamic

pytestmark = pytest.mark.usefixtures("one_thread")


class CatNet(nn.Module):
    """stem -> (conv_a | conv_b) -> concat -> cat_bn -> mid -> head (model output, protected).

    ``cat_bn`` scores two channel groups: channels 0..7 belong to ``conv_a``, 8..11 to ``conv_b``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(6)
        self.conv_a = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.conv_b = nn.Conv2d(6, 4, 3, stride=2, padding=1, bias=False)
        self.cat_bn = nn.BatchNorm2d(12)
        self.mid = nn.Conv2d(12, 6, 3, stride=2, padding=1, bias=False)
        self.mid_bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 5, 1)
        with torch.no_grad():
            for bn in (self.stem_bn, self.cat_bn, self.mid_bn):
                bn.weight.uniform_(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        y = torch.relu(self.cat_bn(torch.cat([self.conv_a(x), self.conv_b(x)], 1)))
        return self.head(torch.relu(self.mid_bn(self.mid(y))))


def _graph(**kw: object) -> tuple[CatNet, ChannelGraph]:
    model = CatNet()
    # conv_b is ignored: its group (cat_bn channels 8..11) and the stem group feeding it become protected
    return model, ChannelGraph(model, torch.randn(1, 3, 16, 16), ignore=["conv_b"], **kw)  # type: ignore[arg-type]


def _backward(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    model.zero_grad()
    model(torch.randn(4, 3, 16, 16, generator=g)).square().mean().backward()


def _bn_grads(model: CatNet) -> dict[str, torch.Tensor]:
    return {n: m.weight.grad.clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_graph_fixture_has_the_expected_groups() -> None:
    _, graph = _graph()
    prunable = {g.name for g in graph.channel_groups if g.prunable}
    assert {"conv_a", "mid"} <= prunable and not {"stem", "conv_b"} & prunable
    assert graph.group("conv_b").bns[0].indices == (8, 9, 10, 11)


def test_only_channels_of_prunable_groups_change_and_exactly() -> None:
    model, graph = _graph()
    sparsity = BNSparsity(graph, schedule=Constant(4e-3))
    assert sparsity.layer_names == ("cat_bn", "mid_bn") and sparsity.num_channels == 8 + 6
    _backward(model)
    before = _bn_grads(model)
    sparsity.step()
    after = _bn_grads(model)
    assert torch.equal(after["stem_bn"], before["stem_bn"])  # group not prunable
    assert torch.equal(after["cat_bn"][8:], before["cat_bn"][8:])  # protected part of a shared BN
    sign = torch.sign(model.cat_bn.weight.detach())
    assert torch.equal(after["cat_bn"][:8], before["cat_bn"][:8] + 4e-3 * sign[:8])
    assert torch.equal(after["mid_bn"], before["mid_bn"] + 4e-3 * torch.sign(model.mid_bn.weight.detach()))


def test_penalty_matches_step_with_masks_and_dynamic_rates() -> None:
    model, graph = _graph()
    twin = CatNet()
    twin.load_state_dict(model.state_dict())
    schedule = {"total_steps": 2, "warmup": 0.0, "keep": 0.5, "decay": 0.1}
    by_step = BNSparsity(graph, schedule=Dynamic(3e-3, **schedule))  # type: ignore[arg-type]
    _backward(model)
    by_step.step()
    twin_graph = ChannelGraph(twin, torch.randn(1, 3, 16, 16), ignore=["conv_b"])
    by_penalty = BNSparsity(twin_graph, schedule=Dynamic(3e-3, **schedule))  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(5)
    twin.zero_grad()
    (twin(torch.randn(4, 3, 16, 16, generator=g)).square().mean() + by_penalty.penalty()).backward()
    for name, grad in _bn_grads(model).items():
        torch.testing.assert_close(grad, _bn_grads(twin)[name], rtol=0, atol=1e-7, msg=name)


def test_dynamic_quantile_ignores_protected_channels() -> None:
    model, graph = _graph()
    with torch.no_grad():  # protected channels are the largest: they must not raise the quantile
        model.stem_bn.weight.fill_(50.0)
        model.cat_bn.weight.copy_(torch.cat([torch.arange(1.0, 9.0) / 10, torch.full((4,), 90.0)]))
        model.mid_bn.weight.copy_(torch.arange(1.0, 7.0) / 100)
    sparsity = BNSparsity(graph, schedule=Dynamic(1.0, total_steps=1, warmup=0.0, keep=0.25, decay=0.0))
    _backward(model)
    before = _bn_grads(model)
    sparsity.step()
    delta = {n: _bn_grads(model)[n] - before[n] for n in before}
    # 14 regularized channels: the 0.75 quantile is 0.475 (between 0.4 and 0.5) -> cat_bn channels 4..7 kept
    expected = torch.tensor([1.0] * 4 + [0.0] * 4)
    torch.testing.assert_close(delta["cat_bn"][:8], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(delta["mid_bn"], torch.ones(6), rtol=0, atol=1e-6)
    assert torch.equal(delta["cat_bn"][8:], torch.zeros(4)) and torch.equal(delta["stem_bn"], torch.zeros(6))


def test_stats_follow_the_graph_layer_groups() -> None:
    model, graph = _graph()
    sparsity = BNSparsity(graph, schedule=2e-3)
    stats = sparsity.stats(threshold=0.5)
    # layer groups whose channel groups have no BatchNorm (a BN-free head conv) have nothing to report
    assert list(stats) == [name for name, gs in graph.layer_groups().items() if any(g.bns for g in gs)]
    assert len(stats) == 2
    gammas = {"conv_a": model.cat_bn.weight.detach()[:8], "mid": model.mid_bn.weight.detach()}
    for name, st in stats.items():
        values = gammas[graph.layer_groups()[name][0].name].abs()
        assert st.channels == values.numel() and st.rate == pytest.approx(2e-3)
        assert st.below == pytest.approx((values < 0.5).float().mean().item())
        assert st.mean_abs == pytest.approx(values.mean().item(), rel=1e-6)
    custom = BNSparsity(graph, schedule=2e-3, layer_groups={"all": ["*"]})
    assert list(custom.stats()) == ["all"] and custom.stats()["all"].channels == 14
    assert set(custom.gammas()) == {"all"} and custom.gammas()["all"].shape == (14,)


def test_exclude_with_a_graph() -> None:
    _, graph = _graph()
    assert BNSparsity(graph, schedule=1e-3, exclude=["mid_bn"]).layer_names == ("cat_bn",)
    with pytest.raises(ValueError, match="midbn"):
        BNSparsity(graph, schedule=1e-3, exclude=["midbn"])


def test_non_affine_bn_scoring_a_prunable_group_is_named() -> None:
    model = CatNet()
    model.mid_bn = nn.BatchNorm2d(6, affine=False)
    graph = ChannelGraph(model, torch.randn(1, 3, 16, 16), ignore=["conv_b"])
    with pytest.raises(ValueError, match="'mid_bn' is not affine"):
        BNSparsity(graph, schedule=1e-3)


def test_graph_without_regularizable_bn() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = ChannelGraph(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="no prunable channel group is scored"):
        BNSparsity(graph, schedule=1e-3)


def test_pruning_after_construction_is_detected() -> None:
    model, graph = _graph()
    sparsity = BNSparsity(graph, schedule=1e-3)
    graph.remove_channels("mid", [0, 1])
    _backward(model)
    with pytest.raises(ValueError, match="sizes changed"):
        sparsity.step()
    rebuilt = BNSparsity(graph, schedule=1e-3)
    assert rebuilt.num_channels == 8 + 4
    rebuilt.step()


def test_bn_shared_by_two_prunable_groups_is_split_between_their_layer_groups() -> None:
    model = CatNet()
    graph = ChannelGraph(model, torch.randn(1, 3, 16, 16))  # nothing ignored: conv_a and conv_b both prunable
    sparsity = BNSparsity(graph, schedule=1e-3, layer_groups=lambda g: g.name)
    stats = sparsity.stats()
    assert stats["conv_a"].channels == 8 and stats["conv_b"].channels == 4
    gammas = sparsity.gammas()
    assert torch.equal(gammas["conv_a"], model.cat_bn.weight.detach()[:8])
    assert torch.equal(gammas["conv_b"], model.cat_bn.weight.detach()[8:])


def test_dynamic_group_scope_uses_the_graph_layer_groups() -> None:
    model, graph = _graph()
    with torch.no_grad():
        model.cat_bn.weight.copy_(torch.arange(1.0, 13.0))  # large: a global quantile would keep only these
        model.mid_bn.weight.copy_(torch.arange(1.0, 7.0) / 100)
    schedule = Dynamic(1.0, total_steps=1, warmup=0.0, keep=0.5, decay=0.0, scope="group")
    sparsity = BNSparsity(graph, schedule=schedule, layer_groups=lambda g: "a" if g.name == "conv_a" else "m")
    _backward(model)
    before = _bn_grads(model)
    sparsity.step()
    delta = {n: _bn_grads(model)[n] - before[n] for n in before}
    # each layer group keeps its own upper half: cat_bn channels 4..7 and mid_bn channels 3..5
    torch.testing.assert_close(delta["cat_bn"][:8], torch.tensor([1.0] * 4 + [0.0] * 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(delta["mid_bn"], torch.tensor([1.0] * 3 + [0.0] * 3), rtol=0, atol=1e-6)
