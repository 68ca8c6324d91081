"""Channel-wise distillation on the kept channels: the teacher-channel map of a pruned model and the CWD term."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import grouppruner as gp
from grouppruner import UsageError
from grouppruner.distill import DistillerStateError, LayerNotFoundError, LayerOutputError, channel_wise_distillation
from grouppruner.pruning import applied_plans, teacher_channels
from grouppruner.recipe import RecipeConfig
from grouppruner.recipe.config import ADDED_OPTIONS, check_option, first_changed_stage, recorded_options
from grouppruner.recipe.config_file import load_recipe_config
from nets import Block


class Fuse(nn.Module):
    """Two branches concatenated in its own forward: its output is no single module's."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.left = Block(cin, cout, 1)
        self.right = Block(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.left(x), self.right(x)], 1)


class ResCat(nn.Module):
    """A residual sum (a coupled channel group), a strided stage, a concatenation and a 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Block(3, 16, 2)
        self.res = Block(16, 16, 1)
        self.stage = Block(16, 32, 2)
        self.fuse = Fuse(32, 16)
        self.head = nn.Conv2d(32, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(self.fuse(self.stage(s + self.res(s))))


LAYERS = ["stem", "res", "res.bn", "stage", "stage.conv", "fuse.left", "fuse.right", "head"]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _zeroed_model(seed: int) -> ResCat:
    """Half of every BatchNorm's channels (random ones) emit exactly 0: gamma = beta = 0; the rest are random."""
    torch.manual_seed(seed)
    model = ResCat().eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            c = bn.num_features
            bn.weight.copy_(torch.rand(c, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=generator) * 0.3)
            bn.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            bn.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
        # the residual couples stem and res: they must die together, so zero by the coupled group's channels
        dead = {16: torch.randperm(16, generator=generator)[:8], 32: torch.randperm(32, generator=generator)[:16]}
        for name in ("stem.bn", "res.bn", "stage.bn", "fuse.left.bn", "fuse.right.bn"):
            bn = model.get_submodule(name)
            index = dead[16] if name in ("stem.bn", "res.bn") else dead[bn.num_features]
            if name == "fuse.right.bn":
                index = torch.randperm(16, generator=generator)[:8]
            bn.weight[index] = 0.0
            bn.bias[index] = 0.0
    return model


def _prune(model: nn.Module, ratio: float) -> None:
    graph = gp.ChannelGraph(model, X[:1])
    pruner = gp.GroupPruner(graph, min_channels=2, example_inputs=X[:1], runtime="torch")
    pruner.apply(pruner.plan(ratios=dict.fromkeys(graph.layer_groups(), ratio)))


def _features(model: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(lambda _m, _a, o, n=n: out.__setitem__(n, o)) for n in layers
    ]
    with torch.no_grad():
        model(X)
    for handle in handles:
        handle.remove()
    return out


@pytest.mark.parametrize("ratios", [(0.5,), (0.25, 0.25)], ids=["one plan", "two chained plans"])
def test_student_features_are_the_teacher_features_at_the_index(ratios: tuple[float, ...]) -> None:
    teacher = _zeroed_model(1)
    student = copy.deepcopy(teacher)
    for ratio in ratios:
        _prune(student, ratio)
    assert len(applied_plans(student)) == len(ratios)
    t_feats, s_feats = _features(teacher, LAYERS), _features(student, LAYERS)
    graph = gp.ChannelGraph(student, X[:1])
    for name in LAYERS:
        index = teacher_channels(student, name, graph=graph)
        assert index.dtype == torch.long and index.shape == (s_feats[name].shape[1],)
        assert bool((index[1:] > index[:-1]).all())
        torch.testing.assert_close(s_feats[name], t_feats[name][:, index], atol=1e-6, rtol=0)
    assert s_feats["stem"].shape[1] < 16 and not torch.equal(teacher_channels(student, "stem"), torch.arange(8))
    # the head's output channels are in no plan: identity
    assert torch.equal(teacher_channels(student, "head"), torch.arange(6))


def test_unmappable_layers_are_named() -> None:
    student = _zeroed_model(2)
    _prune(student, 0.5)
    with pytest.raises(LayerOutputError, match=r"layer 'fuse'.*functional op"):
        teacher_channels(student, "fuse")
    with pytest.raises(LayerNotFoundError, match="'nope'"):
        teacher_channels(student, "nope")
    with pytest.raises(UsageError, match="no applied plan"):
        teacher_channels(_zeroed_model(2), "stem")


