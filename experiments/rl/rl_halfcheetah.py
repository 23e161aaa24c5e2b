"""HalfCheetah direction / velocity meta-RL benchmark (MAML paper section 5.3), the full-length run.

Needs the ``rl`` extra (gymnasium + mujoco). Stages, each its own process (1 thread each):
    python experiments/rl/rl_halfcheetah.py train --kind direction --algo maml --iterations 500
    python experiments/rl/rl_halfcheetah.py train --kind direction --algo pretrained --iterations 500
    python experiments/rl/rl_halfcheetah.py evaluate --kind direction
Reduced run that fits a 2-core session (measured numbers in the README):
    python experiments/rl/rl_halfcheetah.py train --algo maml --meta-batch 10 --episodes 10 --max-cpu-min 8
    python experiments/rl/rl_halfcheetah.py train --algo pretrained --meta-batch 10 --episodes 10 \
        --max-cpu-min 4
    python experiments/rl/rl_halfcheetah.py evaluate --episodes 10
Paper settings: meta-batch 40 tasks, 20 episodes of 200 steps per task, inner lr 0.1, one inner step, TRPO
(max KL 0.01). Evaluation: 40 fixed test tasks, returns before and after 1, 2, 3 steps, mean +/- 95% CI, for
MAML, the jointly pre-trained policy (fine-tuned) and a random initialisation (fine-tuned); writes
``results/rl_halfcheetah_<kind>.json`` and a PNG. Published MAML (ANIL paper): direction 170.4 +/- 21.0,
velocity -139.0 +/- 18.9. Each iteration simulates 2 x 40 x 20 x 200 = 320,000 steps (MAML), so the full
run is hours of CPU; the log records CPU time per iteration.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from attnmeta.rl import MAMLRL, GaussianMLPPolicy, HalfCheetahTasks, evaluate_adaptation
from attnmeta.rl.evaluate import plot_adaptation, plot_training

RESULTS = Path(__file__).resolve().parent / "results"


def _learner(policy: GaussianMLPPolicy, family: HalfCheetahTasks, inner_steps: int, episodes: int,
             inner_lr: float) -> MAMLRL:
    task = family.sample(torch.Generator().manual_seed(0))
    return MAMLRL(policy, inner_lr=inner_lr, inner_steps=inner_steps, episodes=episodes,
                  horizon=family.horizon, env_factory=task.env_factory())


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    family = HalfCheetahTasks(args.kind, seed=args.seed)
    policy = GaussianMLPPolicy(17, 6)
    learner = _learner(policy, family, args.inner_steps if args.algo == "maml" else 0, args.episodes,
                       args.inner_lr)
    generator = torch.Generator().manual_seed(args.seed + 1)
    cpu0, wall0 = time.process_time(), time.time()
    log = []
    path = RESULTS / f"rl_halfcheetah_{args.kind}{args.tag}_{args.algo}.pt"
    for it in range(1, args.iterations + 1):
        goals = torch.stack([t.env_params for t in family.sample_batch(args.meta_batch)])
        metrics = learner.train_iteration(goals, generator)
        cpu, wall = time.process_time() - cpu0, time.time() - wall0
        log.append({"iteration": it, "cpu_s": cpu, "wall_s": wall, **metrics})
        print(f"{args.kind} {args.algo} it {it:4d} cpu {cpu / 60:7.2f} min return before "
              f"{metrics['return_before']:8.2f} after {metrics['return_after']:8.2f} kl {metrics['kl']:.4f}",
              flush=True)
        done = cpu > 60 * args.max_cpu_min or wall > 60 * args.max_wall_min or it == args.iterations
        if it % 5 == 0 or done:
            samples = (learner.inner_steps + 1) * args.meta_batch * args.episodes * family.horizon * it
            torch.save({"policy": policy.state_dict(), "log": log, "cpu_s": cpu, "wall_s": wall,
                        "env_steps": samples, "meta_batch": args.meta_batch, "episodes": args.episodes,
                        "inner_steps": learner.inner_steps}, path)
        if done:
            break


def evaluate(args: argparse.Namespace) -> None:
    family = HalfCheetahTasks(args.kind)
    tasks = family.fixed_tasks(args.test_tasks, seed=0)
    runs, info = {}, {}
    for algo in ("maml", "pretrained"):
        state = torch.load(RESULTS / f"rl_halfcheetah_{args.kind}{args.tag}_{algo}.pt", weights_only=False)
        policy = GaussianMLPPolicy(17, 6)
        policy.load_state_dict(state["policy"])
        runs[algo] = policy
        info[algo] = {"iterations": len(state["log"]), "train_cpu_min": state["cpu_s"] / 60,
                      "env_steps": state.get("env_steps"), "meta_batch": state.get("meta_batch"),
                      "episodes": state.get("episodes"),
                      "train_curve": [row["return_after"] for row in state["log"]]}
        print(algo, {k: v for k, v in info[algo].items() if k != "train_curve"})
    torch.manual_seed(args.seed)
    runs["random init"] = GaussianMLPPolicy(17, 6)
    curves = [evaluate_adaptation(policy, tasks, name, steps=args.steps, inner_lr=args.inner_lr,
                                  episodes=args.episodes, seed=args.seed) for name, policy in runs.items()]
    print(f"{'method':<14}" + "".join(f"{f'{k} steps':>18}" for k in range(args.steps + 1)))
    for c in curves:
        print(f"{c.name:<14}" + "".join(f"{str(s):>18}" for s in c.summary))
    maml_after = curves[0].summary[1:]
    beats = {c.name: [m.mean - m.ci95 > b.mean + b.ci95 for m, b in zip(maml_after, c.summary[1:])]
             for c in curves[1:]}
    print("MAML above baseline with non-overlapping 95% CI, at steps 1..K:", beats)
    out = {"task": f"HalfCheetah {args.kind}, {len(tasks)} fixed test tasks", "inner_lr": args.inner_lr,
           "curves": [c.as_dict() for c in curves], "training": info,
           "maml_beats_with_non_overlapping_ci": beats}
    (RESULTS / f"rl_halfcheetah_{args.kind}{args.tag}.json").write_text(json.dumps(out, indent=1))
    plot_adaptation(curves, str(RESULTS / f"rl_halfcheetah_{args.kind}{args.tag}_adaptation.png"),
                    title=f"HalfCheetah {args.kind}")
    plot_training({k: v["train_curve"] for k, v in info.items()},
                  str(RESULTS / f"rl_halfcheetah_{args.kind}{args.tag}_training.png"),
                  title=f"HalfCheetah {args.kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "evaluate"])
    parser.add_argument("--kind", choices=["direction", "velocity"], default="direction")
    parser.add_argument("--algo", choices=["maml", "pretrained"], default="maml")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--max-cpu-min", type=float, default=float("inf"))
    parser.add_argument("--max-wall-min", type=float, default=float("inf"))
    parser.add_argument("--inner-steps", type=int, default=1, help="inner steps in MAML meta-training")
    parser.add_argument("--meta-batch", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--test-tasks", type=int, default=40)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="suffix of the checkpoint and result file names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    if args.stage == "train":
        train(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
