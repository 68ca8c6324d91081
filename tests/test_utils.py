"""The helpers every stage shares (grouppruner._utils): model calls, names, wrappers, modes, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import grouppruner as gp
from grouppruner._utils.calls import call_model, eval_mode, split_inputs
from grouppruner._utils.names import did_you_mean, select_modules
from grouppruner._utils.wrappers import inner_name, unwrap
from grouppruner.profile import count_macs


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x + y))


def test_one_input_rule_for_tensors_tuples_and_dicts() -> None:
    model = TwoInputs().eval()
    x, y = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    expected = model(x, y)
    torch.testing.assert_close(call_model(model, (x, y)), expected)
    torch.testing.assert_close(call_model(model, [x, y]), expected)
    torch.testing.assert_close(call_model(model, {"x": x, "y": y}), expected)
    torch.testing.assert_close(call_model(model, x, lambda m, inp: m(inp, y)), expected)
    assert split_inputs(x) == ((x,), {})
    # Every stage counts MACs on the same inputs the same way, dict inputs included.
    assert count_macs(model, {"x": x, "y": y}) == count_macs(model, (x, y)) == 16 * 4 * 3


def test_call_model_names_model_and_inputs_on_failure() -> None:
    with pytest.raises(ValueError, match=r"forward of TwoInputs failed on example_inputs Tensor\(1, 3, 4, 4\)"):
        call_model(TwoInputs(), torch.randn(1, 3, 4, 4))


def test_eval_mode_restores_each_submodule_mode() -> None:
    model = TwoInputs().train()
    model.bn.eval()  # a user's frozen BatchNorm inside a training model
    with eval_mode(model):
        assert not model.training and not model.conv.training
    assert model.training and model.conv.training and not model.bn.training
    count_macs(model, (torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)))
    assert model.training and not model.bn.training


def test_select_modules_exact_glob_module_and_errors() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    modules = dict(model.named_modules())
    assert select_modules(modules, ["1.0", "1.*", model[0]], option="ignore") == ["1.0", "1.1", "0"]
    assert select_modules(modules, [model], option="exclude") == [""]
    with pytest.raises(ValueError, match=r"exclude: no module named '1\.2'; close matches: '1\.1', '1\.0'"):
        select_modules(modules, ["1.2"], option="exclude")
    with pytest.raises(ValueError, match=r"ignore: pattern 'x\.\*' matches no module"):
        select_modules(modules, ["x.*"], option="ignore")
    with pytest.raises(ValueError, match="not part of the model"):
        select_modules(modules, [nn.Conv2d(1, 1, 1)], option="ignore")
    with pytest.raises(TypeError, match="ignore entries must be modules or names"):
        select_modules(modules, [3], option="ignore")  # type: ignore[list-item]
    assert did_you_mean("zzz", ["0", "1"]) == ""


def test_wrapper_prefix_is_dropped_only_for_real_wrappers() -> None:
    inner = nn.Sequential(nn.Conv2d(3, 4, 1))
    holder = nn.Module()
    holder.module = inner  # a child called "module" is not a wrapper
    assert unwrap(holder) is holder and inner_name(holder, "module.0") == "module.0"
    dp = nn.DataParallel(inner)
    assert unwrap(dp) is inner and inner_name(dp, "module.0") == "0" and inner_name(dp, "0") == "0"
    compiled = torch.compile(dp, backend="eager")
    assert unwrap(compiled) is inner
    assert inner_name(compiled, "_orig_mod.module.0") == "0"


def test_errors_share_one_base_and_keep_builtin_bases() -> None:
    for error, builtin in (
        (gp.GraphError, ValueError),
        (gp.NonFiniteError, ValueError),
        (gp.CheckpointError, ValueError),
        (gp.distill.LayerNotFoundError, KeyError),
        (gp.distill.LayerOutputError, TypeError),
        (gp.distill.DistillerStateError, RuntimeError),
        (gp.InvalidOptionError, ValueError),
        (gp.OptionTypeError, TypeError),
        (gp.UsageError, RuntimeError),
        (gp.ModelChangedError, ValueError),
        (gp.DataError, ValueError),
    ):
        assert issubclass(error, gp.GroupPrunerError) and issubclass(error, builtin)
        with pytest.raises(builtin, match="named layer"):  # `except <builtin>` keeps working
            raise error("named layer")
