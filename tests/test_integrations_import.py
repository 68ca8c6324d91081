"""The integrations are optional: the core never imports them, and a missing framework gives one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import grouppruner as gp
from grouppruner.cli import main
from grouppruner.integrations import ultralytics as gpu


@pytest.mark.slow  # a fresh interpreter importing torch
def test_core_import_does_not_import_ultralytics() -> None:
    code = (
        "import sys, grouppruner, grouppruner.cli; grouppruner.cli.build_parser(); "
        "from grouppruner.integrations import ultralytics; "
        "assert 'ultralytics' not in sys.modules, sorted(m for m in sys.modules if 'ultralytics' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_ultralytics_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if not installed
    with pytest.raises(gp.MissingExtraError, match=r'pip install "grouppruner\[ultralytics\]"'):
        gpu.compress  # noqa: B018  # the first use of a name imports Ultralytics
    with pytest.raises(AttributeError):
        gpu.no_such_name  # noqa: B018
    code = main(["yolo", "--model", "best.pt", "--data", "data.yaml", "--target-macs", "0.5", "--out", "runs/x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and 'pip install "grouppruner[ultralytics]"' in err
