"""save_pruned / load_pruned: no pickle, atomic writes, exact round trip, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import grouppruner as gp
from grouppruner.checkpoint import CheckpointError, load_pruned, read_meta, save_pruned
from grouppruner.graph import ChannelGraph
from grouppruner.pruning import GroupPruner, applied_plans
from nets import CBA, fixed_latency_model, random_detector, randomize_bn
from zoo import ResNetTiny

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


pytestmark = pytest.mark.usefixtures("one_thread")


def prune(model: nn.Module, ratio: float, **options: object) -> nn.Module:
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, min_channels=2, runtime="torch", **options)  # type: ignore[arg-type]
    return pruner.apply(pruner.plan(ratios=dict.fromkeys(pruner.layer_groups, ratio)))


def assert_same_outputs(a: nn.Module, b: nn.Module) -> None:
    with torch.no_grad():
        for x, y in zip(a.eval()(X), b.eval()(X), strict=True):
            assert torch.equal(x, y)


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = prune(random_detector(), 0.5)
    path = tmp_path / "pruned.pt"
    gp.save_pruned(model, path)
    restored = gp.load_pruned(random_detector(seed=7), path)  # other initial weights: everything comes from the file
    assert_same_outputs(model, restored)
    assert applied_plans(restored) == applied_plans(model)
    assert {k: v.shape for k, v in restored.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


PLAN_MODES = [
    ("ratios", {"ratios": 0.4}),
    ("thresholds", {"thresholds": 0.5}),
    ("target_params", {"target_params": 0.6}),
    ("target_macs", {"target_macs": 0.6}),
    ("target_latency", {"target_latency": 0.85}),
    ("target_params+latency_weight", {"target_params": 0.6, "latency_weight": 1.0}),
    ("target_macs+latency_weight", {"target_macs": 0.6, "latency_weight": 2.0}),
    ("target_latency+latency_weight", {"target_latency": 0.85, "latency_weight": 1.0}),
]


@pytest.mark.parametrize(
    "options",
    [pytest.param(o, id=n, marks=[pytest.mark.slow] if "target_latency" in o else []) for n, o in PLAN_MODES],
)  # target_latency verifies on a clock: slow
def test_every_plan_mode_saves_and_loads_into_a_fresh_model(tmp_path: Path, options: dict[str, float]) -> None:
    model = random_detector()
    randomize_bn(model, torch.Generator().manual_seed(3))
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, min_channels=2, runtime="torch")
    per_group = {"ratios", "thresholds"} & set(options)
    kwargs: dict[str, object] = dict(options)
    for mode in per_group:
        kwargs[mode] = dict.fromkeys(pruner.layer_groups, options[mode])
    if any(k.startswith("target_latency") or k == "latency_weight" for k in options):
        kwargs["latency_model"] = fixed_latency_model(model, X)
    plan = pruner.plan(**kwargs)  # type: ignore[arg-type]
    assert plan.mode == next(iter(options))
    pruner.apply(plan)
    assert plan.params_after < plan.params_before
    path = tmp_path / "pruned.pt"
    gp.save_pruned(model, path)
    restored = gp.load_pruned(random_detector(seed=11), path)
    assert_same_outputs(model, restored)
    assert applied_plans(restored) == [plan]


WRAPPERS = [nn.DataParallel, lambda m: torch.compile(m, backend="eager")]


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=["dp", "compile"])
def test_a_wrapped_model_saves_and_loads_the_model_inside(tmp_path: Path, wrapper) -> None:  # type: ignore[no-untyped-def]
    model = prune(random_detector(), 0.5)
    path = tmp_path / "pruned.pt"
    gp.save_pruned(wrapper(model), path)
    meta, state = read_meta(path)
    assert len(meta["plans"]) == 1 and meta["original_fingerprint"] != meta["pruned_fingerprint"]
    assert set(state) == set(model.state_dict())  # the inner model's keys, no "module." prefix
    restored = gp.load_pruned(random_detector(seed=7), path)
    assert_same_outputs(model, restored)
    fresh = random_detector(seed=7)
    wrapped = nn.DataParallel(fresh)
    assert gp.load_pruned(wrapped, path) is wrapped
    assert_same_outputs(model, fresh)


def test_file_is_tensors_only_and_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "pruned.pt"
    save_pruned(prune(random_detector(), 0.3), path)
    blob = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in blob.values())
    meta, state = read_meta(path)
    assert meta["format"] == "grouppruner.pruned" and len(meta["plans"]) == 1
    assert "head.0.weight" in state


def test_chained_plans_round_trip(tmp_path: Path) -> None:
    model = prune(prune(random_detector(), 0.3), 0.3, round_to=2)
    assert len(applied_plans(model)) == 2
    path = tmp_path / "twice.pt"
    save_pruned(model, path)
    assert_same_outputs(model, load_pruned(random_detector(), path))


class BareConsumer(nn.Module):
    """A bias-free consumer without BatchNorm: beta folding gives it a new bias parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = CBA(3, 8)
        self.bare = nn.Conv2d(8, 8, 1, bias=False)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bare(self.stem(x))))


