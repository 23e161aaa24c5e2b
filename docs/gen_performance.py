"""The README's performance table, generated from ``benchmarks/results/bench_meta_step.json``.

``docs/gen_results.py`` writes it between ``<!-- performance:start -->`` and ``<!-- performance:end -->``
in the README and ``docs/guides/performance.md``; the JSON is written by ``benchmarks/bench_meta_step.py``
(one interleaved run of every variant).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PERFORMANCE_START, PERFORMANCE_END = "<!-- performance:start -->", "<!-- performance:end -->"
PERFORMANCE_JSON = "benchmarks/results/bench_meta_step.json"
PERFORMANCE_PAGE = "docs/guides/performance.md"
#: the variants the README shows, in order (the JSON may hold more)
LABELS = {"learn2learn": "learn2learn 0.2.0", "higher": "higher 0.2.1",
          "attnmeta": "**attnmeta** (default: `accumulate`)",
          "attnmeta-threads": "attnmeta `strategy=\"threads\"`",
          "attnmeta-bf16": "attnmeta `precision=\"bf16\"`",
          "attnmeta-bf16-threads": "attnmeta bf16 + threads"}


def performance_table(path: Path) -> str:
    """Markdown table: seconds and speed-up per meta-batch, peak memory and GFLOP/s at the largest one,
    the meta-gradient's cosine to float64; then the machine and the command."""
    if not path.is_file():
        return f"No performance measurement is committed yet (`{PERFORMANCE_JSON}`)."
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    rows, setting = data["rows"], data["setting"]
    batches = sorted({r["meta_batch"] for r in rows})
    largest = batches[-1]
    head = (["second-order MAML meta-step"] + [f"meta-batch {b}" for b in batches]
            + [f"peak memory over setup, mb {largest}", f"GFLOP/s, mb {largest}", "gradient cosine to fp64"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for variant in [v for v in LABELS if any(r["variant"] == v for r in rows)]:
        by_batch = {r["meta_batch"]: r for r in rows if r["variant"] == variant}
        big = by_batch.get(largest)
        cells = [LABELS[variant]]
        cells += [f"{by_batch[b]['seconds']:.3f} s ({by_batch[b]['speedup']:.2f}x)" if b in by_batch else "–"
                  for b in batches]
        cosine = (big or {}).get("gradient", {}).get("cosine")
        cells += [f"+{big['over_setup_mib']:.0f} MiB" if big else "–",
                  f"{big['gflop_per_s']:.0f}" if big else "–", "–" if cosine is None else f"{cosine:.5f}"]
        lines.append("| " + " | ".join(cells) + " |")
    clock = "wall" if setting["threads"] > 1 else "CPU"
    flags = " ".join(setting["flags"])
    lines += ["", f"{setting['cpu']} (flags {flags}), {setting['threads']} threads, "
              f"torch {setting['torch']}; "
              "Omniglot 5-way 1-shot, Conv-4-64, 75 queries, 1 inner step; median",
              f"{clock} seconds of {setting['rounds']} interleaved rounds, speed-up over "
              f"{rows[0]['baseline']}: `{setting['command']}`."]
    return "\n".join(lines)
