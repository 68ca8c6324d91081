"""Recipe configuration files (TOML): every key and type checked, flags override the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from grouppruner.recipe import RecipeConfig
from grouppruner.recipe.config_file import load_recipe_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_file_values_then_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, 'out_dir = "runs/a"\nclasses = ["cat", "dog"]\nimage_size = 96\nwidth = 1\n')
    config = load_recipe_config(path, overrides={"image_size": 64, "seed": None})
    assert config == RecipeConfig(out_dir="runs/a", classes=("cat", "dog"), image_size=64, width=1.0)
    assert isinstance(config.width, float) and config.seed == 0
    assert load_recipe_config(overrides={"out_dir": "x"}) == RecipeConfig(out_dir="x")


def test_runtime_option_defaults_to_onnxruntime_and_is_checked() -> None:
    assert RecipeConfig(out_dir="x").runtime == "onnxruntime"
    assert load_recipe_config(overrides={"out_dir": "x", "runtime": "torch"}).runtime == "torch"
    with pytest.raises(ValueError, match=r"RecipeConfig.runtime must be one of \('onnxruntime', 'torch'\)"):
        load_recipe_config(overrides={"out_dir": "x", "runtime": "tensorrt"})


def test_the_budget_follows_prune_by() -> None:
    assert RecipeConfig(out_dir="x").budget == {"target_params": 0.35}
    assert RecipeConfig(out_dir="x", prune_by="macs", target_macs=0.4).budget == {"target_macs": 0.4}
    assert RecipeConfig(out_dir="x", prune_by="latency").budget == {"target_latency": 0.5}
    assert RecipeConfig(out_dir="x", prune_by="gamma").budget == {}


def test_unknown_key_names_file_key_and_close_fields(tmp_path: Path) -> None:
    path = _write(tmp_path, 'out_dir = "x"\nimage_sise = 96\n')
    with pytest.raises(ValueError, match=r"recipe\.toml: unknown option 'image_sise'; close matches: 'image_size'"):
        load_recipe_config(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("image_size = 9.5", r"option 'image_size' must be an integer, got 9\.5"),
        ("image_size = true", r"option 'image_size' must be an integer, got True"),
        ('width = "wide"', r"option 'width' must be a number, got 'wide'"),
        ("classes = [1, 2]", r"option 'classes' must be a list of str"),
        ("round_to = 2.0", r"option 'round_to' must be an integer or unset"),
    ],
)
def test_wrong_types_name_the_field_and_the_type(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_recipe_config(_write(tmp_path, f'out_dir = "x"\n{line}\n'))


def test_missing_file_bad_toml_and_missing_out_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.toml: config file not found"):
        load_recipe_config(tmp_path / "nothere.toml")
    with pytest.raises(ValueError, match=r"recipe\.toml: not a valid TOML file"):
        load_recipe_config(_write(tmp_path, "image_size = = 3"))
    with pytest.raises(ValueError, match="missing required option"):
        load_recipe_config(_write(tmp_path, "image_size = 64"))


def test_the_docs_option_table_is_current() -> None:
    from grouppruner.recipe.config_file import config_reference

    page = (Path(__file__).parents[1] / "docs" / "guides" / "compress.md").read_text(encoding="utf-8")
    table = page.split("<!-- options: begin -->\n", 1)[1].split("\n<!-- options: end -->", 1)[0]
    assert table == config_reference(), "run `python docs/make_config_reference.py`"
    for name in ("weights", "sparse_optimizer", "target_params"):
        assert f"| `{name}` |" in table


def test_options_added_later_keep_the_fingerprint_of_older_epoch_states_at_their_default() -> None:
    import dataclasses
    import hashlib
    import json

    from grouppruner.recipe.config import stage_fingerprint

    config = RecipeConfig(out_dir="x")
    # what the fingerprint covered before target_macs / target_latency / channel_distill_weight existed
    options = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(config))).items()}
    for key in ("out_dir", "device", "target_macs", "target_latency", "channel_distill_weight"):
        options.pop(key)
    text = json.dumps({"stage": "recovered (fine-tune)", "options": options}, sort_keys=True)
    assert stage_fingerprint(config, "recovered (fine-tune)") == hashlib.sha256(text.encode()).hexdigest()[:16]
    by_macs = dataclasses.replace(config, prune_by="macs", target_macs=0.4)
    assert stage_fingerprint(by_macs, "sparse") == stage_fingerprint(config, "sparse")
    assert stage_fingerprint(by_macs, "pruned") != stage_fingerprint(config, "pruned")
    channel = dataclasses.replace(config, channel_distill_weight=0.05)
    assert stage_fingerprint(channel, "pruned") == stage_fingerprint(config, "pruned")
    assert stage_fingerprint(channel, "recovered (distill)") != stage_fingerprint(config, "recovered (distill)")
