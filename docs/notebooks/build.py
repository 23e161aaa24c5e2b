"""Build the documentation notebooks: py:percent sources -> executed ``.ipynb`` (maintainers only).

The notebooks are written as ``docs/notebooks/<name>.py`` in the py:percent format (reviewable diffs): a
line ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are comments (``# text``).
This script converts each source into ``<name>.ipynb`` and executes it with nbclient and ipykernel (the
``docs`` extra), from the repository root, so the committed notebooks carry their outputs and plots. The docs
build never runs them (``mkdocs-jupyter`` with ``execute: false``), and neither does CI;
``tests/test_notebooks.py`` runs the sources' code in a quick mode and checks that every ``.ipynb`` holds
the code of its source.

    python docs/notebooks/build.py                      # every notebook (several CPU-minutes)
    python docs/notebooks/build.py attention_maml       # some of them
    python docs/notebooks/build.py --no-execute         # convert only (outputs dropped)
    python docs/notebooks/build.py --keep-outputs       # new markdown, the committed outputs kept
                                                        # (the code cells must be unchanged)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NOTEBOOKS = ("first_classifier", "attention_maml", "meta_rl")
_MARKER = re.compile(r"^# %%(?P<markdown> \[markdown\])?\s*$")


def parse(text: str) -> list[tuple[str, str]]:
    """``[(kind, source)]`` of a py:percent text, ``kind`` being ``"code"`` or ``"markdown"``.

    Text before the first marker is ignored; blank lines around a cell are dropped; markdown lines lose their
    ``# `` (or a lone ``#``)."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _MARKER.match(line)
        if match:
            cells.append(("markdown" if match.group("markdown") else "code", []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            bad = [line for line in lines if line.strip() and not line.startswith("#")]
            if bad:
                raise ValueError(f"markdown cell line without '# ': {bad[0]!r}")
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append((kind, source))
    return out


def code_cells(notebook: dict) -> list[str]:
    """The sources of a notebook's (JSON dict) code cells."""
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in notebook["cells"] if c["cell_type"] == "code"]


def to_notebook(cells: list[tuple[str, str]]):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for index, (kind, source) in enumerate(cells):
        cell = new_code_cell(source) if kind == "code" else new_markdown_cell(source)
        cell["id"] = f"cell-{index}"  # stable ids: rebuilding changes only what changed
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def build(name: str, execute: bool = True, keep_outputs: bool = False, timeout: int = 1200) -> Path:
    import nbformat

    source = HERE / f"{name}.py"
    out = HERE / f"{name}.ipynb"
    nb = to_notebook(parse(source.read_text(encoding="utf-8")))
    if keep_outputs:
        old = nbformat.read(out, as_version=4)
        old_code = [c for c in old.cells if c.cell_type == "code"]
        new_code = [c for c in nb.cells if c.cell_type == "code"]
        if [c.source for c in old_code] != [c.source for c in new_code]:
            raise SystemExit(f"{name}: the code cells changed since {out.name} was executed; run it again")
        for new, old_cell in zip(new_code, old_code):
            new.outputs, new.execution_count = old_cell.outputs, old_cell.execution_count
    elif execute:
        from nbclient import NotebookClient

        # the kernel inherits the environment: no tqdm warning about ipywidgets in the outputs
        os.environ["PYTHONWARNINGS"] = "ignore:IProgress not found"
        start = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(ROOT)}}).execute()
        print(f"{name}: executed in {time.perf_counter() - start:.0f} s")
    nbformat.write(nb, out)
    assert code_cells(json.loads(out.read_text(encoding="utf-8"))) == \
        [s for k, s in parse(source.read_text(encoding="utf-8")) if k == "code"]
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"notebooks (default: all of {', '.join(NOTEBOOKS)})")
    parser.add_argument("--no-execute", action="store_true", help="convert only, without outputs")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="update the markdown and keep the committed outputs (code must be unchanged)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        parser.error(f"unknown notebook {unknown[0]!r}; choose from {', '.join(NOTEBOOKS)}")
    for name in args.names or NOTEBOOKS:
        print(build(name, execute=not args.no_execute, keep_outputs=args.keep_outputs).relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
