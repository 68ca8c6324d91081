import copy
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grouppruner.checkpoint import CheckpointError
from grouppruner.detection import yolov4
from grouppruner.graph import ChannelGraph
from grouppruner.pruning import weights_digest
from grouppruner.recipe import (
    STAGE_OF_OPTION,
    STAGES,
    RecipeConfig,
    RecipeRun,
    first_changed_stage,
    load_weights,
    run_recipe,
    sparse_optimizer,
)
from grouppruner.recipe.config import GAMMA_THRESHOLD, recorded_options
from grouppruner.sparsity import BNSparsity, Constant
from runs import tiny_recipe_config

pytest.importorskip("PIL")


def _config(tmp_path, **changes):
    return tiny_recipe_config(**{"out_dir": tmp_path / "run", **changes})


@pytest.mark.slow
def test_recipe_runs_every_stage_prunes_to_budget_and_resumes(tmp_path):
    config = _config(tmp_path)
    results = run_recipe(config)
    assert [r.stage for r in results] == list(STAGES)
    dense, sparse, pruned, recovered = results
    assert dense.params == sparse.params
    # the budget holds within 1 % of the original parameters, and recovery keeps the pruned structure
    assert abs(pruned.params / dense.params - 0.6) <= 0.01
    assert recovered.params == pruned.params and recovered.macs == pruned.macs
    assert pruned.macs < dense.macs
    assert all(0.0 <= r.map50 <= 1.0 for r in results)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [s["stage"] for s in saved["stages"]] == list(STAGES)

    # Resume: finished stages are not run again (their checkpoints stay untouched) ...
    mtimes = {s: (tmp_path / "run" / f"{s}.pt").stat().st_mtime_ns for s in STAGES}
    again = run_recipe(config)
    assert [r.map50 for r in again] == [r.map50 for r in results]
    assert mtimes == {s: (tmp_path / "run" / f"{s}.pt").stat().st_mtime_ns for s in STAGES}

    # ... and a lost checkpoint reruns that stage and the ones after it only.
    (tmp_path / "run" / "recovered.pt").unlink()
    rerun = run_recipe(config)
    assert [r.stage for r in rerun] == list(STAGES)
    assert (tmp_path / "run" / "recovered.pt").is_file()
    for stage in ("dense", "sparse", "pruned"):
        assert (tmp_path / "run" / f"{stage}.pt").stat().st_mtime_ns == mtimes[stage]


def test_recipe_refuses_a_broken_results_json_or_a_file_before_any_work(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"config": {"out_dir": "elsewhere"}, "stages": "none"}))
    with pytest.raises(ValueError, match=r"results\.json: not a recipe result"):
        run_recipe(_config(tmp_path, num_images=18))
    assert not (out / "data").exists()  # no data was generated for a refused run
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        run_recipe(_config(tmp_path, out_dir=str(tmp_path / "file")))


def test_every_option_belongs_to_a_stage():
    options = {f.name for f in dataclasses.fields(RecipeConfig)} - {"out_dir", "device"}
    assert options == set(STAGE_OF_OPTION)
    assert set(STAGE_OF_OPTION.values()) == set(STAGES)
    base = _config(Path("x"))
    saved = json.loads(json.dumps(dataclasses.asdict(base)))
    assert first_changed_stage(saved, base) is None
    assert first_changed_stage(saved, dataclasses.replace(base, out_dir="elsewhere")) is None
    assert first_changed_stage(saved, dataclasses.replace(base, target_params=0.5, recover_epochs=3)) == "pruned"
    assert first_changed_stage({**saved, "unknown": 1}, base) == "dense"
    older = {k: v for k, v in saved.items() if k != "target_params"}  # written before the option existed
    assert first_changed_stage(older, dataclasses.replace(base, target_params=RecipeConfig.target_params)) is None
    assert first_changed_stage(older, base) == "pruned"  # the option was set away from its default
    assert first_changed_stage(saved, dataclasses.replace(base, device="auto")) is None  # resumes elsewhere


