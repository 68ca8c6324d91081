"""BNSparsity on plain models and the rate schedules (graph targets: test_sparsity_graph.py)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from grouppruner import UsageError
from grouppruner.sparsity import (
    BNSparsity,
    Constant,
    Cosine,
    Dynamic,
    Linear,
    NonFiniteError,
    Schedule,
    Step,
)
from grouppruner.sparsity.schedules import _quantile_cut

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """Two conv+BN blocks and a linear head; BN gammas get random signs so sign() is exercised."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, 4)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.weight.uniform_(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def _backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------ exact update


def test_step_adds_rate_times_sign_exactly_and_only_to_gammas() -> None:
    model = Net()
    sparsity = BNSparsity(model, schedule=Constant(3e-3), exclude=["bn2"])
    assert sparsity.layer_names == ("bn1",)
    _backward(model, *_data())
    before = _grads(model)
    sparsity.step()
    after = _grads(model)
    expected = before["bn1.weight"] + 3e-3 * torch.sign(model.bn1.weight.detach())
    assert torch.equal(after["bn1.weight"], expected)
    assert not torch.equal(after["bn1.weight"], before["bn1.weight"])
    for name in before:
        if name != "bn1.weight":
            assert torch.equal(after[name], before[name]), name


def test_exclude_forms_and_unknown_name() -> None:
    model = Net()
    assert BNSparsity(model, schedule=1e-3, exclude=[model.bn1]).layer_names == ("bn2",)
    with pytest.raises(ValueError, match="bn1"):
        BNSparsity(model, schedule=1e-3, exclude=["bn_1"])
    nested = nn.Sequential(Net(), Net())
    assert BNSparsity(nested, schedule=1e-3, exclude=["0"]).layer_names == ("1.bn1", "1.bn2")
    assert BNSparsity(nested, schedule=1e-3, exclude=["*.bn2"]).layer_names == ("0.bn1", "1.bn1")


def test_frozen_batchnorms_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = Net()
    model.bn1.requires_grad_(False)
    with caplog.at_level(logging.WARNING, logger="grouppruner"):
        assert BNSparsity(model, schedule=1e-3).layer_names == ("bn2",)
    assert "frozen" in caplog.text and "bn1" in caplog.text


def test_exclude_everything_is_an_error() -> None:
    with pytest.raises(ValueError, match="excluded or frozen"):
        BNSparsity(Net(), schedule=1e-3, exclude=["bn*"])


def test_penalty_gives_the_same_gradients_as_step() -> None:
    x, y = _data()
    for schedule in (Constant(2e-3), Dynamic(2e-3, total_steps=4, warmup=0.0, keep=0.5, decay=0.1)):
        model = Net()
        reference = Net()
        reference.load_state_dict(model.state_dict())
        by_step = BNSparsity(model, schedule=schedule)
        _backward(model, x, y)
        by_step.step()
        by_penalty = BNSparsity(reference, schedule=type(schedule)(**_args(schedule)))
        reference.zero_grad()
        (nn.functional.cross_entropy(reference(x), y) + by_penalty.penalty()).backward()
        for (name, a), b in zip(_grads(model).items(), _grads(reference).values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)


def _args(schedule: Constant | Dynamic) -> dict[str, object]:
    state = schedule.state_dict()
    return {k: v for k, v in state.items() if k not in ("type", "last_step")}


# ------------------------------------------------------------------------------------------ schedules


