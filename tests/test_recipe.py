import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grouppruner.detection.recipe import (
    GAMMA_THRESHOLD,
    STAGES,
    RecipeConfig,
    RecipeRun,
    run_recipe,
    sparse_optimizer,
    weights_digest,
)
from grouppruner.graph import ChannelGraph
from grouppruner.sparsity import BNSparsity, Constant

pytest.importorskip("PIL")


def _config(tmp_path, **changes):
    options = dict(
        out_dir=str(tmp_path / "run"),
        num_images=24,
        image_size=64,
        width=0.125,
        depth=0.34,
        batch_size=8,
        dense_epochs=1,
        sparse_epochs=1,
        recover_epochs=1,
        finetune_epochs=0,
        target_params=0.6,
        min_channels=4,
    )
    options.update(changes)
    return RecipeConfig(**options)


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


def test_recipe_refuses_an_out_dir_of_another_configuration_before_any_work(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"config": {"out_dir": "elsewhere"}, "stages": []}))
    with pytest.raises(ValueError, match=r"results\.json"):
        run_recipe(_config(tmp_path, num_images=12))
    assert not (out / "data").exists()  # no data was generated for a refused run


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
        ("prune_by", "macs", "('params', 'gamma')"),
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
        ({"recover_epochs": 2, "finetune_epochs": 3}, "finetune_epochs"),
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


def test_recipe_recovery_distils_from_the_dense_checkpoint(tiny_run):
    config, results = tiny_run
    run = RecipeRun(config)
    recovered = results[-1]
    assert recovered.extra["teacher"] == "dense"
    assert recovered.extra["teacher_sha256"] == weights_digest(run.load("dense"))
    assert recovered.extra["teacher_sha256"] != weights_digest(run.load("sparse"))


def test_recipe_recovery_logs_non_zero_attention_and_output_terms(tiny_run):
    _, results = tiny_run
    parts = results[-1].extra["distill_loss"]
    assert parts["attention"] > 0 and parts["output"] > 0
    assert parts["output"] == pytest.approx(parts["output_cls"] + parts["output_obj"] + parts["output_box"], rel=1e-4)


def test_recipe_sparse_teacher_is_the_sparse_checkpoint(tiny_run, tmp_path):
    config, results = tiny_run
    stages = {r.stage: r.checkpoint for r in results}
    variant = dataclasses.replace(config, out_dir=str(tmp_path), teacher="sparse", recover_epochs=1, finetune_epochs=0)
    run = RecipeRun(variant, checkpoints={s: stages[s] for s in ("dense", "sparse", "pruned")})
    recovered = run.run_stage("recovered")
    assert recovered.extra["teacher_sha256"] == weights_digest(run.load("sparse"))
