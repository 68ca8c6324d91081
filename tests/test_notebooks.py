"""The example notebooks run end to end (on their small default settings) without an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
# needs the extra grouppruner[ultralytics], which lives in CI's second environment (test_ultralytics_notebook)
ULTRALYTICS = EXAMPLES / "03_ultralytics.ipynb"
CORE_NOTEBOOKS = [p for p in NOTEBOOKS if p != ULTRALYTICS]


@pytest.mark.slow
@pytest.mark.parametrize("path", CORE_NOTEBOOKS, ids=[p.name for p in CORE_NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _execute(path, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.libraries
def test_ultralytics_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ultralytics")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    _execute(ULTRALYTICS, tmp_path, monkeypatch)


def _execute(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = nbformat.read(path, as_version=4)
    # The kernel imports grouppruner the way this test process does (an editable install or PYTHONPATH=src).
    src = str(Path(__file__).resolve().parents[1] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors


def test_notebooks_are_stored_without_outputs() -> None:
    assert NOTEBOOKS, f"no notebook under {EXAMPLES}"
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs not stripped"
