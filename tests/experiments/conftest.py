"""Tests of the research scripts under ``experiments/`` (not part of the package): how to import one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load_experiment(domain: str, name: str) -> ModuleType:
    """Import ``experiments/<domain>/<name>.py`` as a module, with its folder on ``sys.path`` while it loads
    (the scripts import their siblings by name, e.g. ``import omniglot_time_to_accuracy``)."""
    folder = EXPERIMENTS / domain
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


@pytest.fixture(scope="session")
def experiment():
    """``experiment(domain, name)``: the module of ``experiments/<domain>/<name>.py``."""
    return load_experiment
