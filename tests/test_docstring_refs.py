"""Every cross-reference in the library's docstrings names an object that exists (stale module paths fail here)."""

from __future__ import annotations

import importlib
import pathlib
import re

import grouppruner

ROOT = pathlib.Path(grouppruner.__file__).parent
REFERENCE = re.compile(r":(?:mod|func|class|meth|data|attr|exc):`~?(grouppruner[\w.]*)`")


def _resolves(reference: str) -> bool:
    parts = reference.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return False
        return True
    return False


def _references() -> list[tuple[str, str]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if "integrations" in path.parts:  # their optional libraries may be missing here
            continue
        for match in REFERENCE.finditer(path.read_text()):
            found.append((str(path.relative_to(ROOT)), match.group(1)))
    return found


def test_every_docstring_reference_resolves() -> None:
    references = _references()
    assert len(references) > 50  # the scan finds the library's references at all
    assert [f"{module}: {ref}" for module, ref in references if not _resolves(ref)] == []
