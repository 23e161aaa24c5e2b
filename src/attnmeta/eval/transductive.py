"""Transductive inference on the embedding of any trained metric / transfer learner.

``Transductive(learner, method="tim")`` is a ``Learner`` for evaluation: ``predict(task)`` embeds the support
and query images of the episode in one forward pass through the trained learner's embedding network and
classifies all queries jointly with one of ``METHODS`` (``attnmeta.eval.transductive_methods``), or, for
``"finetune"``, fine-tunes a copy of the embedding network on the episode (Dhillon et al., "A Baseline for
Few-Shot Image Classification", ICLR 2020). The trained learner's parameters never change, so
``evaluate(Transductive(learner, method), episodes)`` compares directly with ``evaluate(learner, episodes)``.

A method is any ``(support_emb [Ns, D], support_y [Ns], query_emb [Nq, D], ways) -> probabilities
[Nq, ways]``; ``predict`` returns their logarithm as logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from attnmeta.errors import UserError
from attnmeta.eval.transductive_methods import bd_cspn, laplacianshot, pt_map, tim
from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.learners.matching import check_classification_batch
from attnmeta.learners.protonet import prototypes
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["EMBEDDING_LEARNERS", "FEATURE_METHODS", "METHODS", "Transductive", "embedding_network",
           "finetune_loss", "task_embeddings", "transductive_finetune"]

TransductiveMethod = Callable[..., Tensor]
#: Methods on fixed embeddings: ``(support_emb, support_y, query_emb, ways, **options) -> probs [Nq, ways]``.
FEATURE_METHODS: dict[str, TransductiveMethod] = {
    "bd-cspn": bd_cspn, "tim": tim, "pt-map": pt_map, "laplacianshot": laplacianshot,
}
#: Every method name (``"finetune"`` also fine-tunes the embedding network).
METHODS = (*FEATURE_METHODS, "finetune")
#: Learners whose ``model`` attribute is an embedding network ``[n, *input_shape] -> [n, ...]``.
EMBEDDING_LEARNERS = ("protonet", "matching", "feat", "transfer", "baseline++", "simpleshot", "contrastive")


def embedding_network(learner: Learner) -> nn.Module:
    """The embedding network of a trained ``learner`` (its ``model``), or a one-line ``UserError``."""
    model = getattr(learner, "model", None)
    name = getattr(learner, "name", type(learner).__name__)
    if (getattr(learner, "task_type", None) != "classification" or name not in EMBEDDING_LEARNERS
            or not isinstance(model, nn.Module)):
        raise UserError(f"transductive inference needs a learner with an embedding network "
                        f"({', '.join(EMBEDDING_LEARNERS)}); {name!r} has none")
    return model


def task_embeddings(model: nn.Module, task: Task, params: dict[str, Tensor] | None = None
                    ) -> tuple[Tensor, Tensor]:
    """``(support [Ns, D], query [Nq, D])`` embeddings of one episode in one forward pass (batch-statistics
    batch norm sees the whole episode, as in the learners' own ``predict``); ``params`` override the
    network's parameters (``torch.func.functional_call``)."""
    inputs = torch.cat([task.support_x, task.query_x])
    features = model(inputs) if params is None else functional_call(model, params, (inputs,))
    features = features.reshape(len(inputs), -1)
    return features[:len(task.support_x)], features[len(task.support_x):]


def finetune_loss(support_logits: Tensor, support_y: Tensor, query_logits: Tensor) -> Tensor:
    """Dhillon et al.'s transductive objective: ``CE(support) + mean_q H(softmax(query_logits))``."""
    probs = query_logits.softmax(-1)
    entropy = -(probs * query_logits.log_softmax(-1)).sum(-1).mean()
    return F.cross_entropy(support_logits, support_y) + entropy


def transductive_finetune(model: nn.Module, task: Task, *, steps: int = 25, lr: float = 5e-5) -> Tensor:
    """Transductive fine-tuning (Dhillon et al. 2020): probabilities ``[Nq, ways]``.

    A copy of the network's parameters and a new linear classifier on L2-normalised features (support-based
    initialisation: weights = normalised class means of the normalised support features, bias 0) are
    trained together by Adam (``lr``) for ``steps`` full-episode steps on ``finetune_loss``. The network
    itself is not changed.
    """
    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # BN running stats may be updated
    with torch.no_grad():
        support, _ = task_embeddings(model, task)
        weight = F.normalize(prototypes(F.normalize(support, dim=-1), task.support_y, task.ways), dim=-1)
    weight = weight.clone().requires_grad_(True)
    bias = torch.zeros(task.ways, dtype=weight.dtype, device=weight.device, requires_grad=True)
    optimizer = torch.optim.Adam([*params.values(), weight, bias], lr=lr)

    def logits() -> tuple[Tensor, Tensor]:
        support_emb, query_emb = task_embeddings(model, task, {**params, **buffers})
        return (F.normalize(support_emb, dim=-1) @ weight.T + bias,
                F.normalize(query_emb, dim=-1) @ weight.T + bias)

    with torch.enable_grad():
        for _ in range(steps):
            support_logits, query_logits = logits()
            loss = finetune_loss(support_logits, task.support_y, query_logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return logits()[1].softmax(-1)


class Transductive(Learner):
    """A trained learner's embedding with a transductive classifier; for evaluation only.

    Args:
        learner: a trained classification learner with an embedding network (``EMBEDDING_LEARNERS``).
        method: one of ``METHODS``.
        options: keyword hyper-parameters of the method (defaults: the paper's).
    """

    def __init__(self, learner: Learner, method: str = "tim", **options: Any) -> None:
        super().__init__("classification")
        if method not in METHODS:
            raise UserError(f"unknown transductive method {method!r}; choose one of {', '.join(METHODS)}")
        embedding_network(learner)
        self.learner, self.method, self.options = learner, method, options
        self.name = f"{learner.name}+{method}"
        self.any_ways = learner.any_ways

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        raise TypeError("transductive inference is for evaluation only: meta-train the wrapped learner "
                        "(transductive.learner) and wrap it again to evaluate")

    def predict(self, task: Task) -> Tensor:
        """Log-probabilities ``[Nq, ways]`` of the queries, all classified jointly."""
        check_classification_batch(task, self.name)
        model = embedding_network(self.learner)
        if self.method == "finetune":
            probs = transductive_finetune(model, task, **self.options)
        else:
            with torch.no_grad():
                support, query = task_embeddings(model, task)
            probs = FEATURE_METHODS[self.method](support, task.support_y, query, task.ways, **self.options)
        return torch.log(probs.detach().clamp_min(1e-12))