def test_a_darknet_cfg_is_recorded_by_content_so_an_edit_in_place_reruns(tmp_path):
    from darknet_files import DATA

    cfg = tmp_path / "model.cfg"
    cfg.write_text((DATA / "yolov4-tiny.cfg").read_text())
    config = _config(tmp_path, cfg=str(cfg))
    saved = json.loads(json.dumps(recorded_options(config)))
    assert len(saved["cfg_sha256"]) == 64
    assert first_changed_stage(saved, config) is None
    cfg.write_text(cfg.read_text().replace("filters=64", "filters=48", 1))  # same path, other model
    assert first_changed_stage(saved, config) == "dense"
    del saved["cfg_sha256"]  # a results.json written before the cfg was recorded by content: compared by path
    assert first_changed_stage(saved, config) is None


# ----------------------------------------------------------------------------- the recipe's choices, tiny settings


class _HalfUsedBN(nn.Module):
    """conv -> BN(16) -> ReLU -> 1x1 head that reads only channels 0-7: channels 8-15 get no task gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 16, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 1, 1)
        self.register_buffer("used", (torch.arange(16) < 8).float().view(1, 16, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(torch.relu(self.bn(self.conv(x))), self.head.weight * self.used, self.head.bias)


@pytest.mark.slow
def test_recipe_sparse_optimizer_drives_exactly_the_unused_gammas_under_the_threshold():
    torch.manual_seed(0)
    # The "trained dense model" is the target itself: removing a used channel costs loss, an unused one nothing.
    target_net = _HalfUsedBN()
    with torch.no_grad():
        target_net.head.weight.fill_(1.0)
    model = copy.deepcopy(target_net)
    sparsity = BNSparsity(model, schedule=Constant(0.02))
    optimizer = sparse_optimizer(model, "sgd", 0.05)
    x = torch.randn(64, 4, 4, 4)
    with torch.no_grad():
        y = target_net(x)
    # 300 steps pull an unused gamma by lr * s * 300 / (1 - momentum) = 3, far more than its initial 1
    for _ in range(300):
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        sparsity.step()
        optimizer.step()
    gamma = model.bn.weight.detach().abs()
    assert (gamma[8:] < GAMMA_THRESHOLD).all(), gamma[8:]
    assert (gamma[:8] > 10 * GAMMA_THRESHOLD).all(), gamma[:8]  # the task keeps the channels it uses
    assert sparsity.stats(threshold=GAMMA_THRESHOLD)["all"].below == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("sparse_optimizer", "adam", "('sgd', 'adamw')"),
        ("teacher", "student", "('dense', 'sparse')"),
        ("sparsity_schedule", "linear", "('dynamic', 'constant')"),
        ("prune_scope", "layer", "('group', 'global')"),
        ("prune_by", "flops", "('params', 'macs', 'latency', 'gamma')"),
        ("sparsity_scope", "layer", "('global', 'group')"),
    ],
)
def test_recipe_config_names_the_field_and_the_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match="RecipeConfig." + field) as error:
        RecipeConfig(out_dir="x", **{field: value})
    assert allowed in str(error.value) and repr(value) in str(error.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\)"),
        ({"target_params": 0.0}, r"target_params must be in \(0, 1\]"),
        ({"sparsity": -1e-3}, "sparsity must be >= 0"),
        ({"sparsity_keep": 0.0}, r"sparsity_keep must be in \(0, 1\]"),
        ({"sparsity_warmup": 1.5}, r"sparsity_warmup must be in \[0, 1\]"),
        ({"recover_epochs": 2, "finetune_epochs": 3}, "finetune_epochs"),
        ({"recover_epochs": 4, "finetune_epochs": 2, "distill_off_epochs": 3}, r"finetune_epochs \+ distill_off"),
        ({"search_candidates": 4, "prune_by": "gamma"}, "search_candidates=4 .* needs prune_by='params', 'macs'"),
        ({"target_macs": 1.5}, r"target_macs must be in \(0, 1\]"),
        ({"target_latency": 0.0}, r"target_latency must be in \(0, 1\]"),
        ({"search_candidates": -1}, "search_candidates must be >= 0"),
    ],
)
def test_recipe_config_rejects_out_of_range_values(changes, message):
    with pytest.raises(ValueError, match=message):
        RecipeConfig(out_dir="x", **changes)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("recipe")
    config = _config(tmp_path, recover_epochs=2, finetune_epochs=1, sparsity=0.05, sparse_lr=0.05)
    return config, run_recipe(config)


@pytest.mark.slow
def test_recipe_records_the_fraction_of_small_gammas_per_layer_group(tiny_run):
    config, results = tiny_run
    sparse = results[1]
    below = sparse.extra["below_threshold"]
    assert sparse.extra["gamma_threshold"] == GAMMA_THRESHOLD
    assert set(below) == set(sparse.extra["sparsity"]) and len(below) >= 3
    # the same numbers, recomputed from the saved sparse checkpoint
    model = RecipeRun(config).load("sparse")
    graph = ChannelGraph(model, torch.zeros(1, 3, config.image_size, config.image_size))
    recomputed = BNSparsity(graph, schedule=0.0).stats(threshold=GAMMA_THRESHOLD)
    assert below == pytest.approx({name: s.below for name, s in recomputed.items()})


@pytest.mark.slow
def test_recipe_recovery_distils_from_the_dense_checkpoint(tiny_run):
    config, results = tiny_run
    run = RecipeRun(config)
    recovered = results[-1]
    assert recovered.extra["teacher"] == "dense"
    assert recovered.extra["teacher_sha256"] == weights_digest(run.load("dense"))
    assert recovered.extra["teacher_sha256"] != weights_digest(run.load("sparse"))


@pytest.mark.slow
def test_recipe_recovery_logs_non_zero_attention_and_output_terms(tiny_run):
    _, results = tiny_run
    parts = results[-1].extra["distill_loss"]
    assert parts["attention"] > 0 and parts["output"] > 0
    assert parts["output"] == pytest.approx(parts["output_cls"] + parts["output_obj"] + parts["output_box"], rel=1e-4)


@pytest.mark.slow
def test_recipe_sparse_teacher_is_the_sparse_checkpoint(tiny_run, tmp_path):
    config, results = tiny_run
    stages = {r.stage: r.checkpoint for r in results}
    variant = dataclasses.replace(config, out_dir=str(tmp_path), teacher="sparse", recover_epochs=1, finetune_epochs=0)
    run = RecipeRun(variant, checkpoints={s: stages[s] for s in ("dense", "sparse", "pruned")})
    recovered = run.run_stage("recovered")
    assert recovered.extra["teacher_sha256"] == weights_digest(run.load("sparse"))


@pytest.mark.slow
def test_changed_options_rerun_only_the_stages_they_affect(tiny_run, tmp_path):
    config, results = tiny_run
    shutil.copytree(config.out_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("data"))
    changed = dataclasses.replace(config, out_dir=str(tmp_path / "copy"), data_root=None)
    shutil.copytree(Path(config.out_dir) / "data", tmp_path / "copy" / "data")
    mtimes = {s: (tmp_path / "copy" / f"{s}.pt").stat().st_mtime_ns for s in STAGES}
    rerun = run_recipe(dataclasses.replace(changed, recover_epochs=1, finetune_epochs=0))
    assert [r.map50 for r in rerun[:3]] == [r.map50 for r in results[:3]]
    for stage in ("dense", "sparse", "pruned"):
        assert (tmp_path / "copy" / f"{stage}.pt").stat().st_mtime_ns == mtimes[stage]
    assert (tmp_path / "copy" / "recovered.pt").stat().st_mtime_ns != mtimes["recovered"]
    assert "distill_loss" in rerun[-1].extra and "finetune_loss" not in rerun[-1].extra


@pytest.mark.slow
def test_weights_load_a_state_dict_or_a_pruned_file_and_refuse_another_variant(tiny_run, tmp_path):
    config, _ = tiny_run
    run = RecipeRun(config)
    dense = run.load("dense")
    torch.save(dense.state_dict(), tmp_path / "dense_state.pt")
    fresh = run.new_model()
    load_weights(fresh, tmp_path / "dense_state.pt")
    assert weights_digest(fresh) == weights_digest(dense)
    pruned_into = run.new_model()
    load_weights(pruned_into, run.out / "pruned.pt")
    assert weights_digest(pruned_into) == weights_digest(run.load("pruned"))
    other = yolov4(3, width=config.width, depth=config.depth)
    with pytest.raises(CheckpointError, match=r"dense_state\.pt: does not fit .* heads predict 6 classes, the model 3"):
        load_weights(other, tmp_path / "dense_state.pt")
    narrower = yolov4(len(config.classes), width=config.width / 2, depth=config.depth)  # as many classes, another width
    with pytest.raises(CheckpointError, match=r"its heads read \d+ channels, the model.s \d+: a model of another"):
        load_weights(narrower, tmp_path / "dense_state.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"junk\.pt: cannot be read"):
        load_weights(other, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match=r"RecipeConfig\.weights: no such file"):
        _config(tmp_path, weights=str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_recipe_from_user_weights_skips_dense_training(tiny_run, tmp_path):
    config, results = tiny_run
    torch.save(RecipeRun(config).load("dense").state_dict(), tmp_path / "teacher.pt")
    run = RecipeRun(
        dataclasses.replace(config, out_dir=str(tmp_path / "run"), weights=str(tmp_path / "teacher.pt"), dense_epochs=5)
    )
    dense = run.run_stage("dense")
    assert dense.map50 == pytest.approx(results[0].map50) and dense.params == results[0].params
    assert dense.extra["weights"] == str(tmp_path / "teacher.pt") and "train_loss" not in dense.extra


_KILL_AFTER_EPOCH = """
import sys
from grouppruner.recipe import RecipeConfig, run_recipe
run_recipe(RecipeConfig(**eval(sys.argv[1])))
"""


@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_to_the_uninterrupted_result(tmp_path):
    options = dataclasses.asdict(
        _config(tmp_path, out_dir=str(tmp_path / "straight"), sparse_epochs=3, recover_epochs=2, finetune_epochs=1)
    )
    straight = run_recipe(RecipeConfig(**options))
    killed = {**options, "out_dir": str(tmp_path / "killed")}
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-c", _KILL_AFTER_EPOCH, repr(killed)], env=env)
    state = tmp_path / "killed" / "sparse.epoch.pt"
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()  # SIGKILL, mid sparse stage: after its first epoch
    process.wait()
    assert state.exists() and not (tmp_path / "killed" / "sparse.pt").exists()
    resumed = run_recipe(RecipeConfig(**killed))
    assert [r.map50 for r in resumed] == pytest.approx([r.map50 for r in straight], abs=1e-6)
    assert [r.params for r in resumed] == [r.params for r in straight]
    a = torch.load(tmp_path / "straight" / "recovered.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "recovered.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert not list((tmp_path / "killed").glob("*.epoch.pt"))  # state files go once their stage is done


@pytest.mark.slow
def test_bf16_autocast_trains_in_bfloat16_and_fp16_needs_cuda(tmp_path):
    config = _config(tmp_path, amp="bf16")
    run = RecipeRun(config)
    model = run.new_model()
    dtypes = []
    model.backbone.stem.conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = run.train(model, optimizer, 1, "amp-check")
    assert dtypes and set(dtypes) == {torch.bfloat16} and loss["loss"] == loss["loss"]  # not NaN
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 weights
    with pytest.raises(ValueError, match="amp='fp16' needs CUDA"):
        RecipeRun(_config(tmp_path / "fp16", amp="fp16"))
    assert not (tmp_path / "fp16").exists()  # refused before any work
    with pytest.raises(ValueError, match=r"RecipeConfig\.device must be"):
        _config(tmp_path, device="gpu")
    with pytest.raises(ValueError, match=r"RecipeConfig\.amp must be one of"):
        _config(tmp_path, amp="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            RecipeRun(_config(tmp_path / "cuda", device="cuda"))


# ------------------------------------------------------------------- the run folder: epoch states, files, moves, lock


def _beside(config, tmp_path, **changes):
    """A run in ``tmp_path/r`` on the data of ``config``'s run folder."""
    data = str(Path(config.out_dir) / "data")
    return dataclasses.replace(config, out_dir=str(tmp_path / "r"), data_root=data, **changes)


