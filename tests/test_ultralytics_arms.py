"""The yolov8n benchmarks' shared helpers: the budget bisection every baseline arm relies on, and the records."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from grouppruner.profile import count_macs

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def arms(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "_ultralytics_arms", raising=False)
    return importlib.import_module("_ultralytics_arms")


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1))


def _prune(net: nn.Module, ratio: float) -> None:
    """Keep the first ``round(32 * (1 - ratio))`` channels between the two convs (a stand-in for a pruner)."""
    first, second = net[0], net[2]  # type: ignore[index]
    keep = max(1, round(first.out_channels * (1 - ratio)))
    new_first = nn.Conv2d(3, keep, 3, padding=1)
    new_first.weight.data.copy_(first.weight.data[:keep])
    new_first.bias.data.copy_(first.bias.data[:keep])
    new_second = nn.Conv2d(keep, second.out_channels, 3, padding=1)
    new_second.weight.data.copy_(second.weight.data[:, :keep])
    net[0], net[2] = new_first, new_second  # type: ignore[index]


def test_bisect_ratio_lands_on_the_largest_macs_under_the_target(arms: ModuleType) -> None:
    net = _net()
    x = torch.zeros(1, 3, 16, 16)
    dense = count_macs(net, x)  # 16*16*(32*3*9 + 16*32*9)
    pruned, ratio, fraction = arms.bisect_ratio(net, _prune, 0.5, 16)
    kept = pruned[0].out_channels
    assert kept == 16  # 16 of 32 channels: exactly half of both convs' MACs
    assert fraction == pytest.approx(0.5)
    assert count_macs(pruned, x) / dense == pytest.approx(fraction)
    assert 0.48 < ratio <= 0.52  # round(32 * (1 - r)) == 16
    assert net[0].out_channels == 32  # the model itself is not pruned


def test_bisect_ratio_refuses_an_unreachable_target(arms: ModuleType) -> None:
    with pytest.raises(RuntimeError, match=r"0\.01 of the MACs"):
        arms.bisect_ratio(_net(), _prune, 0.01, 16)  # one channel left is still 1/32 of the MACs


def test_records_round_trip_and_settings(arms: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "deep" / "seed0.json"
    assert arms.read_record(path) == {}
    record = {"settings": {"images": 800}, "arms": {"tp-magnitude": {"map50_95": 0.5}}}
    arms.write_record(path, record)
    assert arms.read_record(path) == record

    class Args:
        images, imgsz, dense_epochs, sparse_epochs, recover_epochs, target_macs = 800, 128, 40, 6, 12, 0.5

    assert arms.settings(Args()) == {
        "images": 800,
        "imgsz": 128,
        "dense_epochs": 40,
        "sparse_epochs": 6,
        "recover_epochs": 12,
        "target_macs": 0.5,
    }