def test_schedule_values() -> None:
    assert Constant(1e-3).rate_at(10**6) == 1e-3
    lin = Linear(1e-3, 3e-3, total_steps=10)
    assert [lin.rate_at(t) for t in (0, 5, 10, 20)] == pytest.approx([1e-3, 2e-3, 3e-3, 3e-3])
    cos = Cosine(4e-3, 0.0, total_steps=10)
    assert [cos.rate_at(t) for t in (0, 5, 10)] == pytest.approx([4e-3, 2e-3, 0.0])
    assert cos.rate_at(2) == pytest.approx(2e-3 * (1 + math.cos(math.pi * 0.2)))
    step = Step(1e-3, milestones=(0.5, 0.8), factor=0.1, total_steps=10)
    assert [step.rate_at(t) for t in (0, 4, 5, 7, 8, 9)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    lin.step()
    lin.step()
    assert lin.last_step == 2 and lin.rate() == pytest.approx(1.4e-3)


def test_schedule_state_dict_round_trip() -> None:
    a = Step(1e-3, milestones=(0.25,), factor=0.5, total_steps=8)
    for _ in range(3):
        a.step()
    b = Step(9.0, total_steps=100)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() and b.rate() == a.rate() == 5e-4
    with pytest.raises(ValueError, match="Step"):
        Linear(0, 1, total_steps=3).load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: Constant(-1e-3), "s must be"),
        (lambda: Linear(1e-3, -1.0), "end must be"),
        (lambda: Cosine(float("nan"), 0.0), "start must be"),
        (lambda: Dynamic(1e-3, warmup=1.5), "warmup must be in"),
        (lambda: Dynamic(1e-3, warmup=-0.1), "warmup must be in"),
        (lambda: Dynamic(1e-3, keep=2.0), "keep must be in"),
        (lambda: Dynamic(-1e-3), "s must be"),
        (lambda: Step(1e-3, milestones=(0.8, 0.5)), "milestones"),
        (lambda: Linear(0.0, 1.0, total_steps=0), "total_steps"),
    ],
)
def test_bad_schedules(factory: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()  # type: ignore[operator]


def test_schedule_needing_total_steps_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="Dynamic needs total_steps"):
        BNSparsity(Net(), schedule=Dynamic(1e-3))
    schedule = Dynamic(1e-3)
    schedule.step()
    sparsity = BNSparsity(Net(), schedule=schedule, total_steps=50)
    assert sparsity.schedule.total_steps == 50 and sparsity.schedule.last_step == 1
    assert "20 channels in 2 BatchNorms" in repr(sparsity)
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        BNSparsity(Net(), schedule=Dynamic(1e-3), total_steps=0)
    with pytest.raises(ValueError, match="conflicts"):
        BNSparsity(Net(), schedule=Dynamic(1e-3, total_steps=10), total_steps=50)


def test_dynamic_switches_at_the_right_step_and_kept_channels_get_the_decayed_rate() -> None:
    model = Net()
    s, keep, decay = 1e-2, 0.35, 0.01
    sparsity = BNSparsity(model, schedule=Dynamic(s, total_steps=10, warmup=0.4, keep=keep, decay=decay))
    assert sparsity.schedule.switch_step == 4  # type: ignore[attr-defined]
    x, y = _data()
    gammas = torch.cat([model.bn1.weight.detach(), model.bn2.weight.detach()])
    for t in range(6):
        _backward(model, x, y)
        before = torch.cat([model.bn1.weight.grad.clone(), model.bn2.weight.grad.clone()])
        sparsity.step()
        after = torch.cat([model.bn1.weight.grad, model.bn2.weight.grad])
        rate = (after - before) / torch.sign(gammas)  # gammas are not updated: no optimizer here
        if t < 4:
            torch.testing.assert_close(rate, torch.full_like(rate, s), rtol=1e-5, atol=0)
        else:
            strong = gammas.abs() > torch.quantile(gammas.abs(), 1 - keep)
            torch.testing.assert_close(rate[strong], torch.full_like(rate[strong], decay * s), rtol=1e-4, atol=0)
            torch.testing.assert_close(rate[~strong], torch.full_like(rate[~strong], s), rtol=1e-5, atol=0)
            assert abs(strong.float().mean().item() - keep) <= 1 / gammas.numel()
    stats = sparsity.stats()["all"]
    expected_mean = (strong.float() * decay * s + (~strong).float() * s).mean().item()
    assert stats.rate == pytest.approx(expected_mean, rel=1e-5)


