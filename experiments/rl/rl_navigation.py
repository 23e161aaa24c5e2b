"""2D navigation meta-RL benchmark (MAML paper section 5.3): MAML-RL (TRPO) vs two fine-tuned baselines.

Both trainings are runs of the library's trainer (``attnmeta.train.train``, learner ``maml-rl``, benchmark
``navigation``); each stage is a separate process, so MAML and the joint baseline can train side by side on
1 thread each:
    python experiments/rl/rl_navigation.py train --algo maml --inner-steps 3 --max-cpu-min 30
    python experiments/rl/rl_navigation.py train --algo pretrained --max-cpu-min 30
    python experiments/rl/rl_navigation.py evaluate
``train --algo maml`` meta-trains with ``--inner-steps`` policy-gradient steps (fresh episodes for each, as
at test time); ``--algo pretrained`` is the same learner with ``inner_steps: 0``, one policy trained on all
tasks jointly. Each writes the run folder ``runs/rl/navigation-<algo><tag>`` (``--runs``, ``--tag``): config,
checkpoints, ``metrics.csv`` (the training curve), ``summary.json``; ``attnmeta eval`` works on it too.
Training stops after ``--iterations`` TRPO steps or the budget (default 30 CPU-minutes), whichever comes
first.

``evaluate`` loads each run's best checkpoint (by validation return) and measures the average return on 40
fixed test tasks (``--test-tasks``) before and after 1, 2, 3 policy-gradient steps (``--steps``) for MAML,
the jointly pre-trained policy and a random initialisation (MAML's initial weights), all with MAML's inner
lr and episodes per step (0.1 and 20 by default); it also fine-tunes the baselines with ``--baseline-lrs`` (a
step-size fairness check) and, when ``runs/rl/navigation-maml_1step`` exists (``train --algo maml
--inner-steps 1 --tag _1step``), evaluates that one-step MAML run too. It prints a table and writes
``results/rl_navigation<tag>_trainer.json`` with ``..._adaptation.png`` and ``..._training.png``
(``rl_navigation.json`` and its PNGs are the runs of the script's earlier, hand-written loop). Published
MAML (for scale): -20.3 +/- 3.2 after adaptation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_driver  # noqa: E402
import torch  # noqa: E402

from attnmeta.rl.tasks import NavigationTasks  # noqa: E402

BENCHMARK = "navigation"
RESULTS = Path(__file__).resolve().parent / "results"
PUBLISHED = "-20.3 +/- 3.2"


def train(args: argparse.Namespace) -> Any:
    """One run of the trainer: ``maml`` (``--inner-steps``) or ``pretrained`` (``inner_steps: 0``)."""
    return rl_driver.train_from_args(args, BENCHMARK, eval_every=10, default_cpu_min=30.0)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """MAML, the pre-trained policy (and an earlier one-step MAML run if there) and a random initialisation
    on the same fixed test tasks; writes the JSON and the two plots, returns the results."""
    runs = {algo: rl_driver.run_folder(args.runs, BENCHMARK, algo, args.tag) for algo in rl_driver.ALGOS}
    one_step = rl_driver.run_folder(args.runs, BENCHMARK, "maml", "_1step")
    if not args.tag and one_step.is_dir():  # an earlier run meta-trained with 1 inner step
        runs["maml_1step"] = one_step
    tasks = NavigationTasks().fixed_tasks(args.test_tasks, seed=0)
    out, curves = rl_driver.evaluate_runs(BENCHMARK, runs, tasks, steps=args.steps, seed=args.seed,
                                          inner_lr=args.inner_lr, episodes=args.episodes,
                                          baseline_lrs=args.baseline_lrs)
    out = {"task": f"2D navigation, {len(tasks)} fixed test tasks, {out['episodes']} episodes per step, "
                   "horizon 100", **out, "published_maml_after_adaptation": PUBLISHED}
    rl_driver.write_outputs(out, curves, Path(args.results) / f"rl_navigation{args.tag}_trainer",
                            "2D navigation")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog="budget: " + rl_driver.BUDGET_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["train", "evaluate"])
    p.add_argument("--algo", choices=rl_driver.ALGOS, default="maml", help="train: which run")
    p.add_argument("--iterations", type=int, default=500, help="train: at most this many TRPO iterations")
    p.add_argument("--max-cpu-min", type=float, default=None,
                   help="train: CPU-minute budget (default 30 when no --max-wall-min is given)")
    p.add_argument("--max-wall-min", type=float, default=None,
                   help="train: wall-clock-minute budget (ignored when --max-cpu-min is given)")
    p.add_argument("--meta-batch", type=int, default=20, help="train: tasks per iteration")
    p.add_argument("--inner-steps", type=int, default=3,
                   help="train --algo maml: inner steps during meta-training (fresh episodes for each)")
    p.add_argument("--inner-lr", type=float, default=None,
                   help="inner step size; train: default 0.1; evaluate: default the MAML run's, for "
                   "every method")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes per task and step; train: default 20; evaluate: default the MAML run's")
    p.add_argument("--val-tasks", type=int, default=20,
                   help="train: fixed validation tasks (they pick the best checkpoint)")
    p.add_argument("--test-tasks", type=int, default=40, help="fixed test tasks (train: the trainer's test)")
    p.add_argument("--steps", type=int, default=3, help="evaluate: adaptation steps")
    p.add_argument("--baseline-lrs", type=float, nargs="*", default=[0.05, 0.2],
                   help="evaluate: extra step sizes to fine-tune the baselines with (a fairness check)")
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
