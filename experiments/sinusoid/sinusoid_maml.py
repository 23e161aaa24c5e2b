"""Sinusoid regression, MAML paper section 5.1 (Finn et al. 2017) and Meta-SGD (Li et al. 2017, table 1).

2x40 ReLU MLP, K=10 support / 10 query points in meta-training, 1 inner step with alpha=0.01, meta-batch 25,
Adam 1e-3. Evaluation: 600 fixed tasks (seed 0) with K = 5, 10, 20 support points and 100 query points,
mean MSE +/- 95% CI after 1 and 10 inner steps, at several meta-step checkpoints. Published 5-shot MSE:
MAML 1.13 +/- 0.18, Meta-SGD 0.90 +/- 0.16.

    OMP_NUM_THREADS=1 nohup .venv/bin/python experiments/sinusoid/sinusoid_maml.py --steps 70000 \
        > experiments/sinusoid/results/sinusoid_maml.log 2>&1 &

Prints a table and writes ``experiments/sinusoid/results/sinusoid_maml.json`` (rewritten at every checkpoint).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from attnmeta.eval import evaluate
from attnmeta.learners import build
from attnmeta.learners.maml import MAML
from attnmeta.tasks.regression import Sinusoid

PUBLISHED_5_SHOT = {"maml": (1.13, 0.18), "meta-sgd": (0.90, 0.16)}
RESULTS = Path(__file__).resolve().parent / "results"


def sinusoid_net() -> nn.Module:
    """The MAML sinusoid network: 1 -> 40 -> 40 -> 1 with ReLU."""
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def make_learner(name: str, seed: int = 0, strategy: str = "vmap", **options) -> MAML:
    torch.manual_seed(seed)
    return build(name, model=sinusoid_net(), task_type="regression", inner_lr=0.01, inner_steps=1,
                 strategy=strategy, **options)


def meta_train(learner: MAML, steps: int, *, meta_batch: int = 25, shots: int = 10, lr: float = 1e-3,
               seed: int = 0, start: int = 0, optimizer: torch.optim.Optimizer | None = None,
               family: Sinusoid | None = None, log_every: int = 0) -> tuple[torch.optim.Optimizer, Sinusoid]:
    """Run ``steps`` meta-steps (Adam); returns the optimizer and task family so training can continue."""
    family = family or Sinusoid(shots, shots, seed=seed + 1000)
    optimizer = optimizer or torch.optim.Adam(learner.parameters(), lr=lr)
    learner.train()
    began = time.perf_counter()
    for step in range(start, start + steps):
        out = learner.meta_loss(family.sample_batch(meta_batch))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1}: loss {out.metrics['loss']:.3f} "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
    return optimizer, family


def evaluate_sinusoid(learner: MAML, shots: int, inner_steps: int, tasks: int = 600) -> dict:
    """Mean MSE and 95% CI on ``tasks`` fixed sinusoid tasks (seed 0) with ``shots`` support, 100 query."""
    episodes = Sinusoid(shots, 100).fixed_tasks(tasks, seed=0)
    saved = learner.eval_inner_steps
    learner.eval_inner_steps = inner_steps
    try:
        result = evaluate(learner, episodes)
    finally:
        learner.eval_inner_steps = saved
    return {"mse": result.mean, "ci95": result.ci95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", nargs="+", default=["maml", "meta-sgd"])
    parser.add_argument("--steps", type=int, default=70000)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[5000, 10000, 20000, 40000, 70000])
    parser.add_argument("--strategy", default="vmap", help="vmap is ~5x faster than loop for this tiny MLP")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-tasks", type=int, default=600)
    parser.add_argument("--out", default=str(RESULTS / "sinusoid_maml.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = sorted({c for c in args.checkpoints if c <= args.steps} | {args.steps})
    setting = {"net": "1-40-40-1 ReLU", "train_shots": 10, "inner_lr": 0.01, "inner_steps": 1,
               "meta_batch": 25, "optimizer": "Adam 1e-3", "eval_tasks": args.eval_tasks, "eval_queries": 100,
               "threads": args.threads, "strategy": args.strategy, "torch": torch.__version__}
    report: dict = {"setting": setting,
                    "published_5_shot_1_step": PUBLISHED_5_SHOT, "results": {}}
    for name in args.learners:
        learner = make_learner(name, strategy=args.strategy)
        optimizer = family = None
        done, train_seconds = 0, 0.0
        report["results"][name] = []
        for checkpoint in checkpoints:
            began = time.perf_counter()
            optimizer, family = meta_train(learner, checkpoint - done, start=done, optimizer=optimizer,
                                           family=family, log_every=1000)
            train_seconds += time.perf_counter() - began
            done = checkpoint
            row = {"meta_steps": done, "train_seconds": round(train_seconds, 1)}
            for shots in (5, 10, 20):
                for steps in (1, 10):
                    row[f"k{shots}_steps{steps}"] = evaluate_sinusoid(learner, shots, steps, args.eval_tasks)
            report["results"][name].append(row)
            cells = "  ".join(f"{k}: {v['mse']:.3f}+/-{v['ci95']:.3f}"
                              for k, v in row.items() if k.startswith("k"))
            print(f"{name:9s} {done:6d} steps {train_seconds:7.0f} s  {cells}", flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1))
    print("\nmeta-steps  learner   5-shot 1 step     5-shot 10 steps   10-shot 1 step    20-shot 1 step  "
          " train s")
    for name, rows in report["results"].items():
        for row in rows:
            def cell(key: str, row=row) -> str:
                return f"{row[key]['mse']:.3f}+/-{row[key]['ci95']:.3f}"
            print(f"{row['meta_steps']:10d}  {name:8s}  {cell('k5_steps1'):16s}  {cell('k5_steps10'):16s}  "
                  f"{cell('k10_steps1'):16s}  {cell('k20_steps1'):16s} {row['train_seconds']:7.0f}")
    print(f"published 5-shot (1 step): {PUBLISHED_5_SHOT}; wrote {args.out}")


if __name__ == "__main__":
    main()