def test_dynamic_group_scope_protects_each_group_separately() -> None:
    model = Net()
    with torch.no_grad():  # bn1 all small, bn2 all large: a global quantile keeps only bn2 channels
        model.bn1.weight.copy_(torch.linspace(0.01, 0.1, 8))
        model.bn2.weight.copy_(torch.linspace(1.0, 2.0, 12))
    groups = {"first": ["bn1"], "second": ["bn2"]}
    kept = {}
    for scope in ("global", "group"):
        schedule = Dynamic(1.0, total_steps=2, warmup=0.0, keep=0.25, decay=0.0, scope=scope)
        sparsity = BNSparsity(model, schedule=schedule, layer_groups=groups)
        kept[scope] = {name: 1.0 - st.rate for name, st in sparsity.stats().items()}
    assert kept["global"]["first"] == 0.0 and kept["global"]["second"] == pytest.approx(20 * 0.25 / 12, abs=0.09)
    assert kept["group"]["first"] == pytest.approx(2 / 8) and kept["group"]["second"] == pytest.approx(3 / 12)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.001, 0.1, 0.5, 0.5, 1.0, 2.0, 3.5]), min_size=1, max_size=40),
    q=st.sampled_from([0.0, 0.1, 0.35, 0.5, 0.65, 0.9, 1.0]),
)
def test_quantile_cut_classifies_like_torch_quantile(values: list[float], q: float) -> None:
    """The O(n) cut marks exactly the channels strictly above torch.quantile (ties included)."""
    array = np.array(values, dtype=np.float32)
    expected = torch.from_numpy(array) > torch.quantile(torch.from_numpy(array), q)
    assert np.array_equal(array > _quantile_cut(array, q), expected.numpy())


@pytest.mark.parametrize("dynamic", [False, True])
def test_bf16_parameters(dynamic: bool) -> None:
    model = Net().to(torch.bfloat16)
    schedule = Dynamic(1e-2, total_steps=2, warmup=0.0, keep=0.5, decay=0.0) if dynamic else Constant(1e-2)
    sparsity = BNSparsity(model, schedule=schedule)
    x, y = _data()
    model.zero_grad()
    nn.functional.cross_entropy(model(x.bfloat16()).float(), y).backward()
    before = model.bn2.weight.grad.clone()
    sparsity.step()
    gamma = model.bn2.weight.detach().float()
    rate = torch.full_like(gamma, 1e-2)
    if dynamic:
        everything = torch.cat([model.bn1.weight.detach(), model.bn2.weight.detach()]).float().abs()
        rate[gamma.abs() > torch.quantile(everything, 0.5)] = 0.0
    expected = (before.float() + rate * torch.sign(gamma)).bfloat16()
    assert model.bn2.weight.grad.dtype == torch.bfloat16
    # bf16 rounds the sum (and possibly the rate) once: equal up to bf16 resolution, far below the 1e-2 rate
    torch.testing.assert_close(model.bn2.weight.grad.float(), expected.float(), rtol=0, atol=2e-3)
    assert not torch.allclose(model.bn2.weight.grad.float(), before.float(), rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Linear(4e-3, 0.0, total_steps=4),
        lambda: Cosine(4e-3, 1e-3, total_steps=4),
        lambda: Step(4e-3, milestones=(0.5,), factor=0.5, total_steps=4),
    ],
    ids=["linear", "cosine", "step"],
)
@pytest.mark.parametrize("check_finite", [True, False])
def test_step_applies_the_scheduled_rate_of_each_step(make: Callable[[], Schedule], check_finite: bool) -> None:
    schedule = make()
    model = Net()
    sparsity = BNSparsity(model, schedule=schedule, check_finite=check_finite)
    sign = torch.sign(model.bn1.weight.detach())
    for t in range(5):  # one past the end: the rate stays at its final value
        _backward(model, *_data())
        before = model.bn1.weight.grad.clone()
        sparsity.step()
        assert torch.equal(model.bn1.weight.grad, before + schedule.rate_at(t) * sign), t
    assert sparsity.schedule.last_step == 5 and sparsity.schedule.rate() == schedule.rate_at(4)
    assert schedule.last_step == 0 and sparsity.schedule is not schedule  # the caller's object is never advanced


