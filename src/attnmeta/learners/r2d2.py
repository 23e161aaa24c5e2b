"""R2D2: a meta-learned embedding with a differentiable ridge-regression head (Bertinetto et al. 2019).

For each episode the support embeddings ``X [n, D]`` are regressed onto one-hot targets ``Y [n, ways]`` in
closed form, ``W = (X^T X + lam I)^{-1} X^T Y``, computed through the Woodbury identity as
``W = X^T (X X^T + lam I)^{-1} Y`` (an ``n x n`` system: few support examples, wide embeddings), and the
queries are scored ``alpha * (X_q W) + beta``. ``lam`` (log-parametrised), ``alpha`` and ``beta`` are
meta-learned with the embedding, as in R2D2; the scalar ``beta`` shifts every logit alike, so it leaves the
softmax (and hence the loss) unchanged: it is kept for fidelity to the paper and gets a zero gradient.

``DifferentiableHeadLearner`` is the scaffolding shared with MetaOptNet's SVM head (``metaoptnet_svm.py``):
embed support and queries in one forward pass, fit the head per episode, cross-entropy on the queries.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import Learner, MetaOutput, episode_classification_output
from attnmeta.learners.matching import check_classification_batch, embed_episodes
from attnmeta.learners.registry import register
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["DifferentiableHeadLearner", "R2D2", "ridge_head", "ridge_weights"]


def ridge_weights(support: Tensor, targets: Tensor, lam: Tensor | float) -> Tensor:
    """Ridge solution ``W = X^T (X X^T + lam I)^{-1} Y`` (Woodbury form of ``(X^T X + lam I)^{-1} X^T Y``).

    Args:
        support: ``X``, ``[..., n, D]`` support embeddings.
        targets: ``Y``, ``[..., n, ways]`` regression targets (one-hot labels).
        lam: ``lam > 0``, a float or a scalar tensor (differentiable).
    Returns: ``W``, ``[..., D, ways]``.
    """
    n = support.shape[-2]
    gram = support @ support.transpose(-1, -2)  # [..., n, n]
    eye = torch.eye(n, dtype=support.dtype, device=support.device)
    return support.transpose(-1, -2) @ torch.linalg.solve(gram + lam * eye, targets)


def ridge_head(support: Tensor, support_y: Tensor, query: Tensor, ways: int, lam: Tensor | float) -> Tensor:
    """Unscaled ridge logits ``X_q W`` ``[..., n_query, ways]``; support ``[..., n, D]`` with int64 labels
    ``[..., n]``, queries ``[..., n_query, D]``."""
    targets = F.one_hot(support_y, ways).to(support.dtype)
    return query @ ridge_weights(support, targets, lam)


class DifferentiableHeadLearner(Learner):
    """An embedding meta-trained through a base learner fitted in closed (or solver) form per episode.

    Subclasses implement ``head_logits(support [T, n, D], support_y [T, n], query [T, nq, D], ways)``.
    """

    name = "differentiable-head"

    def __init__(self, model: nn.Module, task_type: str = "classification") -> None:
        super().__init__(task_type)
        if task_type != "classification":
            raise ValueError(f"{self.name} is a classification learner; got task_type={task_type!r}. Use a "
                             "gradient learner such as 'maml' for regression")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module embedding network, got {type(model).__name__}")
        self.model = model

    def head_logits(self, support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
        raise NotImplementedError

    def _logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int) -> Tensor:
        support, query = embed_episodes(self.model, support_x, query_x)
        return self.head_logits(support, support_y, query, ways)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        check_classification_batch(batch, self.name)
        logits = self._logits(batch.support_x, batch.support_y, batch.query_x, batch.ways)
        return episode_classification_output(logits, batch.query_y)

    def predict(self, task: Task) -> Tensor:
        check_classification_batch(task, self.name)
        with torch.no_grad():
            return self._logits(task.support_x[None], task.support_y[None], task.query_x[None], task.ways)[0]


class R2D2(DifferentiableHeadLearner):
    """R2D2 (ridge-regression differentiable discriminator) on any embedding ``[n, *in] -> [n, D]``.

    Args:
        model: embedding network.
        lam: initial ridge penalty ``lam > 0`` (R2D2 meta-learns it; ``learn_lambda=False`` keeps it fixed,
            as MetaOptNet's R2D2 head with ``lam=50``).
        scale / bias: initial ``alpha`` and ``beta`` of the logits ``alpha * X_q W + beta`` (meta-learned).
    """

    name = "r2d2"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, lam: float = 1.0,
                 learn_lambda: bool = True, scale: float = 1.0, bias: float = 0.0) -> None:
        super().__init__(model, task_type)
        if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam > 0:
            raise ValueError(f"lam must be a number > 0 (the ridge penalty), got {lam!r}")
        if not isinstance(learn_lambda, bool):
            raise TypeError(f"learn_lambda must be True or False, got {learn_lambda!r}")
        log_lambda = torch.tensor(math.log(lam))
        if learn_lambda:
            self.log_lambda = nn.Parameter(log_lambda)
        else:
            self.register_buffer("log_lambda", log_lambda)
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def head_logits(self, support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
        """``alpha * X_q W + beta``, ``[T, nq, ways]``."""
        return self.scale * ridge_head(support, support_y, query, ways, self.log_lambda.exp()) + self.bias


@register("r2d2", head=False, description="R2D2 (Bertinetto et al. 2019): differentiable ridge-regression "
                                           "head (Woodbury), meta-learned lambda, scale and bias")
def build_r2d2(model: nn.Module, task_type: str = "classification", ways: int | None = None,
               **options: Any) -> R2D2:
    """Registry builder; ``ways`` is ignored (the head is fitted per episode, any number of ways). Options:
    ``lam``, ``learn_lambda``, ``scale``, ``bias``."""
    return R2D2(model, task_type, **options)
