"""Copy the peers' pure-Python code into a folder for ``bench_meta_step.py`` / ``gpu_check.py`` (pip, PyPI).

learn2learn 0.2.0 does not install on Python >= 3.11 (its compiled data modules need regenerating), but its
``MAML`` is pure Python: this copies ``learn2learn/algorithms/{maml,base_learner}.py``,
``learn2learn/utils/__init__.py`` and ``_version.py``, unmodified and without ``__init__.py`` files (so
the compiled modules are never imported), from the PyPI sdist; ``higher`` is unpacked from its wheel::

    python benchmarks/fetch_peers.py --target .peers
    PYTHONPATH=src:.peers python benchmarks/bench_meta_step.py --variants learn2learn torch-loop ...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

L2L_FILES = ("algorithms/maml.py", "algorithms/base_learner.py", "utils/__init__.py", "_version.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=".peers")
    args = parser.parse_args()
    target = Path(args.target)
    with tempfile.TemporaryDirectory() as tmp:
        for spec, binary in (("learn2learn==0.2.0", "--no-binary=:all:"),
                             ("higher==0.2.1", "--only-binary=:all:")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", binary, "-d", tmp, spec],
                           check=True)
        sdist = next(Path(tmp).glob("learn2learn-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            prefix = archive.getnames()[0].split("/")[0]
            for name in L2L_FILES:
                member = archive.extractfile(f"{prefix}/learn2learn/{name}")
                if member is None:
                    raise SystemExit(f"{sdist.name} has no learn2learn/{name}")
                out = target / "learn2learn" / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(member.read())
        with zipfile.ZipFile(next(Path(tmp).glob("higher-*.whl"))) as wheel:
            wheel.extractall(target)  # a pure-Python wheel: its members are package files
    print(f"wrote {target}/learn2learn (MAML sources) and {target}/higher")


if __name__ == "__main__":
    main()
