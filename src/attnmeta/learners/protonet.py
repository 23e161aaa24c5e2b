"""Prototypical Networks (Snell, Swersky & Zemel 2017).

Each class's prototype is the mean embedding of its support examples; a query's logits are the negative
squared Euclidean distances to the prototypes: ``logits[q, c] = -||f(x_q) - p_c||^2`` (the paper), or
the negative distances themselves, ``-||f(x_q) - p_c||`` (``distance="l2"``, easyfsl's ``-torch.cdist``), or
scaled cosine similarities. The embedding network ``f`` is any ``nn.Module`` mapping ``[n, *input_shape]``
to ``[n, D]`` (or any ``[n, ...]``, flattened). No head: a network trained N-way works for any number of
ways at test time.

Support and query images of a task go through the network in one forward pass, so batch-statistics
batch norm sees the whole episode (the convention of the MAML reference code; see ``attnmeta.nn.norm``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.learners.registry import register
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["DISTANCES", "METRIC_LOGITS", "PrototypicalNetworks", "euclidean_logits", "prototypes",
           "squared_euclidean_logits"]


def prototypes(support_embeddings: Tensor, support_labels: Tensor, ways: int) -> Tensor:
    """Class means ``[..., ways, D]`` of support embeddings ``[..., n, D]`` with labels ``[..., n]``.

    Raises ``ValueError`` when a class has no support example.
    """
    one_hot = F.one_hot(support_labels, ways).to(support_embeddings.dtype)  # [..., n, ways]
    counts = one_hot.sum(-2)  # [..., ways]
    if bool((counts == 0).any()):
        raise ValueError(f"every class needs at least one support example; a {ways}-way episode has classes "
                         "without any (check the support labels are 0..ways-1)")
    return one_hot.transpose(-1, -2) @ support_embeddings / counts.unsqueeze(-1)


def squared_euclidean_logits(query_embeddings: Tensor, class_prototypes: Tensor) -> Tensor:
    """``-||q - p||^2``: ``[..., n_query, D]`` x ``[..., ways, D]`` -> ``[..., n_query, ways]``.

    Computed as ``-(||q||^2 + ||p||^2 - 2 q.p)`` with one matrix product (as ``torch.cdist`` does for large
    inputs), floored at zero: the direct ``(q - p)^2`` would build an ``[n_query, ways, D]`` tensor, a fifth
    of a 200-way Omniglot training step's CPU time with 576-d embeddings (``benchmarks/bench_distance.py``).
    Both sides are first centred on the prototypes' mean (distances do not change; a constant, so no gradient
    flows through it): ReLU embeddings share a large common component, whose norm would otherwise dominate
    the expansion's rounding error.
    """
    centre = class_prototypes.detach().mean(-2, keepdim=True)  # [..., 1, D]
    query_embeddings, class_prototypes = query_embeddings - centre, class_prototypes - centre
    squared_norms = query_embeddings.pow(2).sum(-1, keepdim=True)  # [..., n_query, 1]
    prototype_norms = class_prototypes.pow(2).sum(-1).unsqueeze(-2)  # [..., 1, ways]
    cross = query_embeddings @ class_prototypes.transpose(-1, -2)  # [..., n_query, ways]
    return -(squared_norms + prototype_norms - 2 * cross).clamp_min(0)


def euclidean_logits(query_embeddings: Tensor, class_prototypes: Tensor) -> Tensor:
    """``-||q - p||`` (not squared): ``[..., n_query, D]`` x ``[..., ways, D]`` -> ``[..., n_query, ways]``.

    Its gradient with respect to ``q`` has unit norm however far the query is, where the squared distance's
    grows with it. Distances are floored at 1e-6, so a query on its prototype gets a zero gradient, not NaN.
    """
    squared = -squared_euclidean_logits(query_embeddings, class_prototypes)
    return -squared.clamp_min(1e-12).sqrt()


METRIC_LOGITS = {"euclidean": squared_euclidean_logits, "l2": euclidean_logits}
"""Parameter-free distances by name: ``logits(query [..., nq, D], prototypes [..., ways, D])``."""
DISTANCES = (*METRIC_LOGITS, "cosine")


class PrototypicalNetworks(Learner):
    """Prototypical Networks with squared Euclidean (default), Euclidean or cosine distance.

    Args:
        model: embedding network, ``[n, *input_shape] -> [n, D]``.
        task_type: must be ``"classification"``.
        distance: ``"euclidean"`` (``-||q - p||^2``, the paper's), ``"l2"`` (``-||q - p||``, not squared: on
            Omniglot it learns faster, see the README) or ``"cosine"`` (``s * cos(q, p)``, with a learned
            temperature ``s`` initialised to ``scale``; the cosine classifier of TF-IDF nearest centroid).
        support_splits: training only: the loss averages this many support/query splits of each episode's
            examples (1: the episode as sampled). With ``m = shots + queries`` examples of every class, split
            ``r`` takes examples ``r * shots, ..., r * shots + shots - 1`` (cyclically, in sampling order) of
            each class as the support and the rest as queries; split 0 is the sampled episode. Every split is
            a valid episode of the same shape made of images already embedded, so ``m`` splits of a 1-shot
            episode give each image both roles for the cost of one forward and backward pass through the
            network. Episodes must then be balanced (the same shots and queries in every class).
    """

    name = "protonet"
    any_ways = True

    def __init__(self, model: nn.Module, task_type: str = "classification", *, distance: str = "euclidean",
                 scale: float = 10.0, support_splits: int = 1) -> None:
        super().__init__(task_type)
        if isinstance(support_splits, bool) or not isinstance(support_splits, int) or support_splits < 1:
            raise ValueError(f"support_splits must be a positive int (1: the episode as sampled), got "
                             f"{support_splits!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0 (it multiplies cosine similarities), got {scale}")
        if task_type != "classification":
            raise ValueError("Prototypical Networks are a classification learner; got task_type="
                             f"{task_type!r}. Use a gradient learner such as 'maml' for regression")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module embedding network, got {type(model).__name__}")
        self.model = model
        self.distance = distance
        self.support_splits = support_splits
        if distance == "cosine":
            self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def _embed(self, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings ``[T, n_support, D]``, ``[T, n_query, D]`` of stacked tasks, in one forward pass."""
        tasks, n_support, n_query = support_x.shape[0], support_x.shape[1], query_x.shape[1]
        inputs = torch.cat([support_x, query_x], dim=1).flatten(0, 1)
        embeddings = self.model(inputs).reshape(tasks, n_support + n_query, -1)
        return embeddings[:, :n_support], embeddings[:, n_support:]

    def _distance_logits(self, query_embeddings: Tensor, class_prototypes: Tensor) -> Tensor:
        """``[T, n, D]`` x ``[T, ways, D]`` -> ``[T, n, ways]`` under the learner's distance."""
        if self.distance == "cosine":
            query, protos = F.normalize(query_embeddings, dim=-1), F.normalize(class_prototypes, dim=-1)
            return self.log_scale.exp() * (query @ protos.transpose(-1, -2))
        return METRIC_LOGITS[self.distance](query_embeddings, class_prototypes)

    def _logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int) -> Tensor:
        """Logits ``[T, n_query, ways]`` of stacked tasks ``[T, n, *input_shape]``."""
        support_embeddings, query_embeddings = self._embed(support_x, query_x)
        return self._distance_logits(query_embeddings, prototypes(support_embeddings, support_y, ways))

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        _check_episode(batch)
        if self.support_splits > 1:
            return self._split_loss(batch)
        logits = self._logits(batch.support_x, batch.support_y, batch.query_x, batch.ways)
        per_query = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten(), reduction="none")
        task_losses = per_query.view(len(batch), -1).mean(1)
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == batch.query_y).float().mean().item()
        loss = task_losses.mean()
        return MetaOutput(loss, task_losses, {"loss": loss.item(), "accuracy": accuracy})

    def _split_loss(self, batch: TaskBatch) -> MetaOutput:
        """The mean loss of ``support_splits`` support/query splits of every episode (see the class doc)."""
        shots, per_class = _balanced_shape(batch)
        distinct = per_class // math.gcd(per_class, shots)
        if self.support_splits > distinct:
            raise ValueError(f"support_splits={self.support_splits} is more than the {distinct} distinct "
                             f"splits of {shots}-shot episodes with {per_class - shots} queries per class; "
                             f"use at most {distinct} or sample more queries")
        support_embeddings, query_embeddings = self._embed(batch.support_x, batch.query_x)
        examples = torch.cat([support_embeddings, query_embeddings], dim=1)  # [T, n, D]
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)  # [T, n]
        one_hot = F.one_hot(labels, batch.ways).to(examples.dtype)  # [T, n, ways]
        rank = ((one_hot.cumsum(1) * one_hot).sum(-1) - 1).long()  # index of each example in its class
        task_losses, correct = [], []
        for split in range(self.support_splits):
            in_support = (rank - split * shots) % per_class < shots  # [T, n]
            weights = one_hot * in_support.unsqueeze(-1) / shots
            logits = self._distance_logits(examples, weights.transpose(1, 2) @ examples)  # [T, n, ways]
            per_example = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
            is_query = (~in_support).to(examples.dtype)
            task_losses.append((per_example.view_as(is_query) * is_query).sum(1) / is_query.sum(1))
            with torch.no_grad():
                correct.append(((logits.argmax(-1) == labels).to(examples.dtype) * is_query).sum()
                               / is_query.sum())
        task_losses_mean = torch.stack(task_losses).mean(0)
        loss = task_losses_mean.mean()
        accuracy = torch.stack(correct).mean().item()
        return MetaOutput(loss, task_losses_mean, {"loss": loss.item(), "accuracy": accuracy})

    def predict(self, task: Task) -> Tensor:
        _check_episode(task)
        logits = self._logits(task.support_x.unsqueeze(0), task.support_y.unsqueeze(0),
                              task.query_x.unsqueeze(0), task.ways)
        return logits[0]


