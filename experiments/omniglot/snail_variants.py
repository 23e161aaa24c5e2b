"""SNAIL options tried on Omniglot that did not help, as a plugin learner ``snail-variants``.

They used to be options of ``attnmeta.learners.snail.SNAIL``; the measurements are in the research notes
(``docs/research-notes.md``, the SNAIL rows): none of them brought SNAIL nearer its embedding's own
nearest-prototype classifier. Import this file to register the learner, e.g.::

    attnmeta train omniglot --import experiments/omniglot/snail_variants.py --algo snail-variants \\
        --train-ways 150 --set algo_options.subtasks=64 --set algo_options.prototype_loss_weight=2 \\
        --set algo_options.prototype_distance=l2

``snail-variants`` takes every ``snail`` option and:

- ``prototype_distance``: the auxiliary loss's (and the residual's) distance, ``"euclidean"`` (squared,
  default, as in ``snail``) or ``"l2"`` (not squared; see ``PrototypicalNetworks``).
- ``prototype_residual``: SNAIL's query logits are added to the Prototypical Networks logits of the same raw
  embeddings (times a learned weight starting at 1), so the sequence model learns a correction to
  nearest-prototype classification, in training and in prediction. On Omniglot (30 CPU-minutes) the
  correction added nothing measurable: the trained embedding scored the same 98.39% as a nearest-prototype
  classifier alone.
- ``input_noise``: in ``meta_loss`` in training mode only (``predict`` never adds it), Gaussian noise of this
  standard deviation is added to the (standardised, when ``normalize``) embeddings the sequence model reads,
  so its head learns on less separable inputs than the training classes' embeddings. No better on the
  monitor at equal steps (research notes).
- ``shuffle_features``: in ``meta_loss`` in training mode only, each task's embeddings get their own random
  permutation and sign flips of the feature coordinates (the same for the task's support and queries).
  Distances and inner products within a task are unchanged, so the sequence model cannot tie its
  computation to particular feature directions of the training classes. No better either.
- ``subtasks``: 0 by default (training episodes must then be ``ways``-way); ``n > 0``: training episodes may
  have more classes than ``ways``; each is embedded once, its auxiliary loss (when
  ``prototype_loss_weight``) covers all its classes, and the sequence model is trained on ``n`` random
  ``ways``-way tasks carved from it (``draw_subtasks``). ``predict`` still takes ``ways``-way tasks. 97.92%
  on 5-way subtasks of 150-way episodes, no better than the 5-way recipe.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnmeta.learners import register
from attnmeta.learners.base import MetaOutput, episode_classification_output
from attnmeta.learners.matching import check_classification_batch
from attnmeta.learners.protonet import METRIC_LOGITS, prototypes
from attnmeta.learners.snail import SNAIL
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["SNAILVariants", "draw_subtasks", "shuffle_task_features"]


def shuffle_task_features(support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """One random permutation and sign flip of the feature coordinates per task.

    ``support [T, ns, D]``, ``query [T, nq, D]`` -> same shapes; within a task every distance and inner
    product is unchanged (an orthogonal map), across tasks the coordinates mean different things.
    """
    tasks, _, dim = support.shape
    order = torch.rand(tasks, dim, device=support.device).argsort(dim=1)
    signs = torch.randint(0, 2, (tasks, 1, dim), device=support.device).to(support.dtype) * 2 - 1

    def apply(x: Tensor) -> Tensor:
        return x.gather(2, order[:, None, :].expand_as(x)) * signs

    return apply(support), apply(query)


def _group_by_class(embeddings: Tensor, labels: Tensor, classes: int, what: str) -> Tensor:
    """``[T, n, D]`` examples, labels ``[T, n]`` -> ``[T, classes, n // classes, D]``, grouped by label."""
    tasks, count, dim = embeddings.shape
    per_class = count // classes
    order = labels.argsort(dim=1, stable=True)
    expected = torch.arange(classes, device=labels.device).repeat_interleave(per_class)
    if per_class * classes != count or not torch.equal(labels.gather(1, order),
                                                       expected.expand(tasks, -1)):
        raise ValueError(f"subtasks need the same number of {what} examples for every class of every "
                         f"task ({count} {what} examples over {classes} classes); sample N-way K-shot "
                         "Q-query episodes")
    return embeddings.gather(1, order[..., None].expand(-1, -1, dim)).view(tasks, classes, per_class, dim)


def draw_subtasks(support_emb: Tensor, support_y: Tensor, query_emb: Tensor, query_y: Tensor, ways: int,
                  count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``count`` random ``ways``-way tasks from the classes of each of ``T`` larger episodes.

    Args:
        support_emb: ``[T, W * K, D]`` embeddings of ``W``-way ``K``-shot episodes (``W >= ways``), labels
            ``support_y [T, W * K]`` in ``0..W-1``; query_emb ``[T, W * Q, D]``, query_y ``[T, W * Q]``.
    Returns:
        ``(support [T * count, ways * K, D], support_y, query [T * count, ways * Q, D], query_y)``: each
        subtask's classes are ``ways`` distinct classes of its episode, drawn with the global torch RNG, their
        order is the subtask's labels ``0..ways-1``; examples are class-major, like ``EpisodeSampler``'s.
    """
    tasks, _, dim = support_emb.shape
    classes = int(support_y.max()) + 1
    if ways > classes:
        raise ValueError(f"cannot draw {ways}-way subtasks from {classes}-way episodes")
    support = _group_by_class(support_emb, support_y, classes, "support")
    query = _group_by_class(query_emb, query_y, classes, "query")
    chosen = torch.rand(tasks, count, classes, device=support_emb.device).argsort(-1)[..., :ways]
    task_index = torch.arange(tasks, device=support_emb.device)[:, None, None]

    def pick(grouped: Tensor) -> tuple[Tensor, Tensor]:
        per_class = grouped.shape[2]
        examples = grouped[task_index, chosen].reshape(tasks * count, ways * per_class, dim)
        labels = torch.arange(ways, device=grouped.device).repeat_interleave(per_class)
        return examples, labels.expand(tasks * count, -1)

    return (*pick(support), *pick(query))


class SNAILVariants(SNAIL):
    """``SNAIL`` with the options of this module's docstring (every other keyword goes to ``SNAIL``)."""

    name = "snail-variants"
    larger_episodes_hint = "or set subtasks > 0 to train on larger episodes"

    def __init__(self, model: nn.Module, ways: int, *, prototype_distance: str = "euclidean",
                 prototype_residual: bool = False, input_noise: float = 0.0, shuffle_features: bool = False,
                 subtasks: int = 0, **options) -> None:
        if prototype_distance not in METRIC_LOGITS:
            raise ValueError(f"prototype_distance must be one of {tuple(METRIC_LOGITS)}, got "
                             f"{prototype_distance!r}")
        if isinstance(input_noise, bool) or not isinstance(input_noise, (int, float)) or not input_noise >= 0:
            raise ValueError(f"input_noise must be a standard deviation >= 0 (0: off), got {input_noise!r}")
        if isinstance(subtasks, bool) or not isinstance(subtasks, int) or subtasks < 0:
            raise ValueError(f"subtasks must be an int >= 0 (0: off), got {subtasks!r}")
        super().__init__(model, ways, **options)
        self.prototype_logits = METRIC_LOGITS[prototype_distance]
        self.prototype_residual = bool(prototype_residual)
        self.input_noise = float(input_noise)
        self.shuffle_features = bool(shuffle_features)
        self.subtasks = subtasks
        if self.prototype_residual:
            self.residual_weight = nn.Parameter(torch.tensor(1.0))

    def sequence_logits(self, support_emb: Tensor, support_y: Tensor, query_emb: Tensor,
                        input_noise: float = 0.0, shuffle_features: bool = False) -> Tensor:
        """``SNAIL.sequence_logits``; ``input_noise``: standard deviation of Gaussian noise added to the
        sequence model's inputs; ``shuffle_features``: permute and sign-flip each task's feature coordinates
        at random; plus the weighted prototype logits when ``prototype_residual``."""
        support, query = self.sequence_inputs(support_emb, query_emb)
        if input_noise:
            support = support + input_noise * torch.randn_like(support)
            query = query + input_noise * torch.randn_like(query)
        if shuffle_features:
            support, query = shuffle_task_features(support, query)
        logits = self.read_sequence(support, support_y, query)
        if not self.prototype_residual:
            return logits
        centres = prototypes(support_emb, support_y, self.ways)
        return logits + self.residual_weight * self.prototype_logits(query_emb, centres)

    def _check(self, batch: Task | TaskBatch, larger_allowed: bool = False) -> None:
        if not larger_allowed or batch.ways == self.ways:
            return super()._check(batch)
        check_classification_batch(batch, self.name)
        if batch.ways < self.ways:
            raise ValueError(f"{self.name} was built {self.ways}-way and cannot carve {self.ways}-way "
                             f"subtasks from a {batch.ways}-way episode; sample episodes of at least "
                             f"{self.ways} ways")

    def check_training_ways(self, train_ways: int, ways: int) -> None:
        if not (self.subtasks and train_ways > self.ways):
            super().check_training_ways(train_ways, ways)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        self._check(batch, larger_allowed=self.subtasks > 0)
        support_emb, query_emb = self.embed(batch)
        sequence = (support_emb, batch.support_y, query_emb, batch.query_y)
        if batch.ways > self.ways:
            sequence = draw_subtasks(*sequence, self.ways, self.subtasks)
        logits = self.sequence_logits(*sequence[:3], input_noise=self.input_noise if self.training else 0.0,
                                      shuffle_features=self.shuffle_features and self.training)
        out = episode_classification_output(logits, sequence[3])
        if batch.ways > self.ways:  # per-task losses: the mean over each episode's subtasks
            out = MetaOutput(out.loss, out.task_losses.view(batch.query_y.shape[0], -1).mean(1), out.metrics)
        return self.with_prototype_loss(out, support_emb, query_emb, batch)


@register("snail-variants", head=False,
          description="SNAIL with the options that did not help (experiments/omniglot/snail_variants.py)")
def build_snail_variants(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                         **options) -> SNAILVariants:
    if ways is None:
        raise ValueError("snail-variants needs ways=<number of classes> (its label inputs are one-hot of "
                         "that size)")
    return SNAILVariants(model, ways, task_type=task_type, **options)
