"""The command line on darknet files: compress --cfg, inspect / profile --cfg, and the class check."""

import json

import pytest
import torch

from darknet_files import DATA, reduced_cfg, write_weights
from grouppruner.cli import main
from grouppruner.detection.darknet import from_darknet
from grouppruner.detection.data import data_classes
from grouppruner.recipe.darknet import load_darknet

pytest.importorskip("PIL")
pytest.importorskip("defusedxml")

CLASSES = ("square", "circle", "triangle")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    from grouppruner.detection import make_synthetic_voc

    root = tmp_path_factory.mktemp("voc")
    make_synthetic_voc(root, 24, image_size=96, classes=CLASSES, seed=0, split_fractions=(0.5, 0.5, 0.0))
    return root


def test_classes_come_from_the_data_sorted(voc):
    assert data_classes(voc) == ("circle", "square", "triangle")


def test_compress_refuses_a_cfg_for_other_classes_before_any_work(tmp_path, voc, capsys):
    (tmp_path / "w.weights").write_bytes(b"")  # never read: the class check comes first
    out = tmp_path / "run"
    code = main(
        [
            "compress",
            "--cfg",
            str(DATA / "yolov4-tiny.cfg"),
            "--weights",
            str(tmp_path / "w.weights"),
            "--data",
            str(voc),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert (
        "yolov4-tiny.cfg:" in err and "predict classes=80, but the data has 3 classes (circle, square, triangle)" in err
    )
    assert not (out / "results.json").exists() and not (out / "dense.pt").exists()


def test_demo_checks_the_cfg_classes_before_generating_data(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--cfg", str(DATA / "yolov3-tiny.cfg"), "--out", str(out), "--classes", "circle,square"]) == 2
    assert "predict classes=80, but the data has 2 classes (circle, square)" in capsys.readouterr().err
    assert not (out / "data").exists()


def test_inspect_and_profile_take_a_cfg(tmp_path, capsys, one_thread):
    text = reduced_cfg("yolov3-tiny", 3)
    (tmp_path / "t.cfg").write_text(text)
    write_weights(tmp_path / "t.weights", text)
    assert main(["inspect", "--cfg", str(tmp_path / "t.cfg"), "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "darknet t.cfg (3 classes, 24 layers) at 64x64" in out
    assert "layers.15.conv" in out and "layers.22.conv" in out  # the heads, not prunable
    args = ["profile", "--cfg", str(tmp_path / "t.cfg"), "--weights", str(tmp_path / "t.weights")]
    assert main([*args, "--image-size", "64", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in from_darknet(tmp_path / "t.cfg").parameters())
    assert f"params     {params:,}" in out and "t.weights" in out


@pytest.mark.slow
def test_compress_runs_the_recipe_on_a_cfg_and_writes_darknet_files(tmp_path, voc, capsys):
    text = reduced_cfg("yolov4-tiny", 3)
    (tmp_path / "tiny.cfg").write_text(text)
    write_weights(tmp_path / "tiny.weights", text, seed=7)
    (tmp_path / "recipe.toml").write_text("min_channels = 2\nsparsity = 0.01\n")
    out = tmp_path / "run"
    args = [
        "compress",
        "--cfg",
        str(tmp_path / "tiny.cfg"),
        "--weights",
        str(tmp_path / "tiny.weights"),
        "--data",
        str(voc),
        "--out",
        str(out),
        "--image-size",
        "96",
        "--batch-size",
        "6",
        "--epochs",
        "0",
        "1",
        "2",
        "--target-params",
        "0.6",
        "--config",
        str(tmp_path / "recipe.toml"),
        "-q",
    ]
    assert main(args) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["cfg"] == str(tmp_path / "tiny.cfg") and saved["config"]["classes"] == sorted(CLASSES)
    dense, _, pruned, recovered = saved["stages"]
    assert pruned["params"] < 0.7 * dense["params"] and recovered["params"] == pruned["params"]
    x = torch.rand(2, 3, 96, 96)
    for stage in ("pruned", "recovered"):
        assert (out / f"{stage}.cfg").is_file() and (out / f"{stage}.weights").is_file()
        from_files = from_darknet(out / f"{stage}.cfg", out / f"{stage}.weights").eval()
        from_checkpoint, _ = load_darknet(tmp_path / "tiny.cfg", out / f"{stage}.pt")
        from_checkpoint.eval()
        assert sum(p.numel() for p in from_files.parameters()) == saved["stages"][2]["params"]
        with torch.no_grad():
            for a, b in zip(from_files(x), from_checkpoint(x), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the dense stage loaded the given weights (no training): its model is the file's
    dense_model, _ = load_darknet(tmp_path / "tiny.cfg", out / "dense.pt")
    given = from_darknet(tmp_path / "tiny.cfg", tmp_path / "tiny.weights")
    ours, theirs = dense_model.state_dict(), given.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    capsys.readouterr()
    assert main(["inspect", "--run", str(out)]) == 0
    assert "darknet tiny.cfg" in capsys.readouterr().out