def test_schedule_driven_per_epoch() -> None:
    model = Net()
    sparsity = BNSparsity(model, schedule=Linear(2e-3, 0.0, total_steps=2), advance_schedule=False)
    sign = torch.sign(model.bn2.weight.detach())
    for epoch in range(2):
        for _ in range(3):
            _backward(model, *_data())
            before = model.bn2.weight.grad.clone()
            sparsity.step()
            torch.testing.assert_close(model.bn2.weight.grad - before, (2e-3 - 1e-3 * epoch) * sign, rtol=0, atol=1e-8)
        sparsity.schedule.step()
    assert sparsity.schedule.last_step == 2


def test_dynamic_without_finite_check_matches_with_it() -> None:
    init = Net().state_dict()
    grads = []
    for check_finite in (True, False):
        model = Net()
        model.load_state_dict(init)
        schedule = Dynamic(1e-2, total_steps=2, warmup=0.0, keep=0.3, decay=0.05)
        _backward(model, *_data())
        BNSparsity(model, schedule=schedule, check_finite=check_finite).step()
        grads.append(_grads(model))
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name


# ------------------------------------------------------------------------------------------ AMP


def _one_amp_step(model: nn.Module, *, rate: float, amp: bool, scale: float = 65536.0) -> torch.Tensor:
    """One SGD step (bf16 autocast + GradScaler at a fixed large scale, or fp32); returns the new gammas.

    The order is the one :meth:`BNSparsity.step` documents: backward, unscale_, sparsity.step, clip, step.
    """
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**9, enabled=amp)
    sparsity = BNSparsity(model, schedule=rate, scaler=scaler)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    sparsity.step()
    nn.utils.clip_grad_norm_(model.parameters(), 1e6)
    scaler.step(opt)
    scaler.update()
    return torch.cat([model.bn1.weight.detach(), model.bn2.weight.detach()])


def test_amp_gradscaler_update_is_lr_times_rate_times_sign() -> None:
    init = Net().state_dict()

    def run(**kw: object) -> torch.Tensor:
        model = Net()
        model.load_state_dict(init)
        return _one_amp_step(model, **kw)  # type: ignore[arg-type]

    sign = torch.sign(torch.cat([init["bn1.weight"], init["bn2.weight"]]))
    fp32_effect = run(rate=1e-2, amp=False) - run(rate=0.0, amp=False)
    amp_effect = run(rate=1e-2, amp=True) - run(rate=0.0, amp=True)
    # the L1 part of the update is lr * s * sign(gamma), with and without a scaler at 65536
    torch.testing.assert_close(fp32_effect, -0.5 * 1e-2 * sign, rtol=0, atol=1e-6)
    torch.testing.assert_close(amp_effect, -0.5 * 1e-2 * sign, rtol=0, atol=1e-6)


def test_scaled_gradients_are_refused() -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    sparsity = BNSparsity(model, schedule=1e-2, scaler=scaler)
    x, y = _data()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    before = model.bn1.weight.grad.clone()
    with pytest.raises(UsageError, match=r"scaler.unscale_\(optimizer\) first"):
        sparsity.step()
    assert torch.equal(model.bn1.weight.grad, before)  # nothing was added
    scaler.unscale_(opt)
    sparsity.step()
    torch.testing.assert_close(
        model.bn1.weight.grad, before / 65536.0 + 1e-2 * torch.sign(model.bn1.weight.detach()), rtol=1e-6, atol=1e-9
    )


def test_disabled_scaler_needs_no_unscale() -> None:
    model = Net()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    sparsity = BNSparsity(model, schedule=1e-2, scaler=scaler)
    _backward(model, *_data())
    before = model.bn1.weight.grad.clone()
    sparsity.step()
    torch.testing.assert_close(model.bn1.weight.grad - before, 1e-2 * torch.sign(model.bn1.weight.detach()))


