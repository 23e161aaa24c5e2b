"""The documentation notebooks (docs/notebooks): each py:percent source runs in its quick mode, and each
committed .ipynb holds exactly the cells of its source, executed (so the two cannot drift apart).

The notebooks themselves are executed by maintainers only (``python docs/notebooks/build.py``), never here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "docs" / "notebooks"
SHARED_DATA = ROOT.parent / "shared" / "data"


def _build_module():
    spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOK_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build_module()
NAMES = BUILD.NOTEBOOKS


def _cells(name: str) -> list[tuple[str, str]]:
    return BUILD.parse((NOTEBOOK_DIR / f"{name}.py").read_text(encoding="utf-8"))


def test_every_source_is_listed():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.py") if p.name != "build.py") == sorted(NAMES)


def test_parse_py_percent():
    text = "header\n# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n# %%\nprint(x)\n"
    assert BUILD.parse(text) == [("markdown", "# Title\n\ntext"), ("code", "x = 1"), ("code", "print(x)")]
    with pytest.raises(ValueError, match="markdown cell line"):
        BUILD.parse("# %% [markdown]\nnot a comment\n")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_source(name):
    notebook = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))
    committed = [(c["cell_type"], "".join(c["source"])) for c in notebook["cells"]]
    assert committed == _cells(name), (
        f"docs/notebooks/{name}.ipynb differs from {name}.py: run python docs/notebooks/build.py {name}")
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), f"{name}.ipynb is not executed"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    images = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert images, f"{name}.ipynb has no plots"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_quick_mode(name, tmp_path):
    if name == "first_classifier" and not (SHARED_DATA / "omniglot").is_dir():
        pytest.skip(f"the Omniglot notebook needs the archives in {SHARED_DATA / 'omniglot'} "
                    "(see ../shared/data/README.md)")
    program = ["_namespace = {'__name__': '__main__'}"]
    for index, (kind, source) in enumerate(_cells(name)):
        if kind == "code":
            program.append(f"exec(compile({source!r}, {f'{name} cell {index}'!r}, 'exec'), _namespace)")
    env = {**os.environ, "ATTNMETA_NOTEBOOK_QUICK": "1", "MPLBACKEND": "Agg",
           "ATTNMETA_DATA": str(SHARED_DATA)}
    result = subprocess.run([sys.executable, "-c", "\n".join(program)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
