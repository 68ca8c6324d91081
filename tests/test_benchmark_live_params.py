"""``benchmarks/runtime_latency.live_params``: the weights between varying channels, what the equal-latency
verdict reports beside the parameter count (a near-zero BatchNorm scale makes a channel a constant)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class _ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


@pytest.fixture
def live_params(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "runtime_latency", raising=False)
    import runtime_latency

    return runtime_latency.live_params


def test_live_params_counts_only_weights_between_varying_channels(live_params: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_ConvBN(3, 4), _ConvBN(4, 6), _ConvBN(6, 6, groups=6), nn.Conv2d(6, 2, 1))
    with torch.no_grad():
        model[0].bn.weight.copy_(torch.tensor([1.0, 1e-4, 0.5, 1e-4]))  # channels 1 and 3: constant act(beta)
        model[1].bn.weight.copy_(torch.tensor([1.0, 1.0, 1e-4, 1.0, 1e-4, 1e-4]))
    images = torch.rand(2, 3, 16, 16)
    # conv 0: 2 live outputs x 3 inputs x 9; conv 1: 3 x 2 x 9; depthwise: its 3 live channels x 9 (all 6 outputs
    # of conv 2 vary only where their input does); head 1x1: 2 outputs x 3 varying inputs
    expected = 2 * 3 * 9 + 3 * 2 * 9 + 3 * 9 + 2 * 3
    assert live_params(model, images) == expected
    assert sum(p.numel() for n, p in model.named_parameters() if "conv" in n or n == "3.weight") > expected


def test_live_params_of_a_dense_model_is_its_conv_weight_count(live_params: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_ConvBN(3, 8), _ConvBN(8, 8))
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert live_params(model, torch.rand(2, 3, 16, 16)) == weights
