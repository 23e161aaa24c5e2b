"""HalfCheetah direction / velocity meta-RL benchmark (MAML paper section 5.3), the full-length run.

Needs the ``rl`` extra (gymnasium + mujoco). Both trainings are runs of the library's trainer
(``attnmeta.train.train``, learner ``maml-rl``, benchmark ``halfcheetah-dir`` / ``halfcheetah-vel`` for
``--kind direction`` / ``velocity``); stages, each its own process (1 thread each):
    python experiments/rl/rl_halfcheetah.py train --kind direction --algo maml --iterations 500
    python experiments/rl/rl_halfcheetah.py train --kind direction --algo pretrained --iterations 500
    python experiments/rl/rl_halfcheetah.py evaluate --kind direction
Reduced run that fits a 2-core session (numbers of the earlier, hand-written loop in the research notes):
    python experiments/rl/rl_halfcheetah.py train --algo maml --meta-batch 10 --episodes 10 --max-cpu-min 8
    python experiments/rl/rl_halfcheetah.py train --algo pretrained --meta-batch 10 --episodes 10 \
        --max-cpu-min 4
    python experiments/rl/rl_halfcheetah.py evaluate
Paper settings (the defaults): meta-batch 40 tasks, 20 episodes of 200 steps per task, inner lr 0.1, one
inner step, TRPO (max KL 0.01). ``pretrained`` is the same learner with ``inner_steps: 0``, one policy
trained on all tasks jointly. Each ``train`` writes the run folder
``runs/rl/halfcheetah-<dir|vel>-<algo><tag>`` (``--runs``, ``--tag``; ``attnmeta eval`` works on it too)
and stops after ``--iterations`` or the budget (``--max-cpu-min`` / ``--max-wall-min``; none by default),
whichever comes first.
Evaluation: each run's best checkpoint (by validation return) on 40 fixed test tasks (``--test-tasks``),
returns before and after 1, 2, 3 steps (``--steps``), mean +/- 95% CI, for MAML, the jointly pre-trained
policy (fine-tuned) and a random initialisation (MAML's initial weights, fine-tuned), all with MAML's inner
lr and episodes per step; writes ``results/rl_halfcheetah_<kind><tag>_trainer.json`` and two PNGs
(``rl_halfcheetah_<kind>[_<tag>].json`` are the runs of the script's earlier, hand-written loop). Published
MAML (ANIL paper): direction 170.4 +/- 21.0, velocity -139.0 +/- 18.9. Each iteration simulates
2 x 40 x 20 x 200 = 320,000 steps (MAML), so the full run is hours of CPU; ``metrics.csv`` records the CPU
time of every iteration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_driver  # noqa: E402
import torch  # noqa: E402

from attnmeta.rl.registry import rl_benchmark  # noqa: E402

BENCHMARKS = {"direction": "halfcheetah-dir", "velocity": "halfcheetah-vel"}
RESULTS = Path(__file__).resolve().parent / "results"
PUBLISHED = {"direction": "170.4 +/- 21.0", "velocity": "-139.0 +/- 18.9"}


def train(args: argparse.Namespace) -> Any:
    """One run of the trainer: ``maml`` (``--inner-steps``) or ``pretrained`` (``inner_steps: 0``)."""
    return rl_driver.train_from_args(args, BENCHMARKS[args.kind], eval_every=20)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """MAML, the pre-trained policy and a random initialisation on the same fixed test tasks; writes the
    JSON and the two plots, returns the results."""
    benchmark = BENCHMARKS[args.kind]
    runs = {algo: rl_driver.run_folder(args.runs, benchmark, algo, args.tag) for algo in rl_driver.ALGOS}
    tasks = rl_benchmark(benchmark).make_family(0).fixed_tasks(args.test_tasks, seed=0)
    out, curves = rl_driver.evaluate_runs(benchmark, runs, tasks, steps=args.steps, seed=args.seed,
                                          inner_lr=args.inner_lr, episodes=args.episodes)
    out = {"task": f"HalfCheetah {args.kind}, {len(tasks)} fixed test tasks, {out['episodes']} episodes of "
                   "200 steps per step", **out, "published_maml_after_adaptation": PUBLISHED[args.kind]}
    stem = Path(args.results) / f"rl_halfcheetah_{args.kind}{args.tag}_trainer"
    rl_driver.write_outputs(out, curves, stem, f"HalfCheetah {args.kind}")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog="budget: " + rl_driver.BUDGET_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["train", "evaluate"])
    p.add_argument("--kind", choices=list(BENCHMARKS), default="direction")
    p.add_argument("--algo", choices=rl_driver.ALGOS, default="maml", help="train: which run")
    p.add_argument("--iterations", type=int, default=500, help="train: at most this many TRPO iterations")
    p.add_argument("--max-cpu-min", type=float, default=None, help="train: CPU-minute budget (default none)")
    p.add_argument("--max-wall-min", type=float, default=None,
                   help="train: wall-clock-minute budget (ignored when --max-cpu-min is given)")
    p.add_argument("--inner-steps", type=int, default=1,
                   help="train --algo maml: inner steps in meta-training")
    p.add_argument("--meta-batch", type=int, default=40, help="train: tasks per iteration")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes per task and step; train: default 20; evaluate: default the MAML run's")
    p.add_argument("--inner-lr", type=float, default=None,
                   help="inner step size; train: default 0.1; evaluate: default the MAML run's, for "
                   "every method")
    p.add_argument("--val-tasks", type=int, default=10,
                   help="train: fixed validation tasks (they pick the best checkpoint)")
    p.add_argument("--test-tasks", type=int, default=40, help="fixed test tasks (train: the trainer's test)")
    p.add_argument("--steps", type=int, default=3, help="evaluate: adaptation steps")
    p.add_argument("--seed", type=int, default=0, help="train: the run's seed; evaluate: the rollouts' seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="", help="suffix of the run folders and result file names")
    p.add_argument("--runs", default="runs/rl", help="folder of the run folders")
    p.add_argument("--results", default=str(RESULTS), help="folder of the results JSON and plots")
    return p


def main(argv: list[str] | None = None) -> Any:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    return train(args) if args.stage == "train" else evaluate(args)


if __name__ == "__main__":
    rl_driver.run_script(main)
