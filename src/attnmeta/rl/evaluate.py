"""Evaluation of meta-RL policies: returns on fixed test tasks before and after 1..K adaptation steps.

Protocol (MAML paper): on each test task, sample ``episodes`` episodes with the current policy, report their
mean return, take one policy-gradient step (the shared inner loop) on them, and repeat with the adapted
policy. Results are mean +/- 95% CI over tasks (``attnmeta.eval.mean_ci95``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from attnmeta.eval.stats import MeanCI, mean_ci95
from attnmeta.rl.envs import rollout
from attnmeta.rl.maml_rl import MAMLRL
from attnmeta.rl.snail_policy import SNAILRL, rollout_trial
from attnmeta.rl.tasks import HalfCheetahTask, NavigationTask


@dataclass
class AdaptationCurve:
    """``per_task[k]``: mean return of each test task after ``k`` adaptation steps (``k = 0..steps``)."""

    name: str
    per_task: list[list[float]] = field(default_factory=list)

    @property
    def summary(self) -> list[MeanCI]:
        return [mean_ci95(r) for r in self.per_task]

    def as_dict(self) -> dict:
        return {"name": self.name, "steps": list(range(len(self.per_task))),
                "mean": [s.mean for s in self.summary], "ci95": [s.ci95 for s in self.summary],
                "per_task": self.per_task}


def evaluate_adaptation(policy: nn.Module, tasks: Sequence[NavigationTask | HalfCheetahTask],
                        name: str = "policy", steps: int = 3, inner_lr: float = 0.1, episodes: int = 20,
                        seed: int = 0, learner: MAMLRL | None = None) -> AdaptationCurve:
    """Returns of ``policy`` on ``tasks`` after ``0..steps`` policy-gradient steps of size ``inner_lr``.

    ``learner`` supplies the inner loop settings (baseline, discount); by default a fresh ``MAMLRL`` with
    ``inner_lr`` (the policy itself is not modified). All tasks are rolled out in one vectorized batch.
    """
    if not tasks:
        raise ValueError("evaluate_adaptation needs at least one task; "
                         "pass e.g. NavigationTasks().fixed_tasks(40)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    horizon, env_factory = tasks[0].horizon, tasks[0].env_factory()
    learner = learner if learner is not None else MAMLRL(policy, inner_lr=inner_lr, episodes=episodes,
                                                         horizon=horizon, env_factory=env_factory)
    generator = torch.Generator().manual_seed(seed)
    goals = torch.stack([t.env_params for t in tasks])
    params = {n: p.detach() for n, p in policy.named_parameters()}
    current = [params] * len(tasks)
    curve = AdaptationCurve(name)
    for step in range(steps + 1):
        stacked = {n: torch.stack([c[n] for c in current]) for n in params}
        batch = rollout(policy, stacked, goals, episodes, horizon, generator, per_task_params=True,
                        env_factory=env_factory)
        curve.per_task.append(batch.returns().mean(dim=1).tolist())
        if step == steps:
            break
        xs, ys = learner.support_data(batch)
        current = [{n: t.detach() for n, t in learner.adapt_params(current[i], xs[i], ys[i], steps=1).items()}
                   for i in range(len(tasks))]
    return curve


def evaluate_learner(learner: MAMLRL | SNAILRL, tasks: Sequence[NavigationTask | HalfCheetahTask],
                     steps: int | None = None, seed: int = 0) -> AdaptationCurve:
    """The adaptation curve of a meta-RL learner on fixed ``tasks`` (its parameters are not changed).

    ``MAMLRL``: returns after ``0..steps`` policy-gradient steps with the learner's own inner loop and
    ``episodes`` per step (``steps`` default: ``max(3, inner_steps)``). ``SNAILRL``: the return of each
    episode of one trial per task (``per_task[k]``: episode ``k``, after ``k`` episodes of experience;
    ``steps`` is ignored). The global RNG is left as it was (``seed`` drives the sampling).
    """
    if isinstance(learner, SNAILRL):
        if not tasks:
            raise ValueError("evaluate_learner needs at least one task")
        goals = torch.stack([t.env_params for t in tasks])
        with torch.random.fork_rng(devices=[]):
            trial = rollout_trial(learner.policy, goals, 1, learner.episodes_per_trial, learner.horizon,
                                  torch.Generator().manual_seed(seed), learner.env_factory)
        returns = trial.episode_returns()[:, 0]  # [tasks, E]
        return AdaptationCurve("snail-rl", returns.t().tolist())
    steps = max(3, learner.inner_steps) if steps is None else steps
    with torch.random.fork_rng(devices=[]):
        return evaluate_adaptation(learner.policy, tasks, "maml-rl", steps=steps, episodes=learner.episodes,
                                   seed=seed, learner=learner)


def plot_adaptation(curves: Sequence[AdaptationCurve], path: str, title: str = "2D navigation") -> None:
    """Mean return (with 95% CI bars) against adaptation steps, one line per curve, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for c in curves:
        s = c.summary
        ax.errorbar(range(len(s)), [m.mean for m in s], yerr=[m.ci95 for m in s], marker="o", capsize=3,
                    label=c.name)
    ax.set_xticks(range(max(len(c.per_task) for c in curves)))
    ax.set_xlabel("policy-gradient adaptation steps")
    ax.set_ylabel("average return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(curves: dict[str, Sequence[float]], path: str, title: str = "meta-training") -> None:
    """Training curves (return after adaptation per iteration), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("average return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
