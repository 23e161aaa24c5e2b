"""Evaluate a trained learner with a test-time rotation ensemble (see ``attnmeta.nn.views``).

Two ways to combine the four views of a task (the task with every image turned by 0 / 90 / 180 / 270 degrees):
``"embeddings"`` concatenates each image's embeddings of the views (one episode, one prediction; for
Prototypical Networks and Matching Networks without FCE, whose distances take embeddings of any size) and
``"predictions"`` adapts to each view separately and averages the log-probabilities (any classification
learner: MAML, SNAIL, ...; one adaptation per view, so 4x the test cost). Neither trains or changes a weight.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.nn.views import RotationEnsemble, check_quarter_turns, rotate_images
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["COMBINE", "PredictionEnsemble", "rotate_task", "with_rotation_ensemble"]

COMBINE = ("embeddings", "predictions")


def rotate_task(task: Task, quarter_turns: int) -> Task:
    """``task`` with every support and query image ``[..., H, W]`` turned counter-clockwise."""
    return dataclasses.replace(task, support_x=rotate_images(task.support_x, quarter_turns),
                               query_x=rotate_images(task.query_x, quarter_turns))


class PredictionEnsemble(Learner):
    """Mean log-probabilities ``[n_query, ways]`` of ``learner.predict`` on rotated copies of each task.

    For evaluation only (``meta_loss`` raises); shares every parameter with ``learner``.
    """

    def __init__(self, learner: Learner, quarter_turns: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__(learner.task_type)
        if learner.task_type != "classification":
            raise ValueError("a prediction ensemble averages class probabilities: it needs a classification "
                             f"learner, got task_type={learner.task_type!r}")
        self.learner = learner
        self.quarter_turns = check_quarter_turns(quarter_turns)
        self.name = f"{learner.name}+rotations"
        self.any_ways = learner.any_ways

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        raise TypeError("a rotation ensemble is for evaluation only: meta-train the wrapped learner "
                        "(ensemble.learner) and wrap it again to evaluate")

    def predict(self, task: Task) -> Tensor:
        views = [torch.log_softmax(self.learner.predict(rotate_task(task, k)), dim=-1)
                 for k in self.quarter_turns]
        return torch.stack(views).mean(0)


def _concatenates_embeddings(learner: Learner) -> bool:
    from attnmeta.learners.matching import MatchingNetworks
    from attnmeta.learners.protonet import PrototypicalNetworks

    if isinstance(learner, MatchingNetworks):
        return learner.fce is None
    return isinstance(learner, PrototypicalNetworks)


def with_rotation_ensemble(learner: Learner, quarter_turns: Sequence[int] = (0, 1, 2, 3),
                           combine: str | None = None) -> Learner:
    """``learner`` evaluated on the rotations of every task; it shares every parameter with ``learner``.

    Args:
        quarter_turns: the views, counter-clockwise quarter turns (distinct values in 0..3).
        combine: ``"embeddings"`` (a copy of the learner whose embedding network is
            ``RotationEnsemble(learner.model)``: ``D`` -> ``len(quarter_turns) * D`` features; Prototypical
            Networks and Matching Networks without FCE), ``"predictions"`` (``PredictionEnsemble``: any
            classification learner) or ``None``: embeddings where the learner takes them, else predictions.
    """
    if combine is not None and combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE} or None (embeddings where the learner takes "
                         f"them), got {combine!r}")
    takes_embeddings = _concatenates_embeddings(learner)
    if combine is None:
        combine = "embeddings" if takes_embeddings else "predictions"
    if combine == "predictions":
        return PredictionEnsemble(learner, quarter_turns)
    if not takes_embeddings:
        raise ValueError(f"combine='embeddings' changes the embedding size, which only Prototypical Networks "
                         f"and Matching Networks without full-context embeddings take; got "
                         f"{type(learner).__name__}: use combine='predictions'")
    ensemble = copy.copy(learner)
    ensemble._modules = dict(learner._modules)  # the shallow copy would share (and so change) the original's
    # Prototypical / Matching Networks' embedding network, which Module.__getattr__ types as Tensor | Module
    ensemble.model = RotationEnsemble(learner.model, quarter_turns)  # type: ignore[arg-type]
    return ensemble
