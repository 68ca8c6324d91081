"""Recipe options from a TOML file (``grouppruner compress --config``), and the reference table of every option.

A TOML file's keys are :class:`~grouppruner.recipe.RecipeConfig` fields::

    # recipe.toml
    classes = ["aeroplane", "bicycle", "bird"]
    image_size = 416
    dense_epochs = 0
    target_params = 0.35

:func:`load_recipe_config` checks every key and type before any work starts: an unknown key names the file, the
key and the closest field names; a wrong type names the field and the type it takes. Values are then checked by
``RecipeConfig`` itself (allowed choices and ranges). Command-line flags override file values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from .._utils.errors import DataError, InvalidOptionError
from .._utils.names import did_you_mean
from .config import RecipeConfig, check_option

__all__ = ["config_reference", "load_recipe_config", "recipe_config_fields"]


def recipe_config_fields() -> dict[str, tuple[Any, Any]]:
    """``{field: (type, default)}`` of :class:`~grouppruner.recipe.RecipeConfig`, in declaration order
    (``dataclasses.MISSING`` for a field without default)."""
    hints = typing.get_type_hints(RecipeConfig)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(RecipeConfig)}


def load_recipe_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> RecipeConfig:
    """Read a recipe configuration: a TOML file, then ``overrides`` (e.g. command-line flags) on top.

    Args:
        path: a TOML file of ``RecipeConfig`` fields; ``None``: defaults only.
        overrides: field values that replace the file's (``None`` values are ignored, so unset flags keep the
            file's value).

    Returns:
        The validated :class:`~grouppruner.recipe.RecipeConfig`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid TOML, a key is not a field, a value has the wrong type or is out of range
            (the message names the file and the field).
    """
    values: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        file = Path(path)
        source = str(file)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: config file not found")
        try:
            values = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise InvalidOptionError(f"{file}: not a valid TOML file: {error}") from error
    fields = recipe_config_fields()
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    # Every key of the file is checked, also one a flag overrides: a typo or a wrong value in the file is an
    # error whether or not this command line happens to hide it.
    for origin, options in ((source, values), ("command line", given)):
        for key, value in options.items():
            if key not in fields:
                raise InvalidOptionError(
                    f"{origin}: unknown option {key!r}{did_you_mean(key, fields)}; options: {', '.join(fields)}"
                )
            options[key] = _coerce(key, value, fields[key][0], origin)
    for key in set(values) & set(given):
        try:
            check_option(key, values[key])
        except ValueError as error:
            raise InvalidOptionError(f"{source}: {error} (overridden by the command line, but wrong)") from error
    values.update(given)
    missing = [name for name, (_, default) in fields.items() if default is dataclasses.MISSING and name not in values]
    if missing:
        raise InvalidOptionError(f"{source}: missing required option(s) {', '.join(missing)}")
    try:
        return RecipeConfig(**values)
    except ValueError as error:
        raise InvalidOptionError(f"{source}: {error}") from error


def _coerce(name: str, value: Any, kind: Any, source: str) -> Any:
    """``value`` as field ``name`` of type ``kind`` takes it, or a ValueError naming the field and the type."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        origin = typing.get_origin(option)
        if origin is tuple and isinstance(value, list | tuple):
            item = typing.get_args(option)[0]
            if all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                return tuple(value)
        elif option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        elif isinstance(option, type) and isinstance(value, option) and (option is bool or not isinstance(value, bool)):
            return value
    error = DataError if source != "command line" else InvalidOptionError
    raise error(f"{source}: option {name!r} must be {_describe(kind)}, got {value!r}")


def _describe(kind: Any) -> str:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    names = []
    for option in options:
        if option is type(None):
            names.append("unset")
        elif typing.get_origin(option) is tuple:
            names.append(f"a list of {typing.get_args(option)[0].__name__}")
        else:
            names.append({int: "an integer", float: "a number", str: "a string", bool: "true or false"}[option])
    return " or ".join(names)


def config_reference() -> str:
    """A Markdown table of every ``RecipeConfig`` field: name, type, default and description (from its docstring).

    ``docs/guides/compress.md`` holds this table; a test keeps the two equal.
    """
    descriptions = _attribute_docs(RecipeConfig.__doc__ or "")
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for name, (kind, default) in recipe_config_fields().items():
        if default is dataclasses.MISSING or default is None:
            shown = "required" if default is dataclasses.MISSING else "unset"
        else:  # as TOML writes it (JSON scalars and arrays are TOML)
            shown = json.dumps(list(default) if isinstance(default, tuple) else default)
        text = _markdown(descriptions.get(name, "")).replace("|", "\\|")
        lines.append(f"| `{name}` | {_describe(kind)} | `{shown}` | {text} |")
    return "\n".join(lines)


def _markdown(text: str) -> str:
    """reST inline markup of docstrings as Markdown: ``x`` -> `x`, :func:`~a.b.c` -> `c`."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


def _attribute_docs(doc: str) -> dict[str, str]:
    """``{field: description}`` from a Google-style ``Attributes:`` section (``a, b: text`` documents both)."""
    out: dict[str, str] = {}
    section = doc.split("Attributes:", 1)[-1].splitlines()
    names: list[str] = []
    for line in section:
        stripped = line.strip()
        if not stripped:
            continue
        head, sep, rest = stripped.partition(": ")
        if (
            sep
            and line.startswith(" " * 8)
            and not line.startswith(" " * 12)
            and all(part.strip().isidentifier() for part in head.split(","))
        ):
            names = [part.strip() for part in head.split(",")]
            for name in names:
                out[name] = rest.strip()
        elif names:
            for name in names:
                out[name] += " " + stripped
    return out
