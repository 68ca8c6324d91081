"""Spatial-attention distillation: the map, the distiller's lifecycle, memory, AMP, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import grouppruner as gp
from grouppruner.detection.foreground import box_foreground, boxes_to_grid_mask, grid_stride
from grouppruner.distill import (
    DistillerStateError,
    LayerNotFoundError,
    LayerOutputError,
    NonFiniteError,
    spatial_attention,
)
from nets import Block

LAYERS = ["stem", "stage1", "stage2"]


class TinyNet(nn.Module):
    """Feature maps at strides 2, 4, 8 named stem / stage1 / stage2, a 1x1 head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = Block(3, width, 2)
        self.stage1 = Block(width, 2 * width, 2)
        self.stage2 = Block(2 * width, 4 * width, 2)
        self.head = nn.Conv2d(4 * width, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(self.stem(x))))


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _pair(seed: int = 0) -> tuple[TinyNet, TinyNet]:
    torch.manual_seed(seed)
    teacher = TinyNet(8)
    _randomize_bn(teacher)
    student = TinyNet(4)
    return teacher, student


def _manual_loss(
    teacher: nn.Module, student: nn.Module, x: torch.Tensor, names: list[str], weights: list[float]
) -> torch.Tensor:
    """Reference: store whole features with hooks, then compute the paper's loss."""
    feats: dict[str, torch.Tensor] = {}
    handles = []
    for tag, model in (("t", teacher), ("s", student)):
        for n in names:
            module = dict(model.named_modules())[n]
            handles.append(module.register_forward_hook(lambda m, a, o, k=f"{tag}{n}": feats.__setitem__(k, o)))
    with torch.no_grad():
        teacher(x)
    student(x)
    for h in handles:
        h.remove()
    total = torch.zeros(())
    for n, w in zip(names, weights, strict=True):
        a_t = F.normalize(feats[f"t{n}"].float().pow(2).mean(1).flatten(1), dim=1)
        a_s = F.normalize(feats[f"s{n}"].float().pow(2).mean(1).flatten(1), dim=1)
        total = total + w * (a_t - a_s).pow(2).mean()
    return total


# ----------------------------------------------------------------------------------------------- the map


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 6),
    h=st.integers(1, 5),
    w=st.integers(1, 7),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_map_invariant_to_channel_permutation_duplication_and_scale(
    n: int, c: int, h: int, w: int, scale: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, c, h, w, generator=g)
    ref = spatial_attention(f)
    assert ref.shape == (n, h * w) and ref.dtype == torch.float32
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(n))
    perm = torch.randperm(c, generator=g)
    torch.testing.assert_close(spatial_attention(f[:, perm]), ref)
    torch.testing.assert_close(spatial_attention(torch.cat([f, f, f], dim=1)), ref)
    torch.testing.assert_close(spatial_attention(f * scale), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(spatial_attention(-f), ref)


def test_map_formula_and_p() -> None:
    f = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    energy = torch.tensor([(1 + 9) / 2, (4 + 0) / 2])
    torch.testing.assert_close(spatial_attention(f), (energy / energy.norm())[None])
    energy1 = torch.tensor([(1 + 3) / 2, (2 + 0) / 2])
    torch.testing.assert_close(spatial_attention(f, p=1), (energy1 / energy1.norm())[None])
    zero = spatial_attention(torch.zeros(2, 3, 2, 2))
    assert torch.equal(zero, torch.zeros(2, 4))
    # Extreme scales (an untrained teacher in eval mode can emit ~1e-10 features) still give a unit-norm map.
    g = torch.randn(2, 4, 3, 5)
    for scale in (1e-15, 1e-10, 1e15):
        torch.testing.assert_close(spatial_attention(g * scale), spatial_attention(g))


@pytest.mark.parametrize("p", [2.0, 1.0, 1.5, 3.0])
def test_map_gradient_matches_finite_differences(p: float) -> None:
    f = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert spatial_attention(f.detach(), p=p).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: spatial_attention(x, p=p), (f,))
    ref = F.normalize(f.detach().abs().pow(p).mean(1).flatten(1), dim=1)
    torch.testing.assert_close(spatial_attention(f.detach(), p=p), ref)


def test_map_is_fp32_for_low_precision_inputs() -> None:
    f = torch.randn(2, 5, 4, 3)
    for dtype in (torch.bfloat16, torch.float16):
        low = f.to(dtype).requires_grad_(True)
        a = spatial_attention(low)
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, spatial_attention(low.detach().float()))
        a.sum().backward()
        assert low.grad is not None and low.grad.dtype == dtype and low.grad.abs().sum() > 0


