import time

import pytest
import torch
from torch import nn

from grouppruner.profile import (
    ModelProfile,
    count_macs,
    count_params,
    measure_latency,
    model_size_bytes,
    profile_model,
    record_positions,
)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),  # 16x16 out
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # depthwise-ish, 16x16
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def test_count_params_matches_hand_count():
    # conv1 3*8*9=216, bn 16, conv2 8*2*9+8=152, linear 40+5=45
    assert count_params(_net()) == 216 + 16 + 152 + 45


def test_count_macs_matches_formula():
    x = torch.randn(2, 3, 32, 32)
    conv1 = 2 * 16 * 16 * 8 * 3 * 9
    conv2 = 2 * 16 * 16 * 8 * 2 * 9
    linear = 2 * 5 * 8
    assert count_macs(_net(), x) == conv1 + conv2 + linear


def test_count_macs_removes_hooks_and_accepts_argument_tuples():
    net = _net()
    x = torch.randn(1, 3, 32, 32)
    # Same counts as test_count_macs_matches_formula, for a batch of one.
    expected = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 2 * 9 + 5 * 8
    assert count_macs(net, (x,)) == count_macs(net, x) == expected
    assert all(not m._forward_hooks for m in net.modules())


def test_model_size_counts_float_buffers_in_fp32():
    net = _net().half()
    bn = net[1]
    expected = 4 * count_params(net) + 4 * (bn.running_mean.numel() + bn.running_var.numel()) + 8
    assert model_size_bytes(net) == expected


class _Sleepy(nn.Module):
    """_net() plus a fixed sleep in every forward, recording (training, grad enabled, threads) of each call."""

    def __init__(self, sleep_s: float) -> None:
        super().__init__()
        self.net = _net()
        self.sleep_s = sleep_s
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled(), torch.get_num_threads()))
        time.sleep(self.sleep_s)
        return self.net(x)


def test_measure_latency_restores_mode_and_threads():
    net = _Sleepy(0.02).train()
    threads = torch.get_num_threads()
    seconds = measure_latency(net, torch.randn(1, 3, 32, 32), repeats=5, warmup=1, threads=1)
    # The median of one timed forward: at least the sleep, far below the >= 0.1 s of the 5 timed forwards together.
    assert 0.019 <= seconds < 0.08
    assert net.calls == [(False, False, 1)] * 6  # 1 warm-up + 5 timed, in eval mode, without autograd, on 1 thread
    assert net.training
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(net, torch.randn(1, 3, 32, 32), repeats=0)


def test_profile_ratio():
    dense = ModelProfile(params=100, macs=1000, size_bytes=400, latency_s=2.0)
    small = ModelProfile(params=25, macs=500, size_bytes=100, latency_s=1.0)
    assert small.ratio_to(dense) == {"params": 0.25, "macs": 0.5, "size_bytes": 0.25, "latency_s": 0.5}
    prof = profile_model(_net(), torch.randn(1, 3, 32, 32))
    assert prof.latency_s is None
    assert prof.params == count_params(_net())


class _CachingHead(nn.Module):
    """Caches tensors made from its input in plain attributes and a buffer, as Ultralytics' Detect does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shape: tuple[int, ...] | None = None
        self.anchors = torch.empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shape != tuple(x.shape):
            self.anchors = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
            self.register_buffer("grid", torch.zeros(x.shape[-1], device=x.device), persistent=False)
            self.shape = tuple(x.shape)
        return self.conv(x) + self.anchors


def test_meta_passes_leave_cached_attributes_as_they_were() -> None:
    """count_macs / record_positions run on the meta device; a cache filled there would break the next forward."""
    head = _CachingHead().eval()
    x = torch.randn(1, 3, 8, 8)
    assert count_macs(head, x) == 8 * 8 * 4 * 3 * 9
    record_positions(head, x)
    assert head.shape is None and head.anchors.numel() == 0 and "grid" not in head._buffers
    out = head(x)  # fills the cache on the CPU
    anchors = head.anchors
    count_macs(head, torch.randn(1, 3, 16, 16))  # another size: the meta pass refills the cache, then undoes it
    assert head.anchors is anchors and head.shape == (1, 3, 8, 8) and head.grid.device.type == "cpu"
    assert torch.equal(head(x), out)