def _train(run, epochs, stage="sparse"):
    model = run.new_model()
    return run.train(model, torch.optim.SGD(model.parameters(), lr=1e-3), epochs, stage)


@pytest.mark.slow
def test_an_epoch_state_of_other_options_or_epochs_is_discarded_not_resumed(tiny_run, tmp_path, caplog):
    config, _ = tiny_run
    caplog.set_level("INFO")
    run = RecipeRun(_beside(config, tmp_path))
    _train(run, 2)  # leaves sparse.epoch.pt after epoch 2 (run_stage would remove it)
    caplog.clear()
    _train(run, 1)  # the stage shortened to 1 epoch: never "resuming after epoch 2/1"
    assert "resuming after" not in caplog.text and "made with other options" in caplog.text
    assert "sparse: epoch 1/1" in caplog.text
    caplog.clear()
    _train(run, 1)  # the state just written, same options: resumed
    assert "resuming after epoch 1/1" in caplog.text
    caplog.clear()
    _train(RecipeRun(_beside(config, tmp_path, sparsity=0.2)), 1)  # an option of this stage changed
    assert "resuming after" not in caplog.text and "sparse: epoch state discarded, not resumed" in caplog.text
    caplog.clear()
    _train(RecipeRun(_beside(config, tmp_path, sparsity=0.2, recover_lr=1e-3)), 1)  # a later stage's option only
    assert "resuming after epoch 1/1" in caplog.text


