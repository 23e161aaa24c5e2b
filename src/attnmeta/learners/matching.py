"""Matching Networks (Vinyals et al. 2016), with optional full-context embeddings (FCE).

A query is classified by attention over the support set: ``a(x, x_i) = softmax_i(s * cos(f(x), g(x_i)))``
and ``P(y = c | x) = sum_i a(x, x_i) [y_i = c]``. ``predict`` returns ``log P`` as logits ``[n_query, ways]``.

With ``fce=True`` the support embeddings are re-read by a bidirectional LSTM over the support set
(``g(x_i) = h_fwd_i + h_bwd_i + g'(x_i)``) and each query embedding is refined by an attention LSTM with
``process_steps`` read steps over the support (paper, appendix A.2).

Deviation from the paper (documented, optional): the cosine similarities are multiplied by a learned
scale ``s`` (initialised to ``scale``; ``learn_scale=False, scale=1`` gives the paper's kernel). With
cosines in [-1, 1] a unit scale caps the attention's confidence and slows training a lot.

Helpers used by the other metric / sequence learners of this package live here too: ``embed_episodes``
and ``check_classification_batch``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import Learner, MetaOutput, episode_classification_output
from attnmeta.learners.registry import register
from attnmeta.nn.layers import lstm_update
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["MatchingNetworks", "FullContextEmbedding", "embed_episodes", "check_classification_batch",
           "infer_feature_dim"]


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------
def check_classification_batch(batch: TaskBatch | Task, learner: str) -> None:
    """Raise a clear error unless ``batch`` is a classification episode (int64 labels, ``ways >= 2``)."""
    if not isinstance(batch, (Task, TaskBatch)):
        raise TypeError(f"{learner} expects a Task or TaskBatch, got {type(batch).__name__}; "
                        "sample one with an EpisodeSampler")
    if batch.support_y.dtype != torch.long:
        raise ValueError(f"{learner} is a classification learner: support_y must hold int64 labels, got "
                         f"{batch.support_y.dtype}; use a classification sampler, not a regression family")
    if batch.ways < 1:
        raise ValueError(f"{learner} needs the episode's classes (Task.classes) to know the number of ways; "
                         "got an episode with no classes")
    if batch.support_y.numel() and int(batch.support_y.max()) >= batch.ways:
        raise ValueError(f"support labels must be in 0..{batch.ways - 1} for a {batch.ways}-way episode, got "
                         f"max label {int(batch.support_y.max())}")


def embed_episodes(model: nn.Module, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
    """Embed support and query inputs of ``T`` tasks in one forward pass.

    Args:
        support_x: ``[T, n_support, *input_shape]``; query_x: ``[T, n_query, *input_shape]``.

    Returns:
        ``(support_emb [T, n_support, D], query_emb [T, n_query, D])`` (model outputs flattened to ``D``).
    """
    tasks, n_support, n_query = support_x.shape[0], support_x.shape[1], query_x.shape[1]
    inputs = torch.cat([support_x, query_x], dim=1).flatten(0, 1)
    features = model(inputs).reshape(tasks, n_support + n_query, -1)
    return features[:, :n_support], features[:, n_support:]


def infer_feature_dim(model: nn.Module, input_shape: tuple[int, ...] | None) -> int:
    """Embedding size of ``model``: its int ``out_features`` or ``feature_dim``, else a dry run on zeros."""
    for attribute in ("out_features", "feature_dim"):
        value = getattr(model, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    if input_shape is None:
        raise ValueError("cannot infer the embedding size of the model: pass feature_dim=<embedding size> "
                         "or input_shape=<shape of one input>, or give the model an int out_features")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        dim = model(torch.zeros(2, *input_shape)).reshape(2, -1).shape[1]
    model.train(was_training)
    return int(dim)


# ---------------------------------------------------------------------------------------------------------
# Full-context embeddings
# ---------------------------------------------------------------------------------------------------------
class _AttentionLSTMCell(nn.Module):
    """LSTM cell whose input is ``f'(x)`` (``D``) and whose recurrent input is ``[h, r]`` (``2D``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.input_map = nn.Linear(dim, 4 * dim)
        self.recurrent_map = nn.Linear(2 * dim, 4 * dim, bias=False)
        with torch.no_grad():
            self.input_map.bias.zero_()
            self.input_map.bias[dim:2 * dim].fill_(1.0)  # forget-gate bias 1

    def forward(self, x: Tensor, recurrent: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
        return lstm_update(self.input_map(x) + self.recurrent_map(recurrent), cell)


class FullContextEmbedding(nn.Module):
    """FCE of Matching Networks: support ``[T, ns, D]`` and queries ``[T, nq, D]`` -> same shapes."""

    def __init__(self, dim: int, process_steps: int) -> None:
        super().__init__()
        if process_steps < 1:
            raise ValueError(f"process_steps must be >= 1, got {process_steps}")
        self.dim, self.process_steps = dim, process_steps
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = _AttentionLSTMCell(dim)

    def embed_support(self, support: Tensor) -> Tensor:
        """``g(x_i) = h_fwd_i + h_bwd_i + g'(x_i)`` over the support sequence, ``[T, ns, D]``."""
        out, _ = self.support_lstm(support)
        return out[..., :self.dim] + out[..., self.dim:] + support

    def embed_query(self, query: Tensor, support: Tensor) -> Tensor:
        """Attention LSTM: ``process_steps`` reads of support ``[T, ns, D]`` by queries ``[T, nq, D]``."""
        h = torch.zeros_like(query)
        cell = torch.zeros_like(query)
        read = torch.zeros_like(query)
        for _ in range(self.process_steps):
            h_hat, cell = self.query_cell(query, torch.cat([h, read], dim=-1), cell)
            h = h_hat + query
            weights = torch.softmax(h @ support.transpose(1, 2), dim=-1)  # [T, nq, ns]
            read = weights @ support
        return h

    def forward(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        support = self.embed_support(support)
        return support, self.embed_query(query, support)


# ---------------------------------------------------------------------------------------------------------
# Learner
# ---------------------------------------------------------------------------------------------------------
class MatchingNetworks(Learner):
    """Matching Networks over any embedding network.

    Args:
        model: embedding network, ``[B, *input_shape] -> [B, ...]`` (flattened to ``D`` features).
        fce: use full-context embeddings (needs ``feature_dim`` or ``input_shape`` to size the LSTMs).
        process_steps: attention-LSTM read steps of the query FCE.
        scale: initial multiplier of the cosine similarities; learn_scale: learn it (log-parametrised).
        feature_dim / input_shape: embedding size, or the input shape used to infer it (FCE only).
    """

    name = "matching"

    def __init__(self, model: nn.Module, *, task_type: str = "classification", fce: bool = False,
                 process_steps: int = 5, scale: float = 10.0, learn_scale: bool = True,
                 feature_dim: int | None = None, input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__(task_type)
        if task_type != "classification":
            raise ValueError("Matching Networks are a classification learner; use task_type='classification' "
                             "(for regression use maml or snail)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module embedding network, got {type(model).__name__}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0 (it multiplies cosine similarities), got {scale}")
        self.model = model
        self.fce = None
        if fce:
            dim = feature_dim or infer_feature_dim(model, input_shape)
            self.fce = FullContextEmbedding(dim, process_steps)
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def attention_logits(self, support_emb: Tensor, support_y: Tensor, query_emb: Tensor,
                         ways: int) -> Tensor:
        """``log P(y | x)`` ``[T, nq, ways]``, queries ``[T, nq, D]``; support ``[T, ns, D]``, ``[T, ns]``"""
        if self.fce is not None:
            support_emb, query_emb = self.fce(support_emb, query_emb)
        cosine = F.normalize(query_emb, dim=-1) @ F.normalize(support_emb, dim=-1).transpose(1, 2)
        attention = torch.softmax(self.log_scale.exp() * cosine, dim=-1)  # [T, nq, ns]
        one_hot = F.one_hot(support_y, ways).to(attention.dtype)  # [T, ns, ways]
        probs = attention @ one_hot
        return torch.log(probs.clamp_min(1e-12))

    def _logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int) -> Tensor:
        support_emb, query_emb = embed_episodes(self.model, support_x, query_x)
        return self.attention_logits(support_emb, support_y, query_emb, ways)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        check_classification_batch(batch, self.name)
        logits = self._logits(batch.support_x, batch.support_y, batch.query_x, batch.ways)
        return episode_classification_output(logits, batch.query_y, log_probs=True)

    def predict(self, task: Task) -> Tensor:
        check_classification_batch(task, self.name)
        with torch.no_grad():
            logits = self._logits(task.support_x[None], task.support_y[None], task.query_x[None], task.ways)
        return logits[0]


@register("matching", head=False, description="Matching Networks (cosine attention over the support set, "
                                                "optional full-context embeddings)")
def build_matching(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                   **options: Any) -> MatchingNetworks:
    return MatchingNetworks(model, task_type=task_type, **options)
