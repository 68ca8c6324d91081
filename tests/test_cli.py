import pytest

from grouppruner.cli import build_parser, main


def test_inspect_prints_layer_groups_and_protected_heads(capsys):
    assert main(["inspect", "--width", "0.125", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "prunable" in out
    assert "backbone/s8" in out
    # the three head output convolutions are protected, with a reason
    assert out.count("head.p") >= 3


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