@pytest.mark.slow
def test_discard_epoch_states_removes_what_train_left_and_nothing_else(tiny_run, tmp_path):
    config, _ = tiny_run
    run = RecipeRun(_beside(config, tmp_path))
    run.prepare()
    other = tmp_path / "r" / "dense.epoch.pt"  # not written by this run's train(): stays
    other.write_bytes(b"state")
    _train(run, 1, "sparse")
    _train(run, 1, "tp fine-tune")
    assert sorted(p.name for p in (tmp_path / "r").glob("*.epoch.pt")) == [
        "dense.epoch.pt",
        "sparse.epoch.pt",
        "tp-fine-tune.epoch.pt",
    ]
    run.discard_epoch_states()
    assert [p.name for p in (tmp_path / "r").glob("*.epoch.pt")] == ["dense.epoch.pt"]


def test_a_rerun_stage_discards_its_epoch_states_and_those_of_later_stages(tmp_path):
    from grouppruner.recipe.run import _discard_stale_epoch_states

    names = ("dense.epoch.pt", "sparse.epoch.pt", "recovered-fine-tune.epoch.pt", "recovered-distill.epoch.pt")

    def left(done, changed):
        for name in names:
            (tmp_path / name).write_bytes(b"state")
        _discard_stale_epoch_states(tmp_path, dict.fromkeys(done), changed)
        return sorted(p.name for p in tmp_path.glob("*.epoch.pt"))

    # sparse was interrupted with the same options: it resumes; states of later stages go
    assert left(["dense"], None) == ["dense.epoch.pt", "sparse.epoch.pt"]
    # sparse's options changed: its own state goes too
    assert left(["dense"], "sparse") == ["dense.epoch.pt"]
    # dense reruns (e.g. a damaged checkpoint) with a later stage's options changed: every later state goes
    assert left([], "recovered") == ["dense.epoch.pt"]