def test_cwd_value_on_a_hand_checked_input() -> None:
    # one image, one channel, two positions: p = softmax(0, log 3) = (1/4, 3/4), q = uniform
    teacher = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    student = torch.zeros(1, 1, 1, 2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert channel_wise_distillation(student, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 2 halves the logits and multiplies by T^2; a second identical channel does not change the mean
    p = torch.softmax(torch.tensor([0.0, math.log(3.0) / 2]), 0)
    at_two = 4.0 * float((p * (p / 0.5).log()).sum())
    doubled = channel_wise_distillation(student.repeat(1, 2, 1, 1), teacher.repeat(1, 2, 1, 1), temperature=2.0)
    assert doubled.item() == pytest.approx(at_two, rel=1e-6)


def test_cwd_zero_at_the_index_and_gradient_to_the_student_only() -> None:
    teacher_feat = torch.randn(2, 8, 5, 6)
    index = torch.tensor([0, 3, 4, 7])
    student_feat = teacher_feat[:, index].clone().requires_grad_(True)
    for normalize in (False, True):
        loss = channel_wise_distillation(student_feat, teacher_feat[:, index], normalize=normalize)
        assert abs(loss.item()) < 1e-6
    teacher_param = teacher_feat.clone().requires_grad_(True)
    loss = channel_wise_distillation(student_feat * 2, teacher_param[:, index], temperature=1.0)
    assert loss.item() > 0
    loss.backward()
    assert student_feat.grad is not None and student_feat.grad.abs().sum() > 0
    assert teacher_param.grad is None
    with pytest.raises(ValueError, match="equal shape"):
        channel_wise_distillation(student_feat, teacher_feat)
    with pytest.raises(ValueError, match="temperature"):
        channel_wise_distillation(student_feat, student_feat, temperature=0.0)


def test_distiller_channel_loss_on_a_pruned_student() -> None:
    teacher = _zeroed_model(3)
    student = copy.deepcopy(teacher)
    _prune(student, 0.5)
    layers = ["stem", "stage", "fuse.left"]
    index = {name: teacher_channels(student, name) for name in layers}
    distiller = gp.AttentionDistiller(teacher, student, layers, channel_index={"stage": index["stage"]})
    with pytest.raises(DistillerStateError, match="forward"):
        distiller.channel_loss()
    distiller.eval()
    distiller(X)
    # only the channel-wise layer's features are kept; the teacher's already gathered at the index
    assert set(distiller.student_recorder.features) == {"stage"}
    assert distiller.teacher_recorder.features["stage"].shape == distiller.student_recorder.features["stage"].shape
    total, per_layer = distiller.channel_loss(temperature=1.0)
    assert set(per_layer) == {"stage"} and total.item() < 1e-6
    distiller.remove()
    distiller = gp.AttentionDistiller(teacher, student, layers, channel_index=index)
    distiller.train()
    out = distiller(X)
    total, per_layer = distiller.channel_loss()
    assert set(per_layer) == set(layers) and total.item() > 0  # train-mode BN statistics differ from eval's
    (total + out.square().mean()).backward()
    assert student.stem.conv.weight.grad is not None and student.stem.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="not distilled"):
        gp.AttentionDistiller(teacher, student, ["stem"], channel_index={"stage": index["stage"]})
    without = gp.AttentionDistiller(teacher, student, layers)
    without(X)
    assert not without.student_recorder.features
    with pytest.raises(DistillerStateError, match="channel_index"):
        without.channel_loss()


def test_recipe_option_round_trip_and_check(tmp_path: Path) -> None:
    default = RecipeConfig(out_dir="x")
    assert default.channel_distill_weight == 0.0 == ADDED_OPTIONS["channel_distill_weight"]
    path = tmp_path / "recipe.toml"
    path.write_text('out_dir = "x"\nchannel_distill_weight = 0.05\n', encoding="utf-8")
    config = load_recipe_config(path)
    assert config == dataclasses.replace(default, channel_distill_weight=0.05)
    assert json.loads(json.dumps(recorded_options(config)))["channel_distill_weight"] == 0.05
    # a run folder written before the option existed resumes at its default; another weight redoes the recovery
    older = {k: v for k, v in recorded_options(default).items() if k != "channel_distill_weight"}
    assert first_changed_stage(older, default) is None
    assert first_changed_stage(older, config) == "recovered"
    with pytest.raises(ValueError, match="channel_distill_weight"):
        check_option("channel_distill_weight", -1.0)