def test_added_bias_round_trips(tmp_path: Path) -> None:
    def build() -> nn.Module:
        model = BareConsumer().eval()
        randomize_bn(model, torch.Generator().manual_seed(1))
        return model

    model = build()
    pruner = GroupPruner(ChannelGraph(model, X), example_inputs=X, min_channels=1, runtime="torch")
    plan = pruner.plan(ratios={"stem/s1": 0.5})
    assert plan.add_bias == ["bare"]
    pruner.apply(plan)
    path = tmp_path / "bias.pt"
    save_pruned(model, path)
    restored = load_pruned(build(), path)
    assert restored.bare.bias is not None
    assert_same_outputs(model, restored)


def test_unpruned_model_round_trips(tmp_path: Path) -> None:
    model = random_detector()
    path = tmp_path / "dense.pt"
    save_pruned(model, path)
    assert_same_outputs(model, load_pruned(random_detector(3), path))


def test_other_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "pruned.pt"
    save_pruned(prune(random_detector(), 0.5), path)
    with pytest.raises(CheckpointError, match="fingerprint") as info:
        load_pruned(ResNetTiny(), path)
    assert str(path) in str(info.value) and "ResNetTiny" in str(info.value)
    with pytest.raises(CheckpointError, match="fingerprint"):  # an already pruned model is not the original
        load_pruned(prune(random_detector(), 0.5), path)