def test_map_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        spatial_attention(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="p must be"):
        spatial_attention(torch.zeros(1, 1, 2, 2), p=0)
    with pytest.raises(TypeError):
        spatial_attention([1.0, 2.0])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- the distiller


def test_loss_matches_feature_storing_reference_with_weights() -> None:
    teacher, student = _pair()
    x = torch.randn(2, 3, 32, 40)
    weights = [4.0, 2.0, 1.0]
    d = gp.AttentionDistiller(teacher, student, LAYERS, weights=weights)
    d(x)
    total, per_layer = d.loss()
    assert list(per_layer) == LAYERS
    expected = _manual_loss(copy.deepcopy(teacher).eval(), copy.deepcopy(student), x, LAYERS, weights)
    torch.testing.assert_close(total, expected)
    by_name = gp.AttentionDistiller(teacher, copy.deepcopy(student), LAYERS, weights={"stem": 4.0, "stage1": 2.0})
    by_name.student.load_state_dict(student.state_dict())
    by_name(x)
    torch.testing.assert_close(by_name.loss()[0], expected)


def test_identical_models_give_zero_loss_and_zero_gradient() -> None:
    teacher, _ = _pair()
    student = copy.deepcopy(teacher).eval()  # eval: same BN statistics as the teacher
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    d.eval()
    d(torch.randn(2, 3, 32, 32))
    total, per_layer = d.loss()
    assert total.item() == 0.0 and all(v.item() == 0.0 for v in per_layer.values())
    total.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)


