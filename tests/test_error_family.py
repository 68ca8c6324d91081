"""The core raises on purpose only through the error family (each class keeps its built-in as a second base)."""

from __future__ import annotations

import ast
import pathlib

import grouppruner

ROOT = pathlib.Path(grouppruner.__file__).parent
BUILTINS = {"ValueError", "TypeError", "KeyError", "RuntimeError", "IndexError", "AttributeError"}
CORE = [
    "graph",
    "sparsity",
    "pruning",
    "distill",
    "_utils",
    "checkpoint.py",
    "profile.py",
    "latency.py",
    "export.py",
    "plot.py",
    "resume.py",
    "run_folder.py",
]
#: The detector kit and the recipe raise through the family too.
APPLICATIONS = ["detection", "recipe"]


def _bare_raises(path: pathlib.Path) -> list[str]:
    """Built-in raises, except those that imitate torch's own error inside a probe and the AttributeError of a
    module __getattr__ (PEP 562), both marked on their line."""
    found = []
    text = path.read_text()
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
        call = node.exc if isinstance(node, ast.Raise) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id in BUILTINS
            and "imitated" not in lines[call.lineno - 1]
            and "PEP 562" not in lines[call.lineno - 1]
        ):
            found.append(f"{path.relative_to(ROOT)}:{call.lineno} raise {call.func.id}")
    return found


def test_core_raises_only_family_errors() -> None:
    files = [p for entry in CORE for p in ((ROOT / entry).rglob("*.py") if (ROOT / entry).is_dir() else [ROOT / entry])]
    assert len(files) > 30  # the scan sees the core
    assert [hit for path in files for hit in _bare_raises(path)] == []


def test_the_kit_and_the_recipe_raise_only_family_errors() -> None:
    files = [p for entry in APPLICATIONS for p in (ROOT / entry).rglob("*.py")]
    assert len(files) > 25
    assert [hit for path in files for hit in _bare_raises(path)] == []