@pytest.mark.slow
def test_a_run_killed_in_the_sparse_stage_and_rerun_with_another_rate_starts_the_stage_afresh(
    tiny_run, tmp_path, monkeypatch, caplog
):
    from grouppruner.resume import TrainingState

    config, _ = tiny_run
    shutil.copytree(config.out_dir, tmp_path / "copy")
    copy = dataclasses.replace(config, out_dir=str(tmp_path / "copy"), sparse_epochs=3)
    save = TrainingState.save

    def killed_after_one_sparse_epoch(state, path, epoch):
        save(state, path, epoch)
        if Path(path).name == "sparse.epoch.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingState, "save", killed_after_one_sparse_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(copy)
    monkeypatch.setattr(TrainingState, "save", save)
    assert (tmp_path / "copy" / "sparse.epoch.pt").is_file()
    caplog.set_level("INFO")
    results = run_recipe(dataclasses.replace(copy, sparsity=0.2))
    assert "options changed since the last run (sparse_epochs, sparsity): rerunning from sparse" in caplog.text
    assert "discarding sparse.epoch.pt" in caplog.text and "resuming after" not in caplog.text
    assert caplog.text.count("sparse: epoch ") == 3
    assert json.loads((tmp_path / "copy" / "results.json").read_text())["config"]["sparsity"] == 0.2
    assert [r.stage for r in results] == list(STAGES)