def test_gradients_reach_only_the_student() -> None:
    teacher, student = _pair()
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    d.train()
    d(torch.randn(2, 3, 32, 32))
    d.loss()[0].backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for name in ("stem.conv.weight", "stage1.bn.weight", "stage2.conv.weight"):
        grad = dict(student.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # The head is after the last distilled layer: no gradient from the distillation loss.
    assert student.head.weight.grad is None


def test_teacher_frozen_and_in_eval_over_training_steps() -> None:
    teacher, student = _pair()
    before = copy.deepcopy(teacher.state_dict())
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    wrapper = nn.ModuleDict({"kd": d})
    user_holder = nn.ModuleList([teacher, student])  # a user module that also holds the teacher
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    student_before = copy.deepcopy(student.state_dict())
    for step in range(3):
        if step == 0:
            student.train()
        elif step == 1:
            wrapper.train()
        else:
            user_holder.train()
            teacher.train()  # direct call: re-asserted at the next forward
        assert not any(m.training for m in teacher.modules()) or step == 2
        out = d(torch.randn(2, 3, 32, 32))
        assert not any(m.training for m in teacher.modules())
        assert student.training
        kd, _ = d.loss()
        (kd + 1e-3 * out.square().mean()).backward()
        opt.step()
        opt.zero_grad()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "teacher weights or BN statistics moved"
    moved = [k for k, v in student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert "stem.bn.running_mean" in moved and "stem.conv.weight" in moved
    d.eval()
    assert not student.training and not teacher.training


def test_student_pruned_with_fewer_channels_same_names() -> None:
    """Channels whose BN gamma and beta are 0 emit 0 after the activation: removing them leaves the maps equal."""
    torch.manual_seed(1)
    teacher = TinyNet(8).eval()
    _randomize_bn(teacher)
    keep = {"stem": [0, 2, 3, 6], "stage1": list(range(0, 16, 2)), "stage2": list(range(0, 32, 3))}
    for name, kept in keep.items():
        bn = dict(teacher.named_modules())[f"{name}.bn"]
        dead = [i for i in range(bn.num_features) if i not in kept]
        bn.weight.data[dead] = 0.0
        bn.bias.data[dead] = 0.0
    student = _slice_channels(teacher, keep)
    assert student.stage2.conv.out_channels == len(keep["stage2"]) < teacher.stage2.conv.out_channels
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    d.eval()
    x = torch.randn(2, 3, 40, 24)
    out = d(x)
    torch.testing.assert_close(out, teacher(x), atol=1e-5, rtol=1e-5)
    total, _ = d.loss()
    assert total.item() < 1e-12
    # Train it a bit: the loss is finite and gradients reach the thinner student.
    student.stage1.conv.weight.data.add_(0.1 * torch.randn_like(student.stage1.conv.weight))
    d.train()
    d(x)
    total, _ = d.loss()
    assert total.item() > 0
    total.backward()
    assert student.stem.conv.weight.grad is not None and student.stem.conv.weight.grad.abs().sum() > 0


def test_student_pruned_by_group_pruner() -> None:
    """A student pruned by GroupPruner (fewer channels, same names): near-dead channels go, the maps stay equal."""
    torch.manual_seed(2)
    teacher = TinyNet(8).eval()
    _randomize_bn(teacher)
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            dead = torch.arange(m.num_features) % 2 == 1  # half the channels emit about act(0) = 0
            m.weight.data[dead] = 1e-7 * torch.arange(1, int(dead.sum()) + 1, dtype=torch.float32)
            m.bias.data[dead] = 0.0
    student = copy.deepcopy(teacher)
    example = torch.randn(1, 3, 32, 32)
    graph = gp.ChannelGraph(student, example)
    pruner = gp.GroupPruner(graph, min_channels=2, example_inputs=example, runtime="torch")
    pruner.apply(pruner.plan(ratios=dict.fromkeys(graph.layer_groups(), 0.5)))
    widths = [student.stem.conv.out_channels, student.stage1.conv.out_channels, student.stage2.conv.out_channels]
    assert 4 <= widths[0] < 8 and 8 <= widths[1] < 16 and 16 <= widths[2] < 32
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    d.eval()
    x = torch.randn(2, 3, 24, 40)
    d(x)
    total, _ = d.loss()
    assert total.item() < 1e-9
    d.train()
    out = d(x)
    total, _ = d.loss()
    (total + out.square().mean()).backward()
    assert total.item() > 0 and student.stem.conv.weight.grad.abs().sum() > 0


def _slice_channels(model: TinyNet, keep: dict[str, list[int]]) -> TinyNet:
    """A thinner copy of ``model`` keeping channels ``keep[block]`` of each block (same module names)."""
    thin = copy.deepcopy(model)
    previous: list[int] | None = None
    for name in LAYERS:
        block = getattr(thin, name)
        kept = torch.tensor(keep[name])
        w = block.conv.weight.data[kept]
        if previous is not None:
            w = w[:, torch.tensor(previous)]
        block.conv = nn.Conv2d(w.shape[1], w.shape[0], 3, block.conv.stride, 1, bias=False)
        block.conv.weight.data.copy_(w)
        bn = nn.BatchNorm2d(len(kept))
        old = block.bn
        bn.weight.data.copy_(old.weight.data[kept])
        bn.bias.data.copy_(old.bias.data[kept])
        bn.running_mean.copy_(old.running_mean[kept])
        bn.running_var.copy_(old.running_var[kept])
        block.bn = bn
        previous = keep[name]
    head = nn.Conv2d(len(previous or []), thin.head.out_channels, 1)
    head.weight.data.copy_(thin.head.weight.data[:, torch.tensor(previous)])
    head.bias.data.copy_(thin.head.bias.data)
    thin.head = head
    return thin.eval()


def test_bf16_autocast_matches_fp32() -> None:
    teacher, student = _pair()
    x = torch.randn(2, 3, 32, 32)
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    d.eval()
    d(x)
    ref, ref_layers = d.loss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(x)
        low, low_layers = d.loss()
    assert out.dtype == torch.bfloat16
    assert all(m.dtype == torch.float32 for m in d.student_recorder.maps.values())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, rtol=5e-2, atol=1e-5)
    for name in LAYERS:
        torch.testing.assert_close(low_layers[name], ref_layers[name], rtol=8e-2, atol=2e-5)
    low.backward()
    assert student.stem.conv.weight.grad is not None and student.stem.conv.weight.grad.abs().sum() > 0
    assert student.stem.conv.weight.grad.dtype == torch.float32


def test_recorded_bytes_are_n_h_w_fp32_per_layer() -> None:
    teacher, student = _pair()
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    n, h, w = 3, 32, 48
    for dtype in (None, torch.bfloat16):
        if dtype is None:
            d(torch.randn(n, 3, h, w))
        else:
            with torch.autocast("cpu", dtype=dtype):
                d(torch.randn(n, 3, h, w))
        for recorder in (d.student_recorder, d.teacher_recorder):
            nbytes = recorder.nbytes()
            assert set(nbytes) == set(LAYERS)
            for name, stride in zip(LAYERS, (2, 4, 8), strict=True):
                assert recorder.grids[name] == (h // stride, w // stride)
                assert nbytes[name] == n * (h // stride) * (w // stride) * 4, (recorder.role, name)
        assert sum(d.recorded_bytes().values()) == 2 * sum(n * (h // s) * (w // s) * 4 for s in (2, 4, 8))


def test_records_cleared_every_step_and_only_during_distiller_forward() -> None:
    teacher, student = _pair()
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    d(torch.randn(2, 3, 32, 32))
    first = d.student_recorder.maps["stem"]
    d(torch.randn(1, 3, 16, 16))
    assert d.student_recorder.maps["stem"] is not first and d.student_recorder.grids["stem"] == (8, 8)
    assert d.last_teacher_output is not None and d.last_teacher_output.shape == (1, 6, 2, 2)
    student(torch.randn(4, 3, 32, 32))  # a plain student call (e.g. validation) records nothing
    assert d.student_recorder.maps["stem"].shape == (1, 64)
    d.clear()
    with pytest.raises(DistillerStateError, match="before any forward"):
        d.loss()


def test_remove_and_context_manager_remove_every_hook() -> None:
    teacher, student = _pair()

    def hook_count() -> int:
        return sum(len(m._forward_hooks) for model in (teacher, student) for m in model.modules())

    with gp.AttentionDistiller(teacher, student, LAYERS) as d:
        assert hook_count() == 6
        assert d.student_recorder.num_hooks == d.teacher_recorder.num_hooks == 3
        d(torch.randn(1, 3, 16, 16))
    assert hook_count() == 0
    assert d.student_recorder.num_hooks == d.teacher_recorder.num_hooks == 0
    assert d.recorded_bytes() == {}
    with pytest.raises(DistillerStateError, match="removed"):
        d(torch.randn(1, 3, 16, 16))
    d2 = gp.AttentionDistiller(teacher, student, LAYERS)
    assert hook_count() == 6
    d2.remove()
    assert hook_count() == 0


@pytest.mark.slow
def test_compiled_and_prefixed_student() -> None:
    teacher, student = _pair()
    xs = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    plain = gp.AttentionDistiller(teacher, copy.deepcopy(student), LAYERS)
    refs = []
    for x in xs:
        plain(x)
        refs.append(plain.loss()[0])
    plain.remove()
    compiled = torch.compile(student, backend="eager")
    compiled_teacher = torch.compile(teacher, backend="eager")
    d = gp.AttentionDistiller(compiled_teacher, compiled, [f"_orig_mod.{n}" for n in LAYERS])
    assert d.layers == LAYERS
    for x, ref in zip(xs, refs, strict=True):  # the second call runs the cached graph: hooks still record
        d(x)
        total, _ = d.loss()
        torch.testing.assert_close(total, ref)
    total.backward()
    assert student.stem.conv.weight.grad is not None and student.stem.conv.weight.grad.abs().sum() > 0


def test_teacher_follows_student_device() -> None:
    teacher, student = _pair()
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    student.to("meta")
    d._prepare_teacher()
    assert next(teacher.parameters()).device.type == "meta"


def test_foreground_boxes_on_non_square_input() -> None:
    # H=32, W=64, stride 8 -> grid 4 x 8. Box x 40..56, y 8..16 covers row 1, columns 5 and 6.
    box = torch.tensor([[40.0, 8.0, 56.0, 16.0]])
    mask = boxes_to_grid_mask([box, torch.zeros(0, 4)], (4, 8), 8)
    expected = torch.zeros(2, 4, 8)
    expected[0, 1, 5:7] = 1.0
    assert torch.equal(mask, expected)
    # A box smaller than a cell still marks its cell; different strides per axis.
    tiny = boxes_to_grid_mask([torch.tensor([[9.0, 1.0, 10.0, 2.0]])], (2, 3), (4.0, 8.0))
    assert tiny.nonzero().tolist() == [[0, 0, 1]]
    assert grid_stride(320, 40) == 8 and grid_stride(321, 41) == 8 and grid_stride(321, 40) == 8
    assert grid_stride(30, 4) == 8  # 30 -> 15 -> 8 -> 4 through three stride-2 convs

    teacher, student = _pair()
    d = gp.AttentionDistiller(teacher, student, LAYERS, fg_weight=3.0, bg_weight=0.5)
    x = torch.randn(2, 3, 32, 64)
    boxes = [box, torch.tensor([[0.0, 0.0, 20.0, 30.0]])]
    d(x)
    _, per_layer = d.loss(mask=box_foreground(boxes, x.shape[-2:]))
    for name, stride in zip(LAYERS, (2, 4, 8), strict=True):
        grid = (32 // stride, 64 // stride)
        fg = boxes_to_grid_mask(boxes, grid, stride).flatten(1)
        w = 0.5 + 2.5 * fg
        diff = (d.teacher_recorder.maps[name] - d.student_recorder.maps[name]).square()
        torch.testing.assert_close(per_layer[name], (w * diff).sum() / w.sum())
    # The same boxes given as a pixel mask give the same loss.
    pixel_mask = torch.zeros(2, 1, 32, 64)
    for i, b in enumerate(boxes):
        x1, y1, x2, y2 = (int(v) for v in b[0])
        pixel_mask[i, 0, y1:y2, x1:x2] = 1.0
    by_mask, _ = d.loss(mask=(pixel_mask > 0).float())
    # A cell partly covered by the pixel mask weighs in proportion; with stride-aligned boxes both agree.
    aligned = [torch.tensor([[40.0, 8.0, 56.0, 16.0]]), torch.tensor([[0.0, 0.0, 16.0, 32.0]])]
    pixel_mask.zero_()
    pixel_mask[0, 0, 8:16, 40:56] = 1.0
    pixel_mask[1, 0, 0:32, 0:16] = 1.0
    by_boxes = d.loss(mask=box_foreground(aligned, x.shape[-2:]))[0]
    torch.testing.assert_close(d.loss(mask=pixel_mask)[0], by_boxes)
    assert by_mask.item() != by_boxes.item()
    with pytest.raises(ValueError, match="mask callable must return shape"):
        d.loss(mask=box_foreground(aligned[:1], x.shape[-2:]))
    with pytest.raises(ValueError, match="mask must have shape"):
        d.loss(mask=pixel_mask[:1])


def test_spatial_mismatch_is_an_error_unless_resize() -> None:
    teacher, student = _pair()
    mapping = {"stage1": "stage2", "stem": "stem"}
    d = gp.AttentionDistiller(teacher, student, mapping)
    with pytest.raises(ValueError, match=r"'stage1': student \(8, 8\) vs teacher \(4, 4\) \('stage2'\)"):
        d(torch.randn(1, 3, 32, 32))
    for mode in ("bilinear", "area"):
        d = gp.AttentionDistiller(teacher, student, mapping, resize=mode)
        d(torch.randn(2, 3, 32, 32))
        _, per_layer = d.loss()
        small = F.interpolate(d.student_recorder.maps["stage1"].view(2, 1, 8, 8), size=(4, 4), mode=mode)
        a_s = F.normalize(small.flatten(1), dim=1)
        expected = (d.teacher_recorder.maps["stage2"] - a_s).square().mean()
        torch.testing.assert_close(per_layer["stage1"], expected)


# ------------------------------------------------------------------------------------------- bad input


class TupleNet(TinyNet):
    def __init__(self) -> None:
        super().__init__(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 3)
        self.split = _Split()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.split(self.stage2(self.stage1(self.stem(x))))
        return self.fc(self.pool(torch.cat([a, a], 1)).flatten(1))


class _Split(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x.chunk(2, dim=1)
        return a, b


def test_child_named_module_is_not_a_wrapper_prefix() -> None:
    """``module.0`` names the child ``module`` of an unwrapped model; only a real wrapper's prefix is dropped."""

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    teacher, student = Holder(), Holder()
    d = gp.AttentionDistiller(teacher, student, ["module.0", "module.2"])
    assert d.layers == ["module.0", "module.2"]
    d(torch.randn(2, 3, 8, 8))
    assert d.student_recorder.grids == {"module.0": (8, 8), "module.2": (8, 8)}
    with pytest.raises(LayerNotFoundError, match="not found in the student"):
        gp.AttentionDistiller(Holder(), Holder(), ["0"])


def test_state_dict_holds_the_student_only() -> None:
    teacher, student = _pair()
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    assert set(d.state_dict()) == {f"student.{k}" for k in student.state_dict()}
    assert {id(p) for p in d.parameters()} == {id(p) for p in student.parameters()}


def test_bad_layer_names_list_close_matches() -> None:
    teacher, student = _pair()
    with pytest.raises(LayerNotFoundError) as err:
        gp.AttentionDistiller(teacher, student, ["stage1", "stage_2"])
    message = str(err.value)
    assert "'stage_2' did you mean 'stage2'" in message and "student" in message and "teacher" in message
    assert "stem.conv" in message  # the available names are listed
    with pytest.raises(ValueError, match="same object"):
        gp.AttentionDistiller(student, student, LAYERS)
    with pytest.raises(ValueError, match="same object"):
        gp.AttentionDistiller(student, torch.compile(student, backend="eager"), LAYERS)
    with pytest.raises(ValueError, match="more than once"):
        gp.AttentionDistiller(teacher, torch.compile(student, backend="eager"), ["stem", "_orig_mod.stem"])
    with pytest.raises(ValueError, match="weights has 2 values"):
        gp.AttentionDistiller(teacher, student, LAYERS, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="not distilled"):
        gp.AttentionDistiller(teacher, student, LAYERS, weights={"head": 1.0})
    with pytest.raises(TypeError, match="DataParallel"):
        gp.AttentionDistiller(teacher, nn.DataParallel(student), LAYERS)
    with pytest.raises(TypeError, match="single string"):
        gp.AttentionDistiller(teacher, student, "stem")


def test_tuple_and_non_4d_outputs() -> None:
    torch.manual_seed(0)
    teacher, student = TupleNet(), TupleNet()
    x = torch.randn(2, 3, 32, 32)
    d = gp.AttentionDistiller(teacher, student, ["split"])
    with pytest.raises(LayerOutputError, match=r"layer 'split' of the teacher produced tuple.*select="):
        d(x)
    d.remove()
    d = gp.AttentionDistiller(teacher, student, ["split", "stage2"], select={"split": 0})
    d(x)
    assert d.student_recorder.grids["split"] == (4, 4)
    d.remove()
    d = gp.AttentionDistiller(teacher, student, ["fc"])
    with pytest.raises(LayerOutputError, match=r"'fc' of the teacher produced a tensor of shape \(2, 3\)"):
        d(x)


def test_loss_before_forward_and_nan_feature_named() -> None:
    teacher, student = _pair()
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    with pytest.raises(DistillerStateError, match="before any forward"):
        d.loss()
    with torch.no_grad():
        teacher.stage1.conv.weight[0, 0, 0, 0] = float("nan")
    d(torch.randn(1, 3, 16, 16))
    with pytest.raises(NonFiniteError, match="layer 'stage1' of the teacher"):
        d.loss()


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.spare = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


def test_layer_running_twice_or_never_is_an_error() -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(LayerOutputError, match="'conv' of the teacher ran more than once"):
        gp.AttentionDistiller(_Twice(), _Twice(), ["conv"])(x)
    with pytest.raises(LayerOutputError, match=r"\['spare'\] of the student did not run"):
        gp.AttentionDistiller(_Twice(), _Twice(), ["spare"])(x)


class _Wrapper(nn.Module):
    """A module that holds another one as a child: its parameters are the inner model's own tensors."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_teacher_sharing_parameters_with_the_student_is_refused() -> None:
    student = TinyNet()
    # copy.copy shares every parameter; freezing such a teacher would freeze the student silently.
    with pytest.raises(ValueError, match=r"shares .* parameter.*copy\.deepcopy") as err:
        gp.AttentionDistiller(copy.copy(student), student, LAYERS)
    assert "'stem.conv.weight'" in str(err.value)
    wrapper = _Wrapper(student)
    with pytest.raises(ValueError, match="shares"):
        gp.AttentionDistiller(wrapper, student, {s: f"inner.{s}" for s in LAYERS})
    # One shared layer is enough to be refused.
    teacher = TinyNet()
    teacher.stage2 = student.stage2
    with pytest.raises(ValueError, match=r"'stage2\.conv\.weight'"):
        gp.AttentionDistiller(teacher, student, LAYERS)
    assert all(p.requires_grad for p in student.parameters())  # nothing was frozen on the way
    gp.AttentionDistiller(copy.deepcopy(student), student, LAYERS).remove()


def test_loss_after_remove_says_it_was_removed() -> None:
    teacher, student = _pair()
    d = gp.AttentionDistiller(teacher, student, LAYERS)
    d(torch.randn(1, 3, 16, 16))
    d.remove()
    with pytest.raises(DistillerStateError, match=r"after remove\(\)"):
        d.loss()
