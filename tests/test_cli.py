import pytest

from grouppruner.cli import build_parser, main


def test_inspect_prints_layer_groups_and_protected_heads(capsys):
    assert main(["inspect", "--width", "0.125", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "prunable" in out
    assert "backbone/s8" in out
    # the three head output convolutions are protected, with a reason
    assert out.count("head.p") >= 3
    # every conv that cannot shrink is listed with its reason
    assert "convs that cannot shrink (min_channels=8):" in out
    assert "  head.p3: channels form a model output ('head.p3' output (1, 75, 8, 8))" in out
    assert main(["inspect", "--width", "0.125", "--image-size", "64", "--min-channels", "1"]) == 0
    out = capsys.readouterr().out
    assert "convs that cannot shrink (min_channels=1): 3 of " in out


def test_profile_prints_params_of_the_model(capsys):
    from grouppruner.detection import yolov4
    from grouppruner.profile import count_params

    assert main(["profile", "--width", "0.125", "--image-size", "64", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    expected = count_params(yolov4(20, width=0.125, depth=0.34))
    assert f"{expected:,}" in out


def test_profile_reports_a_bad_checkpoint_with_its_path(tmp_path, capsys):
    bad = tmp_path / "not-a-checkpoint.pt"
    bad.write_bytes(b"garbage")
    assert main(["profile", "--width", "0.125", "--image-size", "64", "--checkpoint", str(bad)]) == 2
    assert "not-a-checkpoint.pt" in capsys.readouterr().err


def test_demo_options_default_to_the_recipe_config():
    args = build_parser().parse_args(["demo", "--out", "x", "--epochs", "1", "2", "3"])
    assert args.epochs == [1, 2, 3] and args.num_images is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--backbone", "resnet"])
    args = build_parser().parse_args(["demo", "--sparse-optimizer", "adamw", "--teacher", "sparse"])
    assert (args.sparse_optimizer, args.teacher) == ("adamw", "sparse")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--teacher", "student"])


def test_console_script_reexecs_with_passive_openmp(monkeypatch):
    import os
    import sys

    from grouppruner import cli

    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, args: calls.append((exe, args)))
    monkeypatch.setattr(sys, "argv", ["grouppruner", "demo", "--out", "x"])
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli.ensure_passive_openmp()
    assert calls == [] and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's setting wins
    monkeypatch.delenv("OMP_WAIT_POLICY")
    cli.ensure_passive_openmp()
    assert calls == [(sys.executable, [sys.executable, "-m", "grouppruner", "demo", "--out", "x"])]
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


PROFILE = ["profile", "--width", "0.125", "--image-size", "64", "--repeats", "1", "--threads", "1", "--checkpoint"]


def test_checkpoint_read_errors_are_one_line_and_exit_2(tmp_path, capsys):
    import json

    import torch

    from grouppruner.checkpoint import save_pruned
    from grouppruner.detection import yolov4

    good = tmp_path / "good.pt"
    save_pruned(yolov4(20, width=0.125, depth=0.34), good)
    blob = torch.load(good, weights_only=True)
    blob["grouppruner/meta"] = torch.tensor(list(json.dumps(["not", "an", "object"]).encode()), dtype=torch.uint8)
    edited = tmp_path / "edited.pt"
    torch.save(blob, edited)
    text = tmp_path / "notes.pt"
    text.write_text("hello world")  # torch says only "(101)" about this one
    for path, reason in (
        (edited, "not a grouppruner checkpoint"),
        (text, "not a file written by torch.save"),
        (tmp_path, "is a directory"),
    ):
        assert main([*PROFILE, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert str(path) in err and reason in err


def test_verbosity_flags_work_after_the_subcommand():
    args = build_parser().parse_args(["demo", "-v", "--out", "x"])
    assert args.verbose == 1 and args.command == "demo"
    assert build_parser().parse_args(["-q", "report", "r"]).quiet


def test_compress_requires_data_and_weights(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["compress", "--out", "x", "--data", "d"])
    assert exit_info.value.code == 2 and "--weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--target-params", "1.5"], "RecipeConfig.target_params must be in (0, 1]"),
        (["--epochs", "-1", "-1", "-1"], "RecipeConfig.dense_epochs must be >= 0"),
        (["--width", "0"], "RecipeConfig.width"),
    ],
)
def test_demo_refuses_bad_options_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()  # nothing was generated or trained


def test_out_pointing_at_a_file_and_a_bad_config_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "recipe.toml").write_text("image_sise = 3\n")
    assert main(["demo", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "recipe.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown option 'image_sise'" in err and "image_size" in err


def test_compress_defaults_to_voc_classes_and_ctrl_c_exits_130(tmp_path, capsys, monkeypatch):
    from grouppruner import recipe
    from grouppruner.detection import VOC_CLASSES

    seen = []

    def interrupted(config, *, progress):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "run_recipe", interrupted)
    weights = tmp_path / "teacher.pt"
    weights.write_bytes(b"x")  # only its existence is checked before the run starts
    base = ["compress", "--out", str(tmp_path / "r"), "--data", str(tmp_path), "--weights", str(weights)]
    assert main(base) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "run the same command to resume" in err
    assert seen[-1].classes == VOC_CLASSES and seen[-1].weights == str(weights)
    (tmp_path / "recipe.toml").write_text('classes = ["cat", "dog"]\nimage_size = 96\n')
    assert main([*base, "--config", str(tmp_path / "recipe.toml"), "--image-size", "64"]) == 130
    assert seen[-1].classes == ("cat", "dog") and seen[-1].image_size == 64  # flags override the file
    assert seen[-1].budget == {"target_params": 0.35}
    assert main([*base, "--target-macs", "0.4"]) == 130
    assert seen[-1].prune_by == "macs" and seen[-1].budget == {"target_macs": 0.4}
    assert main([*base, "--target-latency", "0.5", "--search-candidates", "4"]) == 130
    assert seen[-1].budget == {"target_latency": 0.5} and seen[-1].search_candidates == 4
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--target-params", "0.3", "--target-macs", "0.4"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_profile_and_inspect_open_a_run_folder_without_options(tmp_path, capsys):
    from grouppruner.profile import count_params
    from runs import fake_run_folder

    models = fake_run_folder(tmp_path)
    assert main(["profile", "--run", str(tmp_path), "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{count_params(models['recovered']):,}" in out and "num_classes 2" in out and "64x64" in out
    assert main(["profile", "--weights", str(tmp_path / "dense.pt"), "--repeats", "1", "--threads", "1"]) == 0
    assert f"{count_params(models['dense']):,}" in capsys.readouterr().out
    assert main(["inspect", "--run", str(tmp_path)]) == 0
    assert "layer group" in capsys.readouterr().out
    assert main(["inspect", "--run", str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_demo_table_survives_a_zero_dense_map(tmp_path, capsys, monkeypatch):
    from grouppruner import recipe

    def finished(config, *, progress):
        return [
            recipe.StageResult(stage, 0.0, 100 if stage in ("dense", "sparse") else 35, 10, f"{stage}.pt")
            for stage in recipe.STAGES
        ]

    monkeypatch.setattr(recipe, "run_recipe", finished)
    assert main(["demo", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "dense mAP is 0 at 35.0% of the params" in out and "recovered     0.000         -" in out
    assert "latency" not in out


def test_demo_with_a_latency_budget_prints_what_was_measured(tmp_path, capsys, monkeypatch):
    from grouppruner import recipe

    measured = {"ratio": 0.512, "runtime": "onnxruntime", "threads": 2, "load_average": [1.5, 1.0, 0.5]}

    def finished(config, *, progress):
        return [
            recipe.StageResult(stage, 0.5, 100 if stage in ("dense", "sparse") else 35, 10, f"{stage}.pt")
            for stage in recipe.STAGES
        ]

    monkeypatch.setattr(recipe, "run_recipe", finished)
    assert main(["demo", "--out", str(tmp_path / "r"), "--target-latency", "0.5"]) == 0
    assert "latency" not in capsys.readouterr().out.splitlines()[-1]  # nothing measured, nothing printed

    def with_latency(config, *, progress):
        results = finished(config, progress=progress)
        results[2].extra["latency"] = measured
        return results

    monkeypatch.setattr(recipe, "run_recipe", with_latency)
    assert main(["demo", "--out", str(tmp_path / "r"), "--target-latency", "0.5"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "latency x0.512 of the dense model's, measured in onnxruntime (2 threads, load average 1.50)"


def test_a_full_disk_is_one_line_naming_the_file_and_loses_nothing(tmp_path, capsys, monkeypatch):
    import errno
    import os
    from pathlib import Path

    from grouppruner import recipe
    from grouppruner.checkpoint import save_pruned
    from grouppruner.detection import yolov4

    out = tmp_path / "r"
    out.mkdir()
    model = yolov4(2, width=0.125, depth=0.34)
    save_pruned(model, out / "dense.pt")
    written = (out / "dense.pt").read_bytes()

    class FullDisk:
        """A file that takes 4 KiB, then fails as a full disk does (torch.save then raises a RuntimeError)."""

        def __init__(self, file):
            self.file, self.size = file, 0

        def write(self, data):
            self.size += len(data)
            if self.size > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    fdopen = os.fdopen

    def run_out_of_space(config, *, progress):
        monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: FullDisk(fdopen(*args, **kwargs)))
        save_pruned(model, Path(config.out_dir) / "dense.pt")  # e.g. a stage checkpoint written again

    monkeypatch.setattr(recipe, "run_recipe", run_out_of_space)
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"error: {out / 'dense.pt'}: No space left on device (ENOSPC); nothing written before is lost" in err
    assert (out / "dense.pt").read_bytes() == written and sorted(p.name for p in out.iterdir()) == ["dense.pt"]


@pytest.mark.slow
def test_a_second_run_on_the_same_out_is_refused_at_once_naming_the_other_pid(tmp_path, capsys):
    import signal

    from runs import lock_holder

    holder = lock_holder(tmp_path / "r", 60)
    try:
        tiny = ["--num-images", "24", "--image-size", "64", "--width", "0.125", "--epochs", "0", "0", "0"]
        assert main(["demo", "--out", str(tmp_path / "r"), *tiny]) == 2
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"in use by another grouppruner run (pid {holder.pid} on " in err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [".grouppruner.lock"]  # nothing generated


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-images", "1"], "num_images=1 with val_fraction 0.5 generates 0 training and 1 validation images"),
        (["--num-images", "3"], "needs at least 9 training image(s) (9 anchors are fitted to their boxes)"),
        (["--image-size", "50"], "RecipeConfig.image_size must be a multiple of 32 (YOLOv4's largest stride), got 50"),
    ],
)
def test_demo_sizes_that_cannot_work_are_refused_before_data_is_generated(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "split file" not in err and "kmeans" not in err
    assert not out.exists()


def test_weights_and_data_that_are_folders_or_missing_say_so(tmp_path, capsys):
    base = ["compress", "--out", str(tmp_path / "r")]
    assert main([*base, "--data", str(tmp_path), "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"RecipeConfig.weights: '{tmp_path}' is a folder" in err and "no such file" not in err
    (tmp_path / "w.pt").write_bytes(b"x")
    assert main([*base, "--data", str(tmp_path / "nothere"), "--weights", str(tmp_path / "w.pt")]) == 2
    assert "RecipeConfig.data_root: " in (err := capsys.readouterr().err) and "no such folder" in err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('image_size = "big"', "option 'image_size' must be an integer, got 'big'"),
        ("image_size = 50", "RecipeConfig.image_size must be a multiple of 32"),
    ],
)
def test_a_config_key_that_a_flag_overrides_is_still_checked(tmp_path, capsys, line, message):
    (tmp_path / "recipe.toml").write_text(line + "\n")
    flags = ["--config", str(tmp_path / "recipe.toml"), "--image-size", "64"]
    assert main(["demo", "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recipe.toml" in err and message in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("omp", "flags", "threads"), [("1", [], 1), ("3", [], 3), ("3", ["--threads", "1"], 1)])
def test_profile_follows_omp_num_threads_unless_threads_is_given(capsys, monkeypatch, omp, flags, threads):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    before = torch.get_num_threads()
    assert main(["profile", "--width", "0.125", "--image-size", "64", "--repeats", "1", *flags]) == 0
    assert f"(batch 1, {threads} threads, median of 1)" in capsys.readouterr().out
    assert torch.get_num_threads() == before  # restored after the measurement


def test_random_bytes_are_not_called_pickled_objects(tmp_path, capsys):
    import argparse

    import numpy as np
    import torch

    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(1000))
    assert main([*PROFILE, str(noise)]) == 2
    err = capsys.readouterr().err
    assert "not a file written by torch.save (1,000 bytes" in err and "pickled" not in err
    pickled = tmp_path / "model.pt"
    torch.save({"model": argparse.Namespace(width=0.25)}, pickled)  # an object, not only tensors
    assert main([*PROFILE, str(pickled)]) == 2
    assert "pickled Python objects (argparse.Namespace)" in capsys.readouterr().err