@pytest.mark.slow
def test_a_damaged_stage_file_is_not_done_earlier(tiny_run, tmp_path, caplog):
    from grouppruner.recipe.run import _finished_stages

    config, _ = tiny_run
    shutil.copytree(config.out_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("data"))
    copy = dataclasses.replace(config, out_dir=str(tmp_path / "copy"))
    assert list(_finished_stages(tmp_path / "copy", copy)[0]) == list(STAGES)
    sparse = tmp_path / "copy" / "sparse.pt"
    data = bytearray(sparse.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    sparse.write_bytes(bytes(data))
    assert list(_finished_stages(tmp_path / "copy", copy)[0]) == ["dense"]
    assert f"sparse: {sparse} differs from the file written then (its SHA-256 changed" in caplog.text


@pytest.mark.slow
def test_a_truncated_stage_checkpoint_reruns_that_stage_with_a_warning(tiny_run, tmp_path, caplog):
    config, results = tiny_run
    shutil.copytree(config.out_dir, tmp_path / "copy")
    copy = dataclasses.replace(config, out_dir=str(tmp_path / "copy"))
    mtimes = {s: (tmp_path / "copy" / f"{s}.pt").stat().st_mtime_ns for s in STAGES}
    recovered = tmp_path / "copy" / "recovered.pt"
    recovered.write_bytes(recovered.read_bytes()[:-100])
    rerun = run_recipe(copy)
    assert f"recovered: {recovered} has" in caplog.text and "running the stage again" in caplog.text
    assert recovered.stat().st_mtime_ns != mtimes["recovered"]
    assert rerun[-1].map50 == pytest.approx(results[-1].map50, abs=1e-6)
    for stage in ("dense", "sparse", "pruned"):
        assert (tmp_path / "copy" / f"{stage}.pt").stat().st_mtime_ns == mtimes[stage]
    saved = json.loads((tmp_path / "copy" / "results.json").read_text())
    size = recovered.stat().st_size
    assert saved["stages"][-1]["files"] == [{"path": "recovered.pt", "bytes": size, "sha256": ANY_SHA256}]


class _AnySha256:
    def __eq__(self, other):
        return isinstance(other, str) and len(other) == 64 and all(c in "0123456789abcdef" for c in other)


ANY_SHA256 = _AnySha256()


@pytest.mark.slow
def test_a_moved_run_folder_resumes_where_it_is(tiny_run, tmp_path, monkeypatch, caplog):
    config, results = tiny_run
    saved = json.loads((Path(config.out_dir) / "results.json").read_text())
    assert [s["checkpoint"] for s in saved["stages"]] == [f"{s}.pt" for s in STAGES]  # relative to the folder
    shutil.copytree(config.out_dir, tmp_path / "a")
    shutil.move(tmp_path / "a", tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO")
    again = run_recipe(dataclasses.replace(config, out_dir="b"))
    assert caplog.text.count("done earlier") == 4
    assert [r.checkpoint for r in again] == [str(Path("b") / f"{s}.pt") for s in STAGES]
    assert [r.map50 for r in again] == [r.map50 for r in results]


def test_the_same_data_path_written_relative_or_absolute_is_the_same_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x" / "data").mkdir(parents=True)
    base = _config(tmp_path, data_root="runs/x/data")
    saved = json.loads(json.dumps(dataclasses.asdict(base)))
    absolute = dataclasses.replace(base, data_root=str(tmp_path / "runs" / "x" / "data"))
    assert first_changed_stage(saved, absolute) is None
    assert first_changed_stage(saved, dataclasses.replace(base, data_root="runs/x/../x/data")) is None
    (tmp_path / "other").mkdir()
    assert first_changed_stage(saved, dataclasses.replace(base, data_root="other")) == "dense"


@pytest.mark.slow
def test_a_second_run_on_a_locked_folder_is_refused_before_any_work(tmp_path):
    import signal

    from grouppruner._utils.errors import UsageError
    from runs import lock_holder

    holder = lock_holder(tmp_path / "run", 60)
    try:
        with pytest.raises(UsageError, match=rf"run: in use by another grouppruner run \(pid {holder.pid} on"):
            run_recipe(_config(tmp_path))
        assert not (tmp_path / "run" / "data").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.mark.slow
def test_a_damaged_image_stops_the_run_before_any_stage(tiny_run, tmp_path):
    from grouppruner.detection.data import VOCDataError

    config, _ = tiny_run
    shutil.copytree(Path(config.out_dir) / "data", tmp_path / "data")
    run = RecipeRun(dataclasses.replace(config, out_dir=str(tmp_path / "r"), data_root=str(tmp_path / "data")))
    run.prepare()
    checked = json.loads((tmp_path / "r" / ".images-checked.json").read_text())
    assert len(checked) == config.num_images  # every image of train and val decoded once, and remembered
    image = run.train_loader.dataset.image_paths[-1]
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])  # a truncated JPEG
    with pytest.raises(VOCDataError, match=rf"{image}: cannot read image \(image file is truncated"):
        RecipeRun(dataclasses.replace(config, out_dir=str(tmp_path / "r"), data_root=str(tmp_path / "data"))).prepare()


