"""GradientBalance / gradient_norms: the gradient norm of each loss term, without touching .grad."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import grouppruner as gp
from grouppruner.distill import GradientBalance, gradient_norms


def _model_and_losses() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    out = model(torch.randn(8, 4))
    task = out.pow(2).mean()
    return model, {"task": task, "kd": 3.0 * task, "head_only": model[2].bias.sum() * 2.0}


def test_norms_match_backward_and_leave_grad_alone() -> None:
    model, losses = _model_and_losses()
    norms = gradient_norms(losses, model.parameters())
    assert all(p.grad is None for p in model.parameters())
    losses["task"].backward(retain_graph=True)
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))  # type: ignore[union-attr]
    assert norms["task"] == pytest.approx(expected, rel=1e-6)
    assert norms["kd"] == pytest.approx(3.0 * expected, rel=1e-6)
    assert norms["head_only"] == pytest.approx(2.0, rel=1e-6)  # d(2 * bias)/d bias = 2, one entry
    assert gradient_norms({"constant": torch.tensor(1.0)}, model.parameters()) == {"constant": 0.0}


def test_balance_measures_every_nth_step_and_averages_ratios() -> None:
    model, _ = _model_and_losses()
    balance = GradientBalance(model.parameters(), reference="task", every=2)
    seen = []
    for step in range(5):
        out = model(torch.randn(8, 4, generator=torch.Generator().manual_seed(step)))
        task = out.pow(2).mean()
        seen.append(balance.observe({"task": task, "kd": (step + 1.0) * task}))
    assert [s is not None for s in seen] == [True, False, True, False, True]
    assert [s["kd"] for s in seen if s is not None] == pytest.approx([1.0, 3.0, 5.0])
    summary = balance.summary()
    assert summary["kd"]["ratio"] == pytest.approx(3.0) and summary["task"]["ratio"] == pytest.approx(1.0)
    state = balance.state_dict()
    again = GradientBalance(model.parameters(), reference="task", every=2)
    again.load_state_dict(state)
    assert again.summary() == summary and again.calls == 5
    balance.reset()
    assert balance.summary() == {} and balance.calls == 5


def test_bad_input_is_refused_with_the_term_named() -> None:
    model, losses = _model_and_losses()
    with pytest.raises(ValueError, match="term 'vector' must be a scalar tensor, got Tensor\\(2,\\)"):
        gradient_norms({"vector": torch.ones(2, requires_grad=True)}, model.parameters())
    with pytest.raises(ValueError, match="reference term 'detection' is not among"):
        GradientBalance(model.parameters()).observe(losses)
    with pytest.raises(ValueError, match="every must be"):
        GradientBalance(model.parameters(), every=0)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires grad"):
        GradientBalance(frozen.parameters())
    assert gp.distill.GradientBalance is GradientBalance
