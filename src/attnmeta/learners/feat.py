"""FEAT: few-shot embedding adaptation with a set-to-set transformer (Ye et al. 2020).

Prototypical Networks whose class prototypes ``[T, N, D]`` are adapted jointly by one transformer layer
(``p' = LayerNorm(p + W_o Attention(p))``, permutation-equivariant over the classes) before the queries are
scored with ``-||q - p'||^2 / temperature``.

Contrastive regulariser (optional, ``balance > 0``): the same transformer is applied to the set of all
support and query embeddings of each class; their class centres must classify every (un-adapted) support
and query embedding, with temperature ``temperature2``. Loss = ``CE(queries) + balance * CE(regulariser)``.
Needs the same number of support and query examples in every class (as the sampler produces).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.learners.matching import check_classification_batch, embed_episodes, infer_feature_dim
from attnmeta.learners.protonet import prototypes, squared_euclidean_logits
from attnmeta.learners.registry import register
from attnmeta.nn.attention import MultiHeadAttention
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["FEAT", "SetToSetAdapter"]


class SetToSetAdapter(nn.Module):
    """One transformer layer over a set: ``x [B, L, D] -> LayerNorm(x + Dropout(MHA(x)))``."""

    def __init__(self, dim: int, heads: int = 1, dropout: float = 0.5) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.attention(x)))


class FEAT(Learner):
    """Prototypical Networks with a set-to-set transformer adapter over the prototypes.

    Args:
        model: embedding network ``[B, *input_shape] -> [B, D]``.
        feature_dim / input_shape: embedding size, or an input shape to infer it.
        heads: attention heads of the adapter. dropout: dropout on its attention read.
        temperature: divides the query logits. balance: weight of the contrastive regulariser (0 = off).
        temperature2: temperature of the regulariser's logits.
    """

    name = "feat"

    def __init__(self, model: nn.Module, *, task_type: str = "classification", feature_dim: int | None = None,
                 input_shape: tuple[int, ...] | None = None, heads: int = 1, dropout: float = 0.5,
                 temperature: float = 1.0, balance: float = 0.0, temperature2: float = 1.0) -> None:
        super().__init__(task_type)
        if task_type != "classification":
            raise ValueError("FEAT is a classification learner; use task_type='classification'")
        if temperature <= 0 or temperature2 <= 0 or balance < 0:
            raise ValueError(f"temperatures must be > 0 and balance >= 0, got temperature={temperature}, "
                             f"temperature2={temperature2}, balance={balance}")
        self.model = model
        self.adapter = SetToSetAdapter(feature_dim or infer_feature_dim(model, input_shape), heads, dropout)
        self.temperature, self.balance, self.temperature2 = temperature, balance, temperature2

    def adapted_logits(self, support_emb: Tensor, support_y: Tensor, query_emb: Tensor, ways: int) -> Tensor:
        """Query logits ``[T, nq, ways]`` against adapted prototypes."""
        adapted = self.adapter(prototypes(support_emb, support_y, ways))
        return squared_euclidean_logits(query_emb, adapted) / self.temperature

    def regularizer_loss(self, support_emb: Tensor, support_y: Tensor, query_emb: Tensor,
                         query_y: Tensor, ways: int) -> Tensor:
        """Per-task contrastive loss ``[T]`` over all support + query embeddings, grouped by class."""
        embeddings = torch.cat([support_emb, query_emb], dim=1)  # [T, n, D]
        labels = torch.cat([support_y, query_y], dim=1)
        counts = F.one_hot(labels, ways).sum(1)
        if bool((counts != counts[:, :1]).any()):
            raise ValueError("the FEAT regulariser needs the same number of examples per class in every "
                             "task; sample balanced episodes or set balance=0")
        tasks, n, dim = embeddings.shape
        order = labels.argsort(dim=1, stable=True)
        grouped = torch.gather(embeddings, 1, order[..., None].expand(-1, -1, dim))
        per_class = grouped.view(tasks * ways, n // ways, dim)
        centres = self.adapter(per_class).mean(1).view(tasks, ways, dim)
        logits = squared_euclidean_logits(embeddings, centres) / self.temperature2
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        return losses.view(tasks, n).mean(1)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        check_classification_batch(batch, self.name)
        support_emb, query_emb = embed_episodes(self.model, batch.support_x, batch.query_x)
        logits = self.adapted_logits(support_emb, batch.support_y, query_emb, batch.ways)
        losses = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten(), reduction="none")
        task_losses = losses.view(len(batch), -1).mean(1)
        metrics = {"accuracy": (logits.argmax(-1) == batch.query_y).float().mean().item()}
        if self.balance > 0:
            regularizer = self.regularizer_loss(support_emb, batch.support_y, query_emb, batch.query_y,
                                                batch.ways)
            metrics["regularizer"] = regularizer.mean().item()
            task_losses = task_losses + self.balance * regularizer
        metrics["loss"] = task_losses.mean().item()
        return MetaOutput(task_losses.mean(), task_losses.detach(), metrics)

    def predict(self, task: Task) -> Tensor:
        check_classification_batch(task, self.name)
        with torch.no_grad():
            support_emb, query_emb = embed_episodes(self.model, task.support_x[None], task.query_x[None])
            return self.adapted_logits(support_emb, task.support_y[None], query_emb, task.ways)[0]


@register("feat", head=False, description="FEAT: set-to-set transformer adapting ProtoNet prototypes")
def build_feat(model: nn.Module, task_type: str = "classification", ways: int | None = None,
               **options: Any) -> FEAT:
    return FEAT(model, task_type=task_type, **options)
