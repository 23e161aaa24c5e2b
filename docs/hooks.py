"""MkDocs hooks (``hooks:`` in mkdocs.yml): regenerate docs/results.md from results/*.json before a build."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def on_pre_build(config, **kwargs) -> None:  # noqa: ARG001 - MkDocs hook signature
    spec = importlib.util.spec_from_file_location("gen_results", _HERE / "gen_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(_HERE.parent, readme=False)
