"""The package's layout, read from its imports: no circle, no arrow up from the core or the detector kit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "grouppruner"
#: The top floor: the command line may import everything.
TOP = {"grouppruner.cli", "grouppruner.__main__"}
APPLICATIONS = ("grouppruner.detection", "grouppruner.recipe", "grouppruner.integrations")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """The grouppruner modules ``path`` imports, anywhere in it (lazy and TYPE_CHECKING imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("grouppruner")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        # An import of a package's name means its __init__; `from pkg import submodule` means the submodule.
        edges[name] = {m for m in _imports(path, name) if m in modules and m != name}
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _is_package_init(graph: dict[str, set[str]], name: str) -> bool:
    return any(other.startswith(name + ".") for other in graph)


def test_no_import_circle(graph):
    # A package's __init__ re-exporting its submodules is not an arrow back: leave the inits out.
    modules = {n: {m for m in e if not _is_package_init(graph, m)} for n, e in graph.items()}
    modules = {n: e for n, e in modules.items() if not _is_package_init(graph, n)}
    assert _cycle(modules) is None, f"import circle: {' -> '.join(_cycle(modules) or [])}"


def test_the_core_imports_no_application(graph):
    core = [n for n in graph if n not in TOP and not n.startswith(APPLICATIONS)]
    assert len(core) > 30
    arrows_up = {(n, m) for n in core for m in graph[n] if m.startswith(APPLICATIONS)}
    assert not arrows_up


def test_the_detector_kit_needs_only_the_core_helpers(graph):
    kit = [n for n in graph if n.startswith("grouppruner.detection")]
    assert "grouppruner.detection.models.yolov4" in kit
    outside = {
        (n, m)
        for n in kit
        for m in graph[n]
        if not m.startswith(("grouppruner.detection", "grouppruner._utils")) and m != "grouppruner"
    }
    assert not outside


def test_no_module_over_600_lines():
    long = {
        p.relative_to(PACKAGE).as_posix(): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long
