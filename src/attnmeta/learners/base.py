"""The contract every meta-learner follows.

A learner is an ``nn.Module`` whose parameters are the meta-parameters. The trainer only needs
``meta_loss`` (a differentiable outer loss on a meta-batch); the evaluation protocol and the predictor
API only need ``predict`` (adapt to one task's support set, return outputs for its queries).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnmeta.tasks.episode import Task, TaskBatch


@dataclass
class MetaOutput:
    """Result of ``Learner.meta_loss``.

    Attributes:
        loss: scalar outer loss, differentiable w.r.t. the learner's parameters.
        task_losses: ``[T]`` per-task outer losses (detached or not), for task attention and logging.
        metrics: plain floats for logging, e.g. ``{"loss": 0.41, "accuracy": 0.87}``.
    """

    loss: Tensor
    task_losses: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Learner(nn.Module):
    """Base class of all meta-learners.

    Subclasses set ``name`` and implement ``meta_loss`` and ``predict``. ``task_type`` is
    ``"classification"`` (targets are int64 labels, outputs are logits ``[n_query, ways]``) or
    ``"regression"`` (targets and outputs are float ``[n_query, out_dim]``).
    """

    name: str = "learner"
    #: Whether a model meta-trained N-way can be evaluated on another number of ways.
    any_ways: bool = True

    def __init__(self, task_type: str = "classification") -> None:
        super().__init__()
        if task_type not in ("classification", "regression"):
            raise ValueError(f"task_type must be 'classification' or 'regression', got {task_type!r}")
        self.task_type = task_type

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Outer loss of a meta-batch: adapt to each task's support set, score on its query set."""
        raise NotImplementedError

    def predict(self, task: Task) -> Tensor:
        """Adapt to ``task``'s support set and return outputs for ``task.query_x``.

        Returns logits ``[n_query, ways]`` for classification, predictions ``[n_query, out_dim]``
        for regression. Must not change the learner's parameters.
        """
        raise NotImplementedError

    # Shared helpers -------------------------------------------------------------------------
    def task_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean loss of one task: cross-entropy for classification, MSE for regression."""
        if self.task_type == "classification":
            return nn.functional.cross_entropy(outputs, targets)
        return nn.functional.mse_loss(outputs, targets)

    def task_metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """``{"accuracy": ...}`` for classification, ``{"mse": ...}`` for regression."""
        with torch.no_grad():
            if self.task_type == "classification":
                return {"accuracy": (outputs.argmax(-1) == targets).float().mean().item()}
            return {"mse": nn.functional.mse_loss(outputs, targets).item()}

    def check_training_ways(self, train_ways: int, ways: int) -> None:
        """Raise ``ValueError`` unless this learner, built for ``ways``-way tasks, can train on
        ``train_ways``-way episodes (any learner with ``any_ways``)."""
        if not self.any_ways and train_ways != ways:
            raise ValueError(f"{self.name} is built for {ways}-way tasks and cannot train on "
                             f"{train_ways}-way episodes; train on {ways}-way episodes")

    def check_ways(self, task: Task | TaskBatch, trained_ways: int | None) -> None:
        if not self.any_ways and trained_ways is not None and task.ways != trained_ways:
            raise ValueError(
                f"{self.name} was meta-trained {trained_ways}-way and cannot be evaluated {task.ways}-way; "
                f"evaluate with --ways {trained_ways}")


def episode_classification_output(logits: Tensor, query_y: Tensor, *, log_probs: bool = False) -> MetaOutput:
    """``MetaOutput`` of a classification meta-batch from its query scores.

    Args:
        logits: ``[T, n_query, ways]`` logits (or log-probabilities when ``log_probs``).
        query_y: ``[T, n_query]`` int64 labels.
    Returns: mean cross-entropy as ``loss``, per-task losses ``[T]`` (detached), loss and accuracy metrics.
    """
    flat_logits, flat_labels = logits.flatten(0, 1), query_y.flatten()
    if log_probs:
        losses = nn.functional.nll_loss(flat_logits, flat_labels, reduction="none")
    else:
        losses = nn.functional.cross_entropy(flat_logits, flat_labels, reduction="none")
    task_losses = losses.view(query_y.shape[0], -1).mean(1)
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == query_y).float().mean().item()
    loss = task_losses.mean()
    return MetaOutput(loss, task_losses.detach(), {"loss": loss.item(), "accuracy": accuracy})
