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
    args = build_parser().parse_args(["demo", "--sparse-optimizer", "adamw", "--teacher", "sparse"])
    assert (args.sparse_optimizer, args.teacher) == ("adamw", "sparse")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--teacher", "student"])
