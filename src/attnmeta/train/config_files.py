"""Reading config files and ``--set`` overrides: safe YAML that reads every float spelling, JSON, one-line
parse errors. Nothing here executes code (``yaml.SafeLoader``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml``/``.json`` config file into a dict (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist; pass the path of a .yaml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text; pass a .yaml or .json file") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_YamlLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(
            f"config file {str(path)!r} is not valid {path.suffix[1:] or 'YAML'}: {_parse_problem(error)}"
        ) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f"config file {str(path)!r} must hold a mapping of key: value, got {type(values).__name__}"
        )
    return values


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``["lr=0.01", "algo_options.inner_steps=5"]``; values are read as YAML scalars/lists/maps."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like key=value, e.g. --set lr=0.001")
        try:
            out[key.strip()] = yaml.load(raw, Loader=_YamlLoader) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML that also reads ``1e-3``, ``1E-3`` and ``-.5`` as floats (as YAML 1.2 and Python do)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."),
)


def _parse_problem(error: Exception) -> str:
    """One line for a JSON/YAML parse error (YAML's own message spans lines, with a snippet)."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())
