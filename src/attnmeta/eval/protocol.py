"""The evaluation protocol: fixed, seeded test episodes; mean and 95% CI; per-episode results kept."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from attnmeta.eval.stats import MeanCI, mean_ci95
from attnmeta.learners.base import Learner
from attnmeta.tasks.episode import Task


@dataclass
class EvalResult:
    """Per-episode metric values and their summary.

    ``metric`` is ``"accuracy"`` (fraction in [0, 1]), ``"mse"``, ``"return"`` (meta-RL: one value per
    task, ``attnmeta.train.rl_run``) or ``"map50"`` / ``"map"`` (detection AP in [0, 1],
    ``attnmeta.eval.detection``).
    """

    metric: str
    per_episode: list[float]
    seconds_per_task: float
    summary: MeanCI = field(init=False)

    def __post_init__(self) -> None:
        self.summary = mean_ci95(self.per_episode)

    @property
    def mean(self) -> float:
        return self.summary.mean

    @property
    def ci95(self) -> float:
        return self.summary.ci95

    def __str__(self) -> str:
        percent = {"accuracy": "accuracy", "map50": "mAP@0.5", "map": "mAP@[.5:.95]"}
        if self.metric in percent:
            return f"{percent[self.metric]} {self.summary.as_percent()}% over {self.summary.n} episodes"
        unit = "tasks" if self.metric == "return" else "episodes"
        return f"{self.metric} {self.summary} over {self.summary.n} {unit}"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "mean": self.mean, "ci95": self.ci95, "n": self.summary.n,
                "seconds_per_task": self.seconds_per_task, "per_episode": self.per_episode}


def evaluate(learner: Learner, episodes: Iterable[Task] | Sequence[Task], *,
             device: str | torch.device = "cpu", progress: bool = False, desc: str = "eval") -> EvalResult:
    """Evaluate ``learner`` on fixed episodes (see ``attnmeta.tasks.fixed_episodes``).

    Each episode: ``learner.predict(task)`` adapts on the support set and scores the queries. The learner's
    parameters are never changed. Returns accuracy for classification, MSE for regression.
    """
    episodes = list(episodes)
    if not episodes:
        raise ValueError("no episodes to evaluate; pass at least one Task")
    was_training = learner.training
    learner.eval()
    values: list[float] = []
    start = time.perf_counter()
    try:
        for task in tqdm(episodes, desc=desc, disable=not progress, leave=False):
            task = task.to(device)
            outputs = learner.predict(task).detach()
            if learner.task_type == "classification":
                values.append((outputs.argmax(-1) == task.query_y).float().mean().item())
            else:
                values.append(torch.nn.functional.mse_loss(outputs, task.query_y).item())
    finally:
        learner.train(was_training)
    elapsed = time.perf_counter() - start
    metric = "accuracy" if learner.task_type == "classification" else "mse"
    return EvalResult(metric, values, elapsed / len(episodes))


def group_results(result: EvalResult, episodes: Sequence[Task], key: str = "source") -> dict[str, MeanCI]:
    """``result``'s per-episode values grouped by ``episode.info[key]`` (mean and 95% CI per group), e.g. the
    test accuracy per source of multi-domain episodes; episodes without ``key`` are left out (empty: none has
    it). ``episodes``: the episodes ``result`` was evaluated on, in order."""
    groups: dict[str, list[float]] = {}
    for task, value in zip(episodes, result.per_episode):
        if key in task.info:
            groups.setdefault(str(task.info[key]), []).append(value)
    return {name: mean_ci95(values) for name, values in sorted(groups.items())}
