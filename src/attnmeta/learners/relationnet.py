"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

An embedding module ``f`` and a learned relation module ``g``: each class is represented by the **sum** of its
support embeddings (the paper's K-shot rule), each (query, class) pair's feature maps are concatenated along
the channels, and ``g`` maps the pair to a relation score ``r = sigmoid(g(...)) in (0, 1)``. Training
regresses the scores onto one-hot targets with the mean squared error (the paper's loss):
``r_qc -> [y_q = c]``.

``g`` is the paper's: for image embeddings (feature maps ``[C, H, W]``), two conv blocks (conv3x3 with
``filters`` filters, padding 1, batch norm, ReLU, max-pool 2; a block whose input is smaller than 2x2 does not
pool) then FC ``-> fc_hidden`` (ReLU) ``-> 1``; for vector embeddings ``[D]``, an MLP ``2D -> fc_hidden -> 1``
on the concatenated vectors (the paper's zero-shot relation module). The map shape of a ``Conv4`` embedding
is found from the network (``Conv4(pools=2)`` on 28x28 Omniglot: 64 x 7 x 7, the paper's unpooled last two
blocks); other embeddings give ``feature_shape`` or are treated as vectors.

``predict`` returns the relation logits (the scores before the sigmoid, ``[n_query, ways]``): the same
ranking as the scores, and usable as logits by the predictor; ``relation_scores`` gives the scores.
Batch norm in ``g`` uses the statistics of the batch of pairs (the project's batch-statistics convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.learners.matching import check_classification_batch, embed_episodes, infer_feature_dim
from attnmeta.learners.registry import register
from attnmeta.nn.backbones import batch_norm_2d
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["RelationNetworks", "RelationModule", "class_sums", "relation_pairs"]


def class_sums(support: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """Per-class sums ``[T, ways, *F]`` of support embeddings ``[T, n, *F]`` with labels ``[T, n]``."""
    one_hot = F.one_hot(support_y, ways).to(support.dtype)  # [T, n, ways]
    if bool((one_hot.sum(1) == 0).any()):
        raise ValueError(f"every class needs at least one support example; a {ways}-way episode has classes "
                         "without any (check the support labels are 0..ways-1)")
    return torch.einsum("tnw,tn...->tw...", one_hot, support)


def relation_pairs(classes: Tensor, query: Tensor) -> Tensor:
    """Concatenated pairs ``[T, nq, ways, 2C, ...]`` of class ``[T, ways, C, ...]`` and query
    ``[T, nq, C, ...]`` embeddings (class first, along the channels or vector entries)."""
    tasks, ways, n_query = classes.shape[0], classes.shape[1], query.shape[1]
    left = classes.unsqueeze(1).expand(tasks, n_query, ways, *classes.shape[2:])
    right = query.unsqueeze(2).expand(tasks, n_query, ways, *query.shape[2:])
    return torch.cat([left, right], dim=3)


class RelationModule(nn.Module):
    """``g``: pairs ``[B, 2C, H, W]`` (``feature_shape=(C, H, W)``) or ``[B, 2D]`` (``(D,)``) -> ``[B]``."""

    def __init__(self, feature_shape: Sequence[int], filters: int = 64, fc_hidden: int = 8) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        if len(self.feature_shape) == 3:
            channels, height, width = self.feature_shape
            blocks: list[nn.Module] = []
            for i in range(2):
                pool = min(height, width) >= 2
                blocks += [nn.Conv2d(2 * channels if i == 0 else filters, filters, 3, padding=1),
                           batch_norm_2d(filters, "fused"), nn.ReLU()]
                if pool:
                    blocks.append(nn.MaxPool2d(2))
                    height, width = height // 2, width // 2
            self.body: nn.Module = nn.Sequential(*blocks, nn.Flatten())
            features = filters * height * width
        elif len(self.feature_shape) == 1:
            self.body, features = nn.Identity(), 2 * self.feature_shape[0]
        else:
            raise ValueError(f"feature_shape must be (channels, height, width) or (features,), got "
                             f"{self.feature_shape}")
        self.fc = nn.Sequential(nn.Linear(features, fc_hidden), nn.ReLU(), nn.Linear(fc_hidden, 1))

    def forward(self, pairs: Tensor) -> Tensor:
        return self.fc(self.body(pairs)).squeeze(-1)


def _map_shape(model: nn.Module) -> tuple[int, ...] | None:
    """``(C, H, W)`` of a Conv4-style embedding (``blocks`` on ``in_shape`` images, no head), else None."""
    blocks, in_shape = getattr(model, "blocks", None), getattr(model, "in_shape", None)
    if getattr(model, "head", None) is not None or not isinstance(blocks, nn.Module) \
            or not isinstance(in_shape, tuple) or len(in_shape) != 3:
        return None
    was_training = blocks.training
    blocks.eval()
    with torch.no_grad():
        shape = tuple(blocks(torch.zeros(2, *in_shape)).shape[1:])
    blocks.train(was_training)
    return shape if len(shape) == 3 else None


class RelationNetworks(Learner):
    """Relation Networks over any embedding network.

    Args:
        model: embedding network ``[n, *input_shape] -> [n, ...]`` (flat outputs are reshaped to
            ``feature_shape``).
        feature_shape: ``(C, H, W)`` of the embedding's feature maps or ``(D,)``; ``None``: found from a
            Conv4-style network, else ``(D,)`` from ``feature_dim`` / ``input_shape``.
        filters / fc_hidden: the relation module's conv filters (paper: 64) and FC hidden units (paper: 8).
    """

    name = "relationnet"

    def __init__(self, model: nn.Module, task_type: str = "classification", *,
                 feature_shape: Sequence[int] | None = None, filters: int = 64, fc_hidden: int = 8,
                 feature_dim: int | None = None, input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__(task_type)
        if task_type != "classification":
            raise ValueError(f"Relation Networks are a classification learner; got task_type={task_type!r}. "
                             "Use a gradient learner such as 'maml' for regression")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module embedding network, got {type(model).__name__}")
        for option, value in (("filters", filters), ("fc_hidden", fc_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive int, got {value!r}")
        if feature_shape is None:
            feature_shape = _map_shape(model) or (feature_dim or infer_feature_dim(model, input_shape),)
        self.model = model
        self.relation = RelationModule(feature_shape, filters, fc_hidden)
        self.feature_shape = self.relation.feature_shape

    def relation_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int) -> Tensor:
        """Relation logits ``[T, n_query, ways]`` (before the sigmoid) of stacked tasks ``[T, n, *input]``."""
        support, query = embed_episodes(self.model, support_x, query_x)
        tasks, n_query = query.shape[:2]
        if support.shape[-1] != math.prod(self.feature_shape):
            raise ValueError(f"the embedding has {support.shape[-1]} features but feature_shape="
                             f"{self.feature_shape} needs {math.prod(self.feature_shape)}; pass the "
                             "embedding's feature_shape")
        support = support.reshape(*support.shape[:2], *self.feature_shape)
        query = query.reshape(tasks, n_query, *self.feature_shape)
        pairs = relation_pairs(class_sums(support, support_y, ways), query)
        return self.relation(pairs.flatten(0, 2)).view(tasks, n_query, ways)

    def relation_scores(self, task: Task) -> Tensor:
        """Relation scores ``sigmoid(g) in (0, 1)``, ``[n_query, ways]``, of one task."""
        return torch.sigmoid(self.predict(task))

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """MSE of the relation scores against one-hot query labels (mean over queries and classes)."""
        check_classification_batch(batch, self.name)
        logits = self.relation_logits(batch.support_x, batch.support_y, batch.query_x, batch.ways)
        targets = F.one_hot(batch.query_y, batch.ways).to(logits.dtype)
        task_losses = (torch.sigmoid(logits) - targets).pow(2).mean((1, 2))
        loss = task_losses.mean()
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == batch.query_y).float().mean().item()
        return MetaOutput(loss, task_losses.detach(), {"loss": loss.item(), "accuracy": accuracy})

    def predict(self, task: Task) -> Tensor:
        check_classification_batch(task, self.name)
        with torch.no_grad():
            return self.relation_logits(task.support_x[None], task.support_y[None], task.query_x[None],
                                        task.ways)[0]


@register("relationnet", head=False, description="Relation Networks (Sung et al. 2018): learned relation "
                                                  "module on summed class features, MSE on sigmoid scores")
def build_relationnet(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                      **options: Any) -> RelationNetworks:
    """Registry builder; ``ways`` is ignored (the relation module scores any number of classes). Options:
    ``feature_shape``, ``filters``, ``fc_hidden``, ``feature_dim``, ``input_shape``."""
    return RelationNetworks(model, task_type, **options)
