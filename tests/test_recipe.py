import json

import pytest

from grouppruner.detection.recipe import STAGES, RecipeConfig, run_recipe

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