def _balanced_shape(batch: TaskBatch) -> tuple[int, int]:
    """``(shots, shots + queries)`` of a batch with the same numbers of both in every class; else an error."""
    support_counts = F.one_hot(batch.support_y, batch.ways).sum(1)  # [T, ways]
    query_counts = F.one_hot(batch.query_y, batch.ways).sum(1)
    shots, queries = int(support_counts[0, 0]), int(query_counts[0, 0])
    if bool((support_counts != shots).any()) or bool((query_counts != queries).any()) or queries < 1:
        raise ValueError("support_splits > 1 needs balanced episodes (the same number of support examples, "
                         "and of queries (at least 1), in every class); sample them with an EpisodeSampler "
                         "or use support_splits=1")
    return shots, shots + queries


def _check_episode(episode: Task | TaskBatch) -> None:
    if not isinstance(episode, (Task, TaskBatch)):
        raise TypeError(f"expected a Task or TaskBatch, got {type(episode).__name__}; sample one with an "
                        "EpisodeSampler")
    if episode.support_y.dtype != torch.long:
        raise ValueError(f"Prototypical Networks need int64 class labels, got support_y of dtype "
                         f"{episode.support_y.dtype}; use a classification sampler")
    if episode.ways < 1:
        raise ValueError("the episode has no classes (Task.classes is empty); sample it with an "
                         "EpisodeSampler")
    for name, labels in (("support_y", episode.support_y), ("query_y", episode.query_y)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= episode.ways):
            raise ValueError(f"{name} must hold labels in 0..{episode.ways - 1} for a {episode.ways}-way "
                             f"episode, got values in {int(labels.min())}..{int(labels.max())}")


@register("protonet", head=False, description="Prototypical Networks (Snell et al. 2017), squared Euclidean")
def build_protonet(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                   **options: Any) -> PrototypicalNetworks:
    """Registry builder; ``ways`` is accepted and ignored (prototypes work for any number of ways).

    Options: ``distance`` (``"euclidean"``, ``"l2"`` or ``"cosine"``), ``scale`` (initial cosine
    temperature), ``support_splits`` (training splits per episode)."""
    unknown = sorted(set(options) - {"distance", "scale", "support_splits"})
    if unknown:
        raise TypeError(f"protonet takes no options other than distance, scale and support_splits, got "
                        f"{unknown}")
    return PrototypicalNetworks(model, task_type, **options)