def test_overflow_under_scaler_is_left_to_the_scaler() -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sparsity = BNSparsity(model, schedule=1e-3, scaler=scaler)
    x, y = _data()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    model.bn2.weight.grad[0] = float("inf")
    before = model.bn2.weight.detach().clone()
    scaler.unscale_(opt)
    sparsity.step()  # no error: the scaler sees the inf and skips the step
    scaler.step(opt)
    scaler.update()
    assert torch.equal(model.bn2.weight.detach(), before) and scaler.get_scale() == 512.0


# ------------------------------------------------------------------------------------------ accumulation, resume


def test_gradient_accumulation_once_per_optimizer_step_equals_big_batch() -> None:
    init = Net().state_dict()
    x, y = _data(8)
    finals = []
    for micro in (1, 2):
        model = Net()
        model.load_state_dict(init)
        model.eval()  # batch statistics would differ between micro-batches; running stats do not
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sparsity = BNSparsity(model, schedule=Linear(1e-2, 0.0, total_steps=3))
        for _ in range(3):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(micro), y.chunk(micro), strict=True):
                (nn.functional.cross_entropy(model(xb), yb) / micro).backward()
            sparsity.step()
            opt.step()
        assert sparsity.schedule.last_step == 3
        finals.append(model.state_dict())
    for name in finals[0]:
        torch.testing.assert_close(finals[0][name], finals[1][name], rtol=0, atol=1e-6, msg=name)


def _train(model: nn.Module, opt: torch.optim.Optimizer, sparsity: BNSparsity, steps: range) -> None:
    x, y = _data(16)
    for t in steps:
        xb, yb = x[(t % 4) * 4 : (t % 4) * 4 + 4], y[(t % 4) * 4 : (t % 4) * 4 + 4]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        sparsity.step()
        opt.step()


def _setup(init: dict[str, torch.Tensor]) -> tuple[Net, torch.optim.Optimizer, BNSparsity]:
    model = Net()
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt, BNSparsity(model, schedule=Dynamic(5e-3, total_steps=10, warmup=0.5))


def test_interrupt_and_resume_is_exact(tmp_path: os.PathLike[str]) -> None:
    init = Net().state_dict()
    model, opt, sparsity = _setup(init)
    _train(model, opt, sparsity, range(10))

    model2, opt2, sparsity2 = _setup(init)
    _train(model2, opt2, sparsity2, range(3))
    path = os.path.join(tmp_path, "ckpt.pt")
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sparsity": sparsity2.state_dict()}, path)
    del model2, opt2, sparsity2
    state = torch.load(path, weights_only=True)
    model3, opt3, sparsity3 = _setup(Net().state_dict())
    model3.load_state_dict(state["model"])
    opt3.load_state_dict(state["opt"])
    sparsity3.load_state_dict(state["sparsity"])
    assert sparsity3.schedule.last_step == 3
    _train(model3, opt3, sparsity3, range(3, 10))
    for name, value in model.state_dict().items():
        assert torch.equal(value, model3.state_dict()[name]), name


def test_load_state_dict_rejects_other_layers() -> None:
    state = BNSparsity(Net(), schedule=1e-3).state_dict()
    with pytest.raises(ValueError, match="different set"):
        BNSparsity(Net(), schedule=1e-3, exclude=["bn1"]).load_state_dict(state)


# ------------------------------------------------------------------------------------------ stats


def test_stats_per_layer_group() -> None:
    model = Net()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.0, 0.001, -0.005, 0.5, 1.0, -1.0, 0.02, 0.3]))
        model.bn2.weight.fill_(-0.5)
    sparsity = BNSparsity(model, schedule=2e-3, layer_groups=lambda name: name.upper())
    assert list(BNSparsity(model, schedule=1.0, layer_groups={"x": "bn2", "y": ["bn*"]}).stats()) == ["y", "x"]
    stats = sparsity.stats(threshold=0.01)
    assert list(stats) == ["BN1", "BN2"]
    assert stats["BN1"].channels == 8 and stats["BN1"].below == pytest.approx(3 / 8)
    assert stats["BN1"].mean_abs == pytest.approx(2.826 / 8)
    assert stats["BN2"].channels == 12 and stats["BN2"].below == 0.0 and stats["BN2"].mean_abs == 0.5
    assert stats["BN1"].rate == 2e-3  # exact: mean factor first, then the rate
    gammas = sparsity.gammas()
    assert torch.equal(gammas["BN2"], torch.full((12,), -0.5))
    # the graph's spec language on BatchNorm names: BNs in no layer group are not regularized
    assert BNSparsity(model, schedule=2e-3, layer_groups={"a": ["bn1"]}).layer_names == ("bn1",)
    with pytest.raises(ValueError, match="unknown BatchNorm 'bn3'; close matches: 'bn2', 'bn1'"):
        BNSparsity(model, schedule=2e-3, layer_groups={"a": ["bn3"]})


