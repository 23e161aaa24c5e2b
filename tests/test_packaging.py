"""The built distributions work outside the source tree.

`python -m build` must give an sdist and a wheel (the wheel built from the sdist, so the sdist is
complete); the wheel, installed on its own into an empty folder, must import from there, carry its version,
`py.typed` and the CLI, and train a short run. Slow (a build and a training run): run it with
`python -m pytest -m slow tests/test_packaging.py` (CI does).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def source_version() -> str:
    text = (ROOT / "src" / "attnmeta" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, "src/attnmeta/__init__.py must define __version__ = \"X.Y.Z\" on one line"
    return match.group(1)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def test_version_is_defined_once():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "attnmeta.__version__" }' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M), "pyproject.toml must not repeat the version"
    assert (ROOT / "src" / "attnmeta" / "py.typed").is_file()
    assert "MIT" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert f"## [{source_version()}]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_wheel_installs_and_trains_outside_the_source_tree(tmp_path):
    version = source_version()
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=tmp_path, timeout=600)
    wheel = dist / f"attnmeta-{version}-py3-none-any.whl"
    sdist = dist / f"attnmeta-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "attnmeta/py.typed" in names and "attnmeta/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    package = ROOT / "src" / "attnmeta"
    data = [*package.glob("train/recipes/*.yaml"), *package.glob("train/recipes/results/*.json")]
    wanted = [f"attnmeta/{p.relative_to(package).as_posix()}" for p in data]
    missing = [name for name in wanted if name not in names]
    assert not missing, f"package data missing from the wheel: {missing}"
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "src/attnmeta/py.typed"} <= members

    target = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, wheel],
        timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target), "MPLBACKEND": "Agg"}
    work = tmp_path / "work"
    work.mkdir()
    probe = (
        "import importlib.metadata, json, pathlib, attnmeta\n"
        "package = pathlib.Path(attnmeta.__file__).parent\n"
        "print(json.dumps({'file': str(package), 'version': attnmeta.__version__,\n"
        "                  'metadata': importlib.metadata.version('attnmeta'),\n"
        "                  'typed': (package / 'py.typed').is_file()}))\n"
    )
    info = json.loads(run([sys.executable, "-c", probe], cwd=work, env=env, timeout=120).stdout)
    assert Path(info["file"]).resolve() == (target / "attnmeta").resolve(), "imported from the source tree"
    assert info["version"] == info["metadata"] == version
    assert info["typed"]

    run_dir = tmp_path / "run"
    run([sys.executable, "-m", "attnmeta", "train", "sinusoid", "--steps", "20", "--eval-every", "10",
         "--test-episodes", "20", "--run-dir", run_dir, "--quiet"], cwd=work, env=env, timeout=600)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["n"] == 20 and summary["test"]["metric"] == "mse"

    script = target / "bin" / "attnmeta"
    assert script.is_file(), "the wheel must install the attnmeta command"
    assert "train" in run([script, "--help"], cwd=work, env=env, timeout=120).stdout
