"""Sinusoid regression, MAML paper section 5.1 (Finn et al. 2017) and Meta-SGD (Li et al. 2017, table 1).

2x40 ReLU MLP, K=10 support / 10 query points in meta-training, 1 inner step with alpha=0.01, meta-batch 25,
Adam 1e-3, trained by the library's trainer (``attnmeta.train.train``; one run folder per learner, resumed
from one checkpoint to the next). Evaluation: 600 fixed tasks (seed 0) with K = 5, 10, 20 support points and
100 query points, mean MSE +/- 95% CI after 1 and 10 inner steps, at several meta-step checkpoints. Published
5-shot MSE: MAML 1.13 +/- 0.18, Meta-SGD 0.90 +/- 0.16.

    OMP_NUM_THREADS=1 nohup .venv/bin/python experiments/sinusoid/sinusoid_maml.py --steps 70000 \
        > experiments/sinusoid/results/sinusoid_maml_trainer.log 2>&1 &

Prints a table and writes ``experiments/sinusoid/results/sinusoid_maml_trainer.json`` (rewritten at every
checkpoint; ``sinusoid_maml.json`` and ``sinusoid_meta-sgd.json`` are the runs of the script's earlier,
hand-written Adam loop).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attnmeta.eval import evaluate
from attnmeta.learners.base import Learner
from attnmeta.tasks.regression import Sinusoid
from attnmeta.train.config import RunConfig
from attnmeta.train.trainer import TrainResult, build_benchmark, build_learner, final_weights, train

PUBLISHED_5_SHOT = {"maml": (1.13, 0.18), "meta-sgd": (0.90, 0.16)}
RESULTS = Path(__file__).resolve().parent / "results"


def run_config(name: str, run_dir: str | Path, *, strategy: str = "vmap", threads: int = 1, seed: int = 0,
               eval_every: int = 1000) -> RunConfig:
    """The papers' setting as a run config: the sinusoid benchmark's 1-40-40-1 ReLU MLP, K=10, one inner
    step of 0.01, meta-batch 25, Adam 1e-3 (constant); ``steps`` is set by ``meta_train``."""
    return RunConfig(benchmark="sinusoid", shots=10, queries=10, algo=name,
                     algo_options={"inner_lr": 0.01, "inner_steps": 1, "strategy": strategy},
                     meta_batch=25, lr=1e-3, eval_every=eval_every, eval_episodes=100,
                     checkpoint_every=eval_every, threads=threads, seed=seed, device="cpu", plot=False,
                     run_dir=str(run_dir))


def meta_train(config: RunConfig, steps: int, *, resume: bool = False, quiet: bool = True) -> TrainResult:
    """Train ``config``'s run to ``steps`` meta-steps (``resume``: continue its run folder from where it
    stopped); no test evaluation (``evaluate_sinusoid`` does that)."""
    config = RunConfig.from_dict({**config.to_dict(), "steps": steps})
    return train(config, resume=resume, evaluate_test=False, quiet=quiet, print_fn=lambda _: None)


def trained_learner(result: TrainResult) -> Learner:
    """The run's learner with the weights of its newest checkpoint (the last step trained)."""
    learner = build_learner(result.config, build_benchmark(result.config))
    learner.load_state_dict(final_weights(result.run_dir))
    return learner


def evaluate_sinusoid(learner: Learner, shots: int, inner_steps: int, tasks: int = 600) -> dict:
    """Mean MSE and 95% CI on ``tasks`` fixed sinusoid tasks (seed 0) with ``shots`` support, 100 query."""
    episodes = Sinusoid(shots, 100).fixed_tasks(tasks, seed=0)
    saved = learner.eval_inner_steps
    learner.eval_inner_steps = inner_steps
    try:
        result = evaluate(learner, episodes)
    finally:
        learner.eval_inner_steps = saved
    return {"mse": result.mean, "ci95": result.ci95}


def fresh(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` ... if it already holds a run."""
    base, n = path, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", nargs="+", default=["maml", "meta-sgd"])
    parser.add_argument("--steps", type=int, default=70000)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[5000, 10000, 20000, 40000, 70000])
    parser.add_argument("--strategy", default="vmap", help="vmap is ~5x faster than loop for this tiny MLP")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-tasks", type=int, default=600)
    parser.add_argument("--runs", default="runs/sinusoid_maml", help="folder of the run folders (one per "
                        "learner; -2, -3 ... appended when taken)")
    parser.add_argument("--out", default=str(RESULTS / "sinusoid_maml_trainer.json"))
    args = parser.parse_args(argv)
    checkpoints = sorted({c for c in args.checkpoints if c <= args.steps} | {args.steps})
    setting = {"net": "1-40-40-1 ReLU", "train_shots": 10, "inner_lr": 0.01, "inner_steps": 1,
               "meta_batch": 25, "optimizer": "Adam 1e-3", "eval_tasks": args.eval_tasks, "eval_queries": 100,
               "threads": args.threads, "strategy": args.strategy, "torch": torch.__version__,
               "trainer": "attnmeta.train.train"}
    report: dict = {"setting": setting, "published_5_shot_1_step": PUBLISHED_5_SHOT, "results": {},
                    "runs": {}}
    for name in args.learners:
        config = run_config(name, fresh(Path(args.runs) / name), strategy=args.strategy, threads=args.threads,
                            eval_every=min(checkpoints[0], 1000))
        report["results"][name] = []
        for i, checkpoint in enumerate(checkpoints):
            result = meta_train(config, checkpoint, resume=i > 0)
            report["runs"][name] = str(result.run_dir)
            learner = trained_learner(result)
            row = {"meta_steps": result.steps, "train_seconds": round(result.summary["train_seconds"], 1)}
            for shots in (5, 10, 20):
                for steps in (1, 10):
                    row[f"k{shots}_steps{steps}"] = evaluate_sinusoid(learner, shots, steps, args.eval_tasks)
            report["results"][name].append(row)
            cells = "  ".join(f"{k}: {v['mse']:.3f}+/-{v['ci95']:.3f}"
                              for k, v in row.items() if k.startswith("k"))
            print(f"{name:9s} {row['meta_steps']:6d} steps {row['train_seconds']:7.0f} s  {cells}",
                  flush=True)
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
    return report


if __name__ == "__main__":
    main()