def test_foreign_and_damaged_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not a grouppruner checkpoint"):
        load_pruned(random_detector(), plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_pruned(random_detector(), garbage)
    with pytest.raises(FileNotFoundError):
        load_pruned(random_detector(), tmp_path / "missing.pt")


def test_failed_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pruned.pt"
    save_pruned(random_detector(), path)
    before = path.read_bytes()

    def broken_save(obj: object, file: object) -> None:
        os.write(file.fileno(), b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(prune(random_detector(), 0.5), path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_write_replaces_whole_files_with_umask_permissions(tmp_path):
    import os
    import stat

    from grouppruner._utils.io import atomic_write

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as file:
        file.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left

    umask = os.umask(0o022)
    try:
        with atomic_write(target) as file:
            file.write(b"new")
    finally:
        os.umask(umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_write_removes_temporaries_left_by_a_killed_writer(tmp_path):
    from grouppruner._utils.io import atomic_write

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process has now
    stale = tmp_path / f".model.pt.{dead.pid}.abc123.tmp"  # what a writer killed mid-write leaves
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".model.pt.{os.getppid()}.def456.tmp"  # another writer of the same file, still running
    live.write_bytes(b"z")
    other = tmp_path / f".other.pt.{dead.pid}.abc123.tmp"
    other.write_bytes(b"y")
    with atomic_write(tmp_path / "model.pt") as file:
        file.write(b"new")
    assert not stale.exists()  # a dead writer's leftover of this path goes
    assert live.exists() and other.exists()  # a live writer's file and other paths' files stay
    assert (tmp_path / "model.pt").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "model.pt"])


# ----------------------------------------------------------------------------- hand-edited and damaged files


def _edit(source: Path, target: Path, edit_meta=None, edit_state=None) -> Path:  # type: ignore[no-untyped-def]
    """Copy a checkpoint with its JSON metadata and / or its tensors changed, as a hand-edited file would be."""
    blob = torch.load(source, weights_only=True)
    meta = json.loads(bytes(blob["grouppruner/meta"].tolist()).decode())
    if edit_meta is not None:
        edit_meta(meta)
    blob["grouppruner/meta"] = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
    if edit_state is not None:
        edit_state(blob)
    torch.save(blob, target)
    return target


def _fingerprint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert applied_plans(model) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(plans="all"), "'plans' must be a list"),
        (lambda m: m.update(original_fingerprint=3), "'original_fingerprint' must be a string"),
        (lambda m: m["plans"][0].update(channel_groups=5), r"plan 0.*channel_groups must be a list"),
        (lambda m: m["plans"][0].update(input_shapes="1x3x32x32"), r"plan 0.*input_shapes must be"),
        (lambda m: m["plans"][0]["channel_groups"][0].update(kept="all"), r"channel_groups\[0\]\.kept"),
        (lambda m: m["plans"][0]["channel_groups"][0].update(size=-4), r"channel_groups\[0\]\.size"),
        (lambda m: m["plans"][0].update(mode=None), r"plan 0.*mode must be one of"),
        (lambda m: m["plans"][0].pop("layer_groups"), r"plan 0.*not a valid PruningPlan"),
        (lambda m: m["plans"][0]["channel_groups"][0].update(name="nope"), r"plan 0 cannot be replayed.*'nope'"),
    ],
)
def test_hand_edited_metadata_is_a_checkpoint_error_naming_the_file(tmp_path: Path, edit, message) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.pt"
    save_pruned(prune(random_detector(), 0.5), good)
    path = _edit(good, tmp_path / "edited.pt", edit_meta=edit)
    model = random_detector(3)
    before = _fingerprint_state(model)
    with pytest.raises(CheckpointError, match=message) as info:
        load_pruned(model, path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    _assert_untouched(model, before)


def test_absurd_input_shapes_are_refused_before_allocating(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_pruned(prune(random_detector(), 0.5), good)
    path = _edit(
        good, tmp_path / "huge.pt", edit_meta=lambda m: m["plans"][0].update(input_shapes=[[1, 3, 100000, 100000]])
    )
    with pytest.raises(CheckpointError, match=r"huge\.pt.*30,000,000,000 elements.*example_inputs="):
        load_pruned(random_detector(), path)


def test_weights_that_do_not_fit_leave_the_model_untouched(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_pruned(prune(random_detector(), 0.5), good)

    def shrink(blob: dict[str, torch.Tensor]) -> None:
        blob["state/head.0.weight"] = blob["state/head.0.weight"][:, :1].clone()

    path = _edit(good, tmp_path / "shape.pt", edit_state=shrink)
    model = random_detector(3)
    before = _fingerprint_state(model)
    with pytest.raises(CheckpointError, match=r"shape\.pt.*head\.0\.weight") as info:
        load_pruned(model, path)
    assert "do not fit" in str(info.value)
    _assert_untouched(model, before)  # the replayed pruning was undone
    assert_same_outputs(model, random_detector(3))
    # The same model object still loads a good file afterwards.
    assert_same_outputs(load_pruned(model, good), load_pruned(random_detector(), good))

    missing = _edit(good, tmp_path / "missing.pt", edit_state=lambda blob: blob.pop("state/head.0.weight"))
    with pytest.raises(CheckpointError, match=r"1 missing \(head\.0\.weight\)"):
        load_pruned(random_detector(), missing)


def test_unreadable_files_say_what_is_wrong(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt.*empty \(0 bytes"):
        read_meta(empty)
    text = tmp_path / "notes.pt"
    text.write_text("hello world")
    with pytest.raises(
        CheckpointError, match=r"not a file written by torch\.save \(11 bytes, starting with b'hello wo'"
    ):
        read_meta(text)
    good = tmp_path / "good.pt"
    save_pruned(random_detector(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        read_meta(truncated)
    pickled = tmp_path / "pickled.pt"
    torch.save(nn.Linear(2, 2), pickled)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        read_meta(pickled)
    with pytest.raises(CheckpointError, match="is a directory"):
        read_meta(tmp_path)
    for path in (empty, text, truncated, pickled):
        with pytest.raises(CheckpointError) as info:
            read_meta(path)
        assert "\n" not in str(info.value)


def test_state_mismatch_lists_missing_unexpected_and_reshaped_keys() -> None:
    from grouppruner._utils.io import StateMismatch

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    state = dict(model.state_dict())
    assert StateMismatch.between(model, state).fits()
    state["0.weight"] = torch.zeros(2, 3, 1, 1)
    state["extra"] = torch.zeros(1)
    del state["1.bias"]
    mismatch = StateMismatch.between(model, state)
    assert (mismatch.missing, mismatch.unexpected) == (["1.bias"], ["extra"])
    assert mismatch.wrong == [("0.weight", (2, 3, 1, 1), (4, 3, 1, 1))]
    assert not mismatch.fits() and not mismatch.fits(strict=False)
    assert mismatch.describe() == (
        "1 missing (1.bias); 1 unexpected (extra); 1 of another shape (0.weight (2, 3, 1, 1), model (4, 3, 1, 1))"
    )
    del state["extra"], state["0.weight"]
    assert StateMismatch.between(model, state).fits(strict=False)
