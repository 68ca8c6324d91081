"""The build-time probe: groups whose shrinking breaks the forward are found by running the model, and fixed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from grouppruner.graph import ChannelGraph, probe
from grouppruner.pruning import GroupPruner


def conv_bn(c_in: int, c_out: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class PSA(nn.Module):
    """Position-sensitive attention as in YOLOv10 / YOLO11: the channel count is read from the input.

    ``qkv`` is viewed with ``c = x.shape[1]``; once the residual stream ``x`` loses a channel, the view of the
    unchanged ``qkv`` output no longer fits. Nothing in the traced graph ties the stream to that view.
    """

    def __init__(self, c: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        d = c // self.heads
        q, k, v = self.qkv(x).view(n, self.heads, 3 * d, h * w).split([d, d, d], dim=2)
        attn = (q.transpose(-2, -1) @ k * d**-0.5).softmax(dim=-1)
        out = (v @ attn.transpose(-2, -1)).reshape(n, c, h, w)
        return x + self.proj(out)


class PSANet(nn.Module):
    """Stem, a conv into the stream, the attention block, a conv after it, the output conv."""

    def __init__(self, *, reads_item: bool = False) -> None:
        super().__init__()
        self.reads_item = reads_item
        self.stem = conv_bn(3, 16, s=2)
        self.stream = conv_bn(16, 32)
        self.psa = PSA(32)
        self.neck = conv_bn(32, 24)
        self.head = nn.Conv2d(24, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.neck(self.psa(self.stream(self.stem(x))))
        if self.reads_item and float(y.detach().abs().amax()) < 0:  # data-dependent: no forward on the meta device
            y = -y
        return self.head(y)


def x_in() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("reads_item", [False, True])
def test_psa_stream_is_fixed_with_the_forward_error(reads_item: bool) -> None:
    graph = ChannelGraph(PSANet(reads_item=reads_item).eval(), x_in())
    fixed = {g.name: g.reason for g in graph.channel_groups if not g.prunable}
    assert set(fixed) == {"stream.0", "psa.qkv", "head"}
    assert "removing a channel breaks the forward" in str(fixed["stream.0"])
    assert "shape" in str(fixed["stream.0"])  # the view's own error: "shape '[1, 2, ...]' is invalid ..."
    assert "regroups the channels" in str(fixed["psa.qkv"])
    assert {g.name for g in graph.channel_groups if g.prunable} == {"stem.0", "neck.0"}


def test_psa_pruned_to_a_budget_runs() -> None:
    model = PSANet().eval()
    x = x_in()
    shape = model(x).shape
    graph = ChannelGraph(model, x)
    pruner = GroupPruner(graph, min_channels=1, runtime="torch")
    plan = pruner.plan(target_params=0.9)
    pruner.apply(plan)
    assert model.stem[0].out_channels < 16 and model.neck[0].out_channels < 24
    assert model.stream[0].out_channels == 32
    assert model(x).shape == shape
    assert sum(p.numel() for p in model.parameters()) == plan.params_after


def test_without_the_probe_the_stream_breaks_the_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the probe prevents: the graph alone calls the stream prunable, and pruning it crashes the forward."""
    monkeypatch.setattr(probe, "find_breaking", lambda trial, ids, suspects=(): {})
    model = PSANet().eval()
    graph = ChannelGraph(model, x_in())
    assert graph.group("stream.0").prunable
    graph.remove_channels("stream.0", [0])
    with pytest.raises(RuntimeError, match="shape"):
        model(x_in())


def test_probe_leaves_the_model_untouched() -> None:
    model = PSANet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model(x_in())
    ChannelGraph(model, x_in())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and after[k].device.type == "cpu" for k in before)
    assert torch.equal(model(x_in()), reference)
    assert all(type(m).forward is m.forward.__func__ for m in model.modules())  # type: ignore[attr-defined]


def test_find_breaking_is_exact_and_cheap() -> None:
    calls: list[list[int]] = []

    def make(bad: set[int], pair: tuple[int, int]) -> probe.Trial:
        def trial(ids: Sequence[int]) -> str | None:
            calls.append(list(ids))
            hit = sorted(bad & set(ids))
            if hit:
                return f"group {hit[0]}"
            return "pair" if set(pair) <= set(ids) else None

        return trial

    assert probe.find_breaking(make(set(), (-1, -2)), range(40)) == {}
    assert len(calls) == 1
    calls.clear()
    found = probe.find_breaking(make({3, 17}, (-1, -2)), range(40))
    assert found == {3: "group 3", 17: "group 17"}
    assert len(calls) <= 1 + 2 * 2 * 6
    # two groups that break only together: exactly one of them is fixed, and the rest passes together
    found = probe.find_breaking(make({5}, (20, 30)), range(40))
    assert 5 in found and len(found) == 2 and ({20, 30} & set(found))
    rest = [i for i in range(40) if i not in found]
    assert make({5}, (20, 30))(rest) is None


def test_fixed_convs_name_every_conv_that_cannot_shrink() -> None:
    graph = ChannelGraph(PSANet().eval(), x_in())
    fixed = graph.fixed_convs()
    assert list(fixed) == ["stream.0", "psa.qkv", "psa.proj", "head"]
    assert fixed["stream.0"].startswith("removing a channel breaks the forward")
    assert fixed["psa.proj"].startswith("in channel group 'stream.0': removing a channel breaks the forward")
    assert "model output" in fixed["head"]
    # the pruner's minimum: stem has 16 channels, neck 24
    wide = graph.fixed_convs(min_channels=16)
    assert wide["stem.0"] == "16 group channels, no more than min_channels=16 keeps" and "neck.0" not in wide
    with pytest.raises(ValueError, match="min_channels must be an int >= 1"):
        graph.fixed_convs(min_channels=0)


def test_probe_keeps_hook_handles_working() -> None:
    """The probe restores the model's own dicts: a hook registered before the build is still removable."""
    model = PSANet().eval()
    calls: list[int] = []
    handle = model.neck.register_forward_hook(lambda *_: calls.append(1))
    ChannelGraph(model, x_in())
    calls.clear()
    model(x_in())
    assert calls == [1]
    handle.remove()
    model(x_in())
    assert calls == [1]


def test_find_breaking_searches_the_suspects_first() -> None:
    calls: list[list[int]] = []

    def trial(ids: Sequence[int]) -> str | None:
        calls.append(list(ids))
        hit = sorted({3, 17} & set(ids))
        return f"group {hit[0]}" if hit else None

    assert probe.find_breaking(trial, range(40), suspects=[3, 17, 30]) == {3: "group 3", 17: "group 17"}
    assert len(calls) <= 2 + 2 * 2 * 2
    calls.clear()
    # suspects that are not the culprits: the full search still finds them
    assert probe.find_breaking(trial, range(40), suspects=[5, 6]) == {3: "group 3", 17: "group 17"}
