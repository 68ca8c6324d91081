"""Attention that reshapes channels into heads and areas and back (YOLO12's area attention): graph building ends.

Before the fix the index propagation of Torch-Pruning's flatten mappings multiplied the positions of the qkv
channels around the reshape cycle without end (``yolo12n.yaml`` never finished building its graph).
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from grouppruner.graph import ChannelGraph, coupling


class AreaAttention(nn.Module):
    """Tokens split into areas and heads; q, k, v from one 1x1 conv; a positional depthwise conv on v."""

    def __init__(self, c: int = 16, heads: int = 2, area: int = 2) -> None:
        super().__init__()
        self.heads, self.area = heads, area
        self.qkv = nn.Sequential(nn.Conv2d(c, 3 * c, 1, bias=False), nn.BatchNorm2d(3 * c))
        self.pe = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        b, c, h, w = x.shape
        n = h * w
        qkv = self.qkv(x).flatten(2).transpose(1, 2).reshape(b * self.area, n // self.area, 3 * c)
        b, n = qkv.shape[:2]
        per_head = qkv.view(b, n, self.heads, 3 * c // self.heads).permute(0, 2, 3, 1)
        q, k, v = per_head.split([c // self.heads] * 3, dim=2)
        attn = (q.transpose(-2, -1) @ k).softmax(dim=-1)
        out = (v @ attn.transpose(-2, -1)).permute(0, 3, 1, 2).reshape(b // self.area, n * self.area, c)
        v = v.permute(0, 3, 1, 2).reshape(b // self.area, n * self.area, c)
        out = out.reshape(b // self.area, h, w, c).permute(0, 3, 1, 2)
        v = v.reshape(b // self.area, h, w, c).permute(0, 3, 1, 2)
        return self.proj(out + self.pe(v))


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        AreaAttention(),
        nn.Conv2d(16, 24, 1),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.Conv2d(24, 4, 1),
    ).eval()


def test_area_attention_graph_is_bounded_and_refuses_the_reshaped_channels() -> None:
    start = time.monotonic()
    graph = ChannelGraph(_net(), torch.rand(1, 3, 4, 4))
    assert time.monotonic() - start < 60  # main never returned
    by_name = {g.name: g for g in graph.channel_groups}
    assert not by_name["3.qkv.0"].prunable and "spread past a reshape" in str(by_name["3.qkv.0"].reason)
    assert not by_name["3.pe"].prunable
    # the layers outside the attention's reshapes stay prunable
    assert by_name["3.proj"].prunable and by_name["4"].prunable


def test_propagation_that_does_not_stay_bounded_names_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    from grouppruner import GraphError

    monkeypatch.setattr(coupling, "MAX_PROPAGATION", 10)
    with pytest.raises(GraphError, match=r"^0: its channels spread over more than 10 positions"):
        ChannelGraph(_net(), torch.rand(1, 3, 4, 4))