@pytest.mark.slow
def test_recipe_searches_the_plan_and_switches_distillation_off_at_the_end(tiny_run, tmp_path, caplog):
    config, results = tiny_run
    caplog.set_level("INFO")
    stages = {r.stage: r.checkpoint for r in results}
    variant = _beside(config, tmp_path, search_candidates=3, recover_epochs=3, finetune_epochs=1, distill_off_epochs=1)
    run = RecipeRun(variant, checkpoints={s: stages[s] for s in ("dense", "sparse")})
    pruned = run.run_stage("pruned")
    search = pruned.extra["search"]
    assert list(search["scores"])[:2] == ["0:solver", "1:uniform"] and len(search["scores"]) == 3
    assert search["chosen"] == max(
        (i for i, v in enumerate(search["scores"].values()) if v is not None),
        key=lambda i: (list(search["scores"].values())[i], -i),
    )
    assert abs(pruned.params / results[1].params - variant.target_params) <= 0.01 * variant.target_params
    assert len(json.loads((Path(variant.out_dir) / "search.json").read_text())["records"]) == 3
    assert "plan search: candidate" in caplog.text
    recovered = run.run_stage("recovered")
    ratios = recovered.extra["gradient_ratio"]
    assert set(ratios) == {"attention", "output"} and all(v > 0 for v in ratios.values())
    assert "gradient norm against the detection loss's: attention x" in caplog.text
    assert "recovered (distillation off)" in caplog.text


@pytest.mark.slow
def test_recipe_prunes_to_a_macs_or_a_measured_latency_budget_and_searches_either(tiny_run, tmp_path):
    config, results = tiny_run
    stages = {r.stage: r.checkpoint for r in results}
    inputs = {s: stages[s] for s in ("dense", "sparse")}
    sparse = results[1]
    by_macs = _beside(config, tmp_path / "macs", prune_by="macs", target_macs=0.5, search_candidates=2)
    pruned = RecipeRun(by_macs, checkpoints=inputs).run_stage("pruned")
    assert abs(pruned.macs / sparse.macs - 0.5) <= 0.01 * 0.5
    assert len(pruned.extra["search"]["scores"]) == 2 and "latency" not in pruned.extra
    # a tiny model: its latency is mostly fixed overhead, so what is reachable depends on the machine (0.69 on CI)
    by_latency = _beside(config, tmp_path / "latency", prune_by="latency", target_latency=0.85, runtime="torch")
    pruned = RecipeRun(by_latency, checkpoints=inputs).run_stage("pruned")
    measured = pruned.extra["latency"]
    assert measured["runtime"] == "torch" and 0.0 < measured["ratio"] < 1.0
    assert pruned.macs < sparse.macs
