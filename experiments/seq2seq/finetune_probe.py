"""Probe test-time fine-tuning: a run's best checkpoint on chosen held-out languages under several settings.

Each setting (JSON of learner attributes such as ``finetune_steps`` / ``finetune_lr``) adapts a fresh copy of
the checkpoint to each language's 100 pairs and scores the first ``--words`` test words (one thread):

    python experiments/seq2seq/finetune_probe.py RUN --languages adyghe,quechua,turkish --words 300 \\
        '{}' '{"finetune_steps": 1000}' '{"finetune_lr": 0.001}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from attnmeta.eval.seq2seq import evaluate_seq2seq
from attnmeta.train.checkpoint import load_checkpoint, load_weights, run_checkpoint
from attnmeta.train.run_folder import load_run_config
from attnmeta.train.seq2seq_run import build_seq2seq_benchmark, load_seq2seq_learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a sigmorphon2018 run folder")
    parser.add_argument("settings", nargs="+", help="JSON objects of learner attributes ('{}': the run's)")
    parser.add_argument("--languages", required=True, help="comma-separated held-out languages")
    parser.add_argument("--words", type=int, default=300, help="test words per language (default 300)")
    parser.add_argument("--test-tasks", type=int, default=20, help="the held-out set's size (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_run_config(args.run)
    path = run_checkpoint(args.run, "best")
    weights, state = load_checkpoint(path)
    bench = build_seq2seq_benchmark(config.resolved(), splits=("test",))
    wanted = args.languages.split(",")
    tasks = [dataclasses.replace(t, query_source=t.query_source[:args.words],
                                 query_target=t.query_target[:args.words])
             for t in bench.test.fixed_tasks(args.test_tasks, seed=config.test_seed) if t.name in wanted]
    for setting in args.settings:
        learner = load_seq2seq_learner(state["run"], config)
        load_weights(learner, weights, path)
        for key, value in json.loads(setting).items():
            setattr(learner, key, value)
        start = time.process_time()
        result = evaluate_seq2seq(learner, tasks)
        accuracy = {name: round(100 * r["accuracy"], 1) for name, r in result.per_task.items()}
        print(setting, accuracy, f"{time.process_time() - start:.0f} CPU-s", flush=True)


if __name__ == "__main__":
    main()
