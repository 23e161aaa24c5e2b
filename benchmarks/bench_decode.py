"""Decoding throughput of sequence-to-sequence runs: words per CPU-second, greedy and beam 5, one thread.

Each run's model is adapted once to a task's support pairs (not timed), then generates the targets of its
queries (timed: ``--repeats`` rounds, each run and setting in turn, so that runs compare under the same
conditions; medians reported). Time is the process's CPU time (one thread, so the wall time of a quiet
machine; other jobs on a loaded machine do not inflate it much). Prints a table and writes
``benchmarks/results/bench_decode.json`` with the CPU flags.

    python benchmarks/bench_decode.py runs/transformer runs/lstm --root DATA/text/sigmorphon2018 --words 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> list[str]:
    """The CPU's bf16 / AVX-512 / AMX flags (``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    lines = [line for line in text.splitlines() if line.startswith("flags")]
    flags = lines[0].split(":", 1)[1].split() if lines else []
    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--root", help="data of the run's benchmark (default: as trained)")
    parser.add_argument("--words", type=int, default=500, help="query sources to generate per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint, load_weights
    from attnmeta.train.config import RunConfig
    from attnmeta.train.seq2seq_run import build_seq2seq_benchmark, load_seq2seq_learner

    def prepared(run_dir: str) -> tuple[Any, dict, Any, Any]:
        path = CheckpointManager(Path(run_dir) / "checkpoints").best_path()
        weights, state = load_checkpoint(path)
        config = RunConfig.from_dict(state["config"])
        if args.root:
            config.root = args.root
        learner = load_seq2seq_learner(state["run"], config)
        load_weights(learner, weights, path)
        learner.eval()
        task = build_seq2seq_benchmark(config.resolved(), splits=("test",)).test.fixed_tasks(1)[0]
        encoded = learner.encode_task(task)
        return learner, learner.adapt(encoded), encoded.query_source[:args.words], task

    runs = {run_dir: prepared(run_dir) for run_dir in args.run_dirs}
    seconds = {(run_dir, beam): [] for run_dir in runs for beam in args.beams}
    for _ in range(args.repeats):
        for (run_dir, beam), times in seconds.items():
            learner, params, sources, _task = runs[run_dir]
            start = time.process_time()
            learner.generate_ids(params, sources, beam)
            times.append(time.process_time() - start)
    results = []
    for run_dir, (learner, _params, sources, task) in runs.items():
        times = {beam: seconds[run_dir, beam] for beam in args.beams}
        rows = {f"beam {beam}": {"words_per_cpu_second": len(sources) / statistics.median(t),
                                 "cpu_seconds": t} for beam, t in times.items()}
        network = type(learner.model).__name__
        for name, row in rows.items():
            print(f"{run_dir} ({network}) {name:8s} {row['words_per_cpu_second']:8.1f} words per CPU-second "
                  f"({len(sources)} words, task {task.name})")
        results.append({"run": str(run_dir), "network": network, "task": task.name, "words": len(sources),
                        "results": rows})
    out = ROOT / "benchmarks" / "results" / "bench_decode.json"
    out.write_text(json.dumps({"runs": results, "threads": 1, "torch": torch.__version__,
                               "cpu_flags": cpu_flags()}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
