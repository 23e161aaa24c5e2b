"""Run every ```python block of the documentation, page by page, as written.

The blocks of one page run in order in one namespace (like a notebook), from the repository root, each
page in a fresh subprocess. Blocks that need data or minutes are fenced ```py instead and are not run.

    python docs/check_snippets.py                       # every page
    python docs/check_snippets.py docs/attention.md     # some pages
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: pages kept verbatim from elsewhere, whose blocks are not meant to run on their own
SKIP = {"research-notes.md"}


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def program(page: Path) -> str:
    """One script that runs the page's blocks in order and names the block that failed."""
    lines = ["import matplotlib", "matplotlib.use('Agg')", "_namespace = {'__name__': '__main__'}"]
    for index, code in enumerate(blocks(page), 1):
        lines.append(f"exec(compile({code!r}, {f'{page.name} block {index}'!r}, 'exec'), _namespace)")
    return "\n".join(lines) + "\n"


def run_page(page: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", program(page)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def main(argv: list[str]) -> int:
    pages = [Path(p).resolve() for p in argv] or sorted((ROOT / "docs").rglob("*.md"))
    failed = 0
    for page in pages:
        if page.name in SKIP or not blocks(page):
            continue
        start = time.perf_counter()
        result = run_page(page)
        status = "ok" if result.returncode == 0 else "FAILED"
        print(f"{status:6} {page.relative_to(ROOT)} ({len(blocks(page))} blocks, "
              f"{time.perf_counter() - start:.1f} s)")
        if result.returncode:
            failed += 1
            print(result.stderr[-3000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
