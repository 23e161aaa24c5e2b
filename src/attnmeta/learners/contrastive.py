"""Contrastive pair training, SetFit-style (Tunstall et al. 2022, "Efficient few-shot learning without
prompts"), with nearest-centroid prediction.

SetFit fine-tunes a sentence encoder on pairs of labelled examples: the cosine similarity of two embeddings
is regressed onto 1 for a pair of the same class and 0 otherwise (sentence-transformers'
``CosineSimilarityLoss``), with as many positive as negative pairs. Here the pairs are every pair of an
episode's examples (support and queries alike), and the two kinds are balanced by weight rather than by
sampling: the loss is the mean of the positive pairs' mean squared error and the negative pairs'. Nothing
of the episode's support/query split is used in training, so the encoder is trained as a plain contrastive
model on the training classes. Prediction is the cosine nearest centroid of ``PrototypicalNetworks``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import MetaOutput
from attnmeta.learners.protonet import PrototypicalNetworks, _check_episode, prototypes
from attnmeta.learners.registry import register
from attnmeta.tasks.episode import TaskBatch

__all__ = ["ContrastivePairs", "cosine_pair_loss"]


def cosine_pair_loss(embeddings: Tensor, labels: Tensor) -> Tensor:
    """Balanced cosine-similarity regression per task: ``[T, n, D]`` embeddings with labels ``[T, n]`` ->
    ``[T]`` losses, ``(mean over same-class pairs of (cos - 1)^2 + mean over other pairs of cos^2) / 2``
    (each unordered pair once; a kind of pair that a task lacks contributes 0)."""
    unit = F.normalize(embeddings, dim=-1)
    cosine = unit @ unit.transpose(-1, -2)  # [T, n, n]
    n = labels.shape[-1]
    upper = torch.ones(n, n, dtype=torch.bool, device=labels.device).triu(1)
    equal = labels.unsqueeze(-1) == labels.unsqueeze(-2)  # [T, n, n]
    same, other = equal & upper, ~equal & upper
    positive = ((cosine - 1).pow(2) * same).sum((-1, -2)) / same.sum((-1, -2)).clamp_min(1)
    negative = (cosine.pow(2) * other).sum((-1, -2)) / other.sum((-1, -2)).clamp_min(1)
    return (positive + negative) / 2


class ContrastivePairs(PrototypicalNetworks):
    """An embedding trained by ``cosine_pair_loss`` on every pair of each episode's examples; predicts by
    the cosine nearest centroid (``PrototypicalNetworks(distance="cosine")``).

    Args:
        model: embedding network, ``[n, *input_shape] -> [n, D]``.
        task_type: must be ``"classification"``.
        scale: the prediction's cosine temperature (it changes probabilities, not the predicted class; it
            is not trained: the pair loss has no softmax).
    """

    name = "contrastive"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, scale: float = 10.0) -> None:
        if task_type != "classification":
            raise ValueError(f"contrastive is a classification learner; got task_type={task_type!r}. Use a "
                             "gradient learner such as 'maml' for regression")
        super().__init__(model, task_type, distance="cosine", scale=scale)
        self.log_scale.requires_grad_(False)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        _check_episode(batch)
        support, query = self._embed(batch.support_x, batch.query_x)
        examples = torch.cat([support, query], dim=1)  # [T, n, D]
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)  # [T, n]
        task_losses = cosine_pair_loss(examples, labels)
        with torch.no_grad():
            logits = self._distance_logits(query, prototypes(support, batch.support_y, batch.ways))
            accuracy = (logits.argmax(-1) == batch.query_y).float().mean().item()
        loss = task_losses.mean()
        return MetaOutput(loss, task_losses, {"loss": loss.item(), "accuracy": accuracy})


@register("contrastive", head=False,
          description="SetFit-style contrastive pairs (Tunstall et al. 2022), cosine nearest centroid")
def build_contrastive(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                      **options: Any) -> ContrastivePairs:
    """Registry builder; ``ways`` is accepted and ignored. Option: ``scale`` (the prediction's cosine
    temperature)."""
    unknown = sorted(set(options) - {"scale"})
    if unknown:
        raise TypeError(f"contrastive takes no option other than scale, got {unknown}")
    return ContrastivePairs(model, task_type, **options)
