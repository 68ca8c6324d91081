"""train_one_epoch / evaluate: step order, GradScaler unscaling, loss bookkeeping, mode handling, and a tiny
YOLOv4 overfitting generated images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from grouppruner.detection import VOCDetection, collate, evaluate, make_synthetic_voc, train_one_epoch


class _Toy(nn.Module):
    """Conv + BN producing a (N, 2, H, W) map; ``predict`` returns fixed boxes."""

    def __init__(self, boxes: list[dict[str, Tensor]] | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.num_classes = 2
        self._boxes = boxes or []
        self.modes_seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    def predict(self, images: Tensor, *, conf: float, iou: float) -> list[dict[str, Tensor]]:
        self.modes_seen.append(self.training)
        assert not torch.is_grad_enabled()
        return [self._boxes[i % len(self._boxes)] for i in range(images.shape[0])]


def _toy_loss(outputs: Tensor, targets: list[dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    a = outputs[:, 0].pow(2).mean()
    b = outputs[:, 1].abs().mean() * 0.5
    return a + b, {"a": a.detach(), "b": b.detach()}


def _batches(n: int, size: int = 8) -> list[tuple[Tensor, list[dict[str, Tensor]]]]:
    g = torch.Generator().manual_seed(1)
    target = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": torch.tensor([0])}
    return [(torch.rand(2, 3, size, size, generator=g), [target, target]) for _ in range(n)]


def test_step_order_and_loss_means() -> None:
    model = _Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _batches(3)
    events: list[str] = []

    def hook(m: nn.Module) -> None:
        # After backward (gradients exist) and before the optimizer step (weights not yet moved).
        assert m is model and m.training
        assert m.conv.weight.grad is not None and m.conv.weight.grad.abs().sum() > 0
        events.append("hook")
        before[len(events) - 1] = m.conv.weight.detach().clone()

    before: dict[int, Tensor] = {}
    expected_a, expected_b = [], []
    reference = _Toy()
    reference.load_state_dict(model.state_dict())
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for images, targets in batches[:2]:
        ref_opt.zero_grad()
        total, parts = _toy_loss(reference(images), targets)
        total.backward()
        ref_opt.step()
        expected_a.append(float(parts["a"]))
        expected_b.append(float(parts["b"]))

    model.eval()
    result = train_one_epoch(model, batches, optimizer, _toy_loss, step_hooks=(hook, hook), max_steps=2)
    assert model.training
    assert events == ["hook"] * 4
    assert result["steps"] == 2.0
    assert result["a"] == pytest.approx(sum(expected_a) / 2, rel=1e-5)
    assert result["b"] == pytest.approx(sum(expected_b) / 2, rel=1e-5)
    assert result["loss"] == pytest.approx(result["a"] + result["b"], rel=1e-5)
    # The hooks saw the weights of the step they ran in; the optimizer then moved them.
    assert not torch.equal(before[1], before[3])
    torch.testing.assert_close(model.conv.weight, reference.conv.weight)


def test_hooks_see_unscaled_gradients_under_grad_scaler() -> None:
    seen: dict[str, Tensor] = {}

    def record(key: str):
        def hook(m: nn.Module) -> None:
            seen[key] = m.bn.weight.grad.detach().clone()

        return hook

    torch.manual_seed(0)
    plain = _Toy()
    scaled = _Toy()
    scaled.load_state_dict(plain.state_dict())
    batches = _batches(1)
    train_one_epoch(plain, batches, torch.optim.SGD(plain.parameters(), lr=0.0), _toy_loss,
                    step_hooks=[record("plain")])  # fmt: skip
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    train_one_epoch(scaled, batches, torch.optim.SGD(scaled.parameters(), lr=0.0), _toy_loss, scaler=scaler,
                    step_hooks=[record("scaled")])  # fmt: skip
    # bf16 autocast changes the numbers a little; a missing unscale_ would be off by a factor 1024.
    torch.testing.assert_close(seen["scaled"], seen["plain"], rtol=5e-2, atol=1e-3)


def test_non_finite_loss_and_empty_loader() -> None:
    model = _Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def nan_loss(outputs: Tensor, targets: list[dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        total = outputs.mean() * float("nan")
        return total, {"x": total.detach()}

    weight = model.conv.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="step 0"):
        train_one_epoch(model, _batches(1), optimizer, nan_loss)
    assert torch.equal(model.conv.weight, weight)
    with pytest.raises(ValueError, match="no batch"):
        train_one_epoch(model, [], optimizer, _toy_loss)


def test_evaluate_scores_predictions_and_restores_mode() -> None:
    perfect = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "scores": torch.tensor([0.9]),
               "labels": torch.tensor([0])}  # fmt: skip
    wrong = {"boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0]]), "scores": torch.tensor([0.9]),
             "labels": torch.tensor([0])}  # fmt: skip
    batches = _batches(2)
    for training in (True, False):
        model = _Toy([perfect])
        model.train(training)
        res = evaluate(model, batches)
        assert model.training is training
        assert model.modes_seen == [False, False]
        assert res["map"] == pytest.approx(1.0) and res["images"] == 4 and set(res["ap"]) == {0}
    half = evaluate(_Toy([perfect, wrong]), batches)
    # Images alternate perfect / wrong at equal scores; the stable order gives TP FP TP FP over 4 objects:
    # recall .25 .25 .5 .5, precision 1 .5 2/3 .5 -> AP = .25 * 1 + .25 * 2/3.
    assert half["ap"][0] == pytest.approx(0.25 + 0.25 * 2 / 3)
    assert evaluate(_Toy([perfect]), batches, max_steps=1)["images"] == 2
    with pytest.raises(TypeError, match="no predict"):
        evaluate(nn.Conv2d(3, 2, 1), batches)


def test_images_are_cast_to_the_models_dtype() -> None:
    model = _Toy().double()
    dtypes: list[torch.dtype] = []
    model.conv.register_forward_pre_hook(lambda m, args: dtypes.append(args[0].dtype))
    before = model.conv.weight.detach().clone()
    result = train_one_epoch(model, _batches(2), torch.optim.SGD(model.parameters(), lr=0.1), _toy_loss)
    assert result["steps"] == 2 and not torch.equal(model.conv.weight, before)
    assert dtypes == [torch.float64] * 2  # float32 images, float64 model: no dtype error in training

    def predict(images: Tensor, *, conf: float, iou: float) -> list[dict[str, Tensor]]:
        dtypes.append(model(images).dtype)
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}] * len(images)

    model.predict = predict  # type: ignore[method-assign]
    evaluate(model, _batches(1))
    assert dtypes == [torch.float64] * 4  # and in evaluation (the pre-hook and predict's output)


@pytest.mark.slow  # about 8 CPU seconds, longer on a busy machine
def test_tiny_yolov4_overfits_generated_images(tmp_path: Path) -> None:
    from grouppruner.detection import DEFAULT_ANCHORS, YoloLoss, yolov4

    data = make_synthetic_voc(tmp_path, 8, image_size=64, seed=0, max_objects=3, min_size=12, clutter=3,
                              noise=0.03, hue_spread=40.0, split_fractions=(1.0, 0.0, 0.0))  # fmt: skip
    dataset = VOCDetection(data.root, "train", 64, classes=data.classes)
    assert len(dataset) == 8
    batch = [collate([dataset[i] for i in range(8)])]
    # yolov4.cfg anchors are for 416 px inputs; scale them to 64 px.
    model = yolov4(len(data.classes), width=0.125, depth=0.34, anchors=torch.tensor(DEFAULT_ANCHORS) * 64 / 416)
    loss_fn = YoloLoss(len(data.classes), anchors=model.anchors)
    steps = 100
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps, pct_start=0.15)
    losses = []
    # One thread: many tiny convolutions, where a second thread mostly waits (and spins on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            parts = train_one_epoch(model, batch, optimizer, loss_fn)
            schedule.step()
            assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
            losses.append(parts["loss"])
    finally:
        torch.set_num_threads(threads)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    result = evaluate(model, batch, conf=0.001, iou=0.5)
    assert model.training
    assert result["images"] == 8 and set(result["ap"]) == set(range(len(data.classes))) - set(result["absent"])
    assert result["map"] >= 0.9, result
