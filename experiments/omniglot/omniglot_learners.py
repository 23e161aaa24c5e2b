"""Omniglot 5-way 1-shot (background -> evaluation alphabets) for the learners of issue 7.

One algorithm per process (run several in parallel, one or a few threads each): meta-train through
``attnmeta.train`` (via ``attnmeta.compare``, without presets: the settings below) under a process-CPU-time
budget (or a wall-clock one, ``--wall-minutes``), then evaluate the best checkpoint by validation on the 600
fixed test episodes ``benchmark.test.fixed_tasks(600, seed=0)`` (identical in every process and in
``attnmeta compare``).
Prints a table and writes ``experiments/omniglot/results/omniglot_<algo>.json`` (with the training log).

Training episodes may have more ways than test episodes (``--train-ways``, for learners that work for
any number of ways), as in Prototypical Networks.

    .venv/bin/python experiments/omniglot/omniglot_learners.py --algo matching --train-ways 20 \
        --cpu-minutes 20
    .venv/bin/python experiments/omniglot/omniglot_learners.py --algo snail --threads 4 --cpu-minutes 30

Times are process CPU time (all threads) and wall time of this process; on a shared machine the wall time
is longer than the CPU time. CPU only; GPU runs use ``omniglot_time_to_accuracy.py --device cuda``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository
DATA = ROOT.parent / "shared" / "data" / "omniglot"

DEFAULTS = {  # per-algorithm settings used for the README numbers
    "protonet": {"train_ways": 20, "queries": 5, "meta_batch": 1, "options": {}},
    # First-order learners: the fused batch norm gives the same numbers about 2x faster on CPU.
    "matching": {"train_ways": 20, "queries": 5, "meta_batch": 1, "options": {},
                 "backbone_options": {"norm": "fused"}},
    "feat": {"train_ways": 20, "queries": 5, "meta_batch": 1, "options": {}},
    # SNAIL: 1 query per class (5 queries share each support prefix), 16 episodes per step.
    "snail": {"train_ways": 5, "queries": 1, "meta_batch": 16, "options": {},
              "backbone_options": {"norm": "fused"}},
    "transfer": {"train_ways": 32, "queries": 3, "meta_batch": 1, "options": {}},
    "baseline++": {"train_ways": 32, "queries": 3, "meta_batch": 1, "options": {}},
    "meta-lstm": {"train_ways": 5, "queries": 5, "meta_batch": 4, "options": {"steps": 5},
                  "backbone_options": {"hidden": 32}},
    "meta-lstm-attention": {"train_ways": 5, "queries": 5, "meta_batch": 4, "options": {"steps": 5},
                            "backbone_options": {"hidden": 32}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algo", required=True, choices=sorted(DEFAULTS))
    parser.add_argument("--cpu-minutes", type=float, default=20.0, help="training budget (process CPU)")
    parser.add_argument("--wall-minutes", type=float, default=None,
                        help="a wall-clock training budget instead of --cpu-minutes")
    parser.add_argument("--steps", type=int, default=None,
                        help="optional step cap (default: the budget alone)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-ways", type=int, default=None)
    parser.add_argument("--meta-batch", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None, help="training queries per class")
    parser.add_argument("--options", default="{}", help="JSON learner options, merged into the defaults")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-decay-every", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--root", default=str(DATA))
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "omniglot" / "results"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from attnmeta.compare import compare
    from attnmeta.data.benchmarks import make_benchmark
    from attnmeta.data.omniglot import Omniglot

    settings = DEFAULTS[args.algo]
    train_ways = args.train_ways or settings["train_ways"]
    meta_batch = args.meta_batch or settings["meta_batch"]
    queries = args.queries or settings["queries"]
    options = {**settings["options"], **json.loads(args.options)}
    start = time.perf_counter()
    data = tuple(Omniglot(args.root, background=b) for b in (True, False))
    test_bench = make_benchmark("omniglot", ways=5, shots=1, queries=15, data=data)
    train_bench = make_benchmark("omniglot", ways=train_ways, shots=1, queries=queries, data=data)
    bench = dataclasses.replace(test_bench, train=train_bench.train)
    print(f"data loaded in {time.perf_counter() - start:.1f}s; {args.algo}: train {train_ways}-way 1-shot "
          f"{queries}-query x{meta_batch}, threads {args.threads}", flush=True)
    log: list[str] = []

    def say(line: str) -> None:
        log.append(line)
        print(line, flush=True)

    wall = args.wall_minutes is not None
    result = compare(bench, [args.algo], ways=5, shots=1, queries=15, steps=args.steps or 10 ** 9,
                     budget_minutes=args.wall_minutes if wall else args.cpu_minutes,
                     budget_clock="wall" if wall else "cpu",
                     meta_batch=meta_batch, lr=args.lr, lr_decay_every=args.lr_decay_every,
                     episodes=args.episodes, algo_options={args.algo: options},
                     backbone_options=settings.get("backbone_options"), presets=False,
                     overrides={"device": "cpu"}, print_fn=say)
    row = result.rows[0]
    record = {"algo": args.algo, "accuracy": row.accuracy, "ci95": row.ci95, "episodes": row.episodes,
              "train_steps": row.train_steps, "train_cpu_minutes": row.train_cpu_s / 60,
              "train_wall_minutes": row.train_wall_s / 60, "adapt_ms_per_task": 1000 * row.adapt_s_per_task,
              "peak_memory_mib": row.peak_memory_mib, "train_ways": train_ways, "meta_batch": meta_batch,
              "train_queries": queries, "options": options,
              "backbone_options": settings.get("backbone_options"), "lr_decay_every": args.lr_decay_every,
              "lr": args.lr, "threads": args.threads,
              "cpu_minutes_budget": None if wall else args.cpu_minutes,
              "wall_minutes_budget": args.wall_minutes, "machine": platform.processor() or platform.machine(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "log": log}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"omniglot_{args.algo}{args.tag}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