# ------------------------------------------------------------------------------------------ toy training


def _toy_run(s: float, steps: int = 300) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsity = BNSparsity(model, schedule=Constant(s))
    for _ in range(steps):
        idx = torch.randint(0, 1024, (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        sparsity.step()
        opt.step()
    model.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x), y).item()
    return loss, sparsity.stats(threshold=1e-2)["all"].below


@pytest.mark.slow
def test_toy_training_near_zero_fraction_grows_with_s_and_loss_stays_bounded() -> None:
    runs = {s: _toy_run(s) for s in (0.0, 3e-3, 1e-2, 2e-2)}
    fractions = [runs[s][1] for s in sorted(runs)]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] >= 0.4
    # stated bound: the full-data loss stays within 0.15 nats of the unregularized run
    for s, (loss, _) in runs.items():
        assert loss <= runs[0.0][0] + 0.15, (s, loss)


# ------------------------------------------------------------------------------------------ bad input


def test_model_without_batchnorm() -> None:
    with pytest.raises(ValueError, match="Sequential has no BatchNorm"):
        BNSparsity(nn.Sequential(nn.Conv2d(3, 4, 3)), schedule=1e-3)


def test_non_affine_batchnorm_is_named() -> None:
    model = Net()
    model.bn2 = nn.BatchNorm2d(12, affine=False)
    with pytest.raises(ValueError, match="'bn2' is not affine"):
        BNSparsity(model, schedule=1e-3)
    assert BNSparsity(model, schedule=1e-3, exclude=["bn2"]).layer_names == ("bn1",)


def test_step_before_backward() -> None:
    with pytest.raises(RuntimeError, match="before backward"):
        BNSparsity(Net(), schedule=1e-3).step()


def test_unused_batchnorm_is_named() -> None:
    model = Net()
    model.spare = nn.BatchNorm2d(3)
    sparsity = BNSparsity(model, schedule=1e-3)
    _backward(model, *_data())
    with pytest.raises(RuntimeError, match="spare"):
        sparsity.step()


@pytest.mark.parametrize("where", ["gamma", "grad"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_gamma_or_grad_names_the_layer_before_the_optimizer_step(where: str, value: float) -> None:
    model = Net()
    sparsity = BNSparsity(model, schedule=1e-3)
    _backward(model, *_data())
    target = model.bn2.weight if where == "gamma" else model.bn2.weight.grad
    with torch.no_grad():
        target[3] = value
    grads = _grads(model)
    with pytest.raises(NonFiniteError, match="'bn2'"):
        sparsity.step()
    for name, grad in _grads(model).items():  # nothing modified, schedule not advanced
        assert torch.equal(grad.nan_to_num(), grads[name].nan_to_num()), name
    assert sparsity.schedule.last_step == 0


def test_pruned_model_is_detected() -> None:
    model = Net()
    sparsity = BNSparsity(model, schedule=1e-3)
    model.bn2.weight = nn.Parameter(torch.ones(6))
    model.bn2.weight.grad = torch.zeros(6)
    model.bn1.weight.grad = torch.zeros(8)
    with pytest.raises(ValueError, match="sizes changed"):
        sparsity.step()


def test_bad_target_type() -> None:
    with pytest.raises(TypeError, match=r"ChannelGraph or an nn\.Module"):
        BNSparsity("model", schedule=1e-3)  # type: ignore[arg-type]
