"""The public API keeps the house rules: every exported name exists, is documented, typed and on an API page."""

from __future__ import annotations

import importlib
import inspect
import pathlib

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
PUBLIC_MODULES = [
    "grouppruner",
    "grouppruner.graph",
    "grouppruner.sparsity",
    "grouppruner.pruning",
    "grouppruner.distill",
    "grouppruner.checkpoint",
    "grouppruner.profile",
    "grouppruner.latency",
    "grouppruner.export",
]


def _exported() -> list[tuple[str, str, object]]:
    out = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            out.append((module_name, name, getattr(module, name)))
    return out


def _api_pages() -> str:
    return "\n".join(page.read_text() for page in sorted((DOCS / "api").glob("*.md")))


def test_every_exported_name_has_a_docstring() -> None:
    missing = [
        f"{module}.{name}"
        for module, name, obj in _exported()
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (obj.__doc__ or "").strip()
    ]
    assert missing == []


def test_every_exported_function_is_fully_typed() -> None:
    untyped = []
    for module, name, obj in _exported():
        functions = [obj] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            functions = [
                f
                for attr, f in vars(obj).items()
                if inspect.isfunction(f) and (not attr.startswith("_") or attr == "__init__")
            ]
        for function in functions:
            signature = inspect.signature(function)
            parameters = [p for n, p in signature.parameters.items() if n not in ("self", "cls")]
            if signature.return_annotation is inspect.Signature.empty or any(
                p.annotation is inspect.Parameter.empty for p in parameters
            ):
                untyped.append(f"{module}.{name}.{function.__name__}")
    assert untyped == []


def test_every_exported_name_is_on_an_api_page() -> None:
    pages = _api_pages()
    rendered = {line.split(":::", 1)[1].strip() for line in pages.splitlines() if line.startswith(":::")}
    missing = []
    for module, name, obj in _exported():
        if inspect.ismodule(obj) or name.startswith("__") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # modules, the version string and type aliases (their text is on the page with their module)
        home = getattr(obj, "__module__", module)
        if home not in rendered and f"{home}.{name}" not in rendered and name not in pages:
            missing.append(f"{module}.{name} (defined in {home})")
    assert missing == []


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_all_names_resolve(module: str) -> None:
    imported = importlib.import_module(module)
    assert [n for n in imported.__all__ if not hasattr(imported, n)] == []
