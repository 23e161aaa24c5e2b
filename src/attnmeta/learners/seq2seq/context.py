"""A language vector read from the support pairs: feature attention for sequence-to-sequence tasks.

``Seq2SeqTaskContext``: a set-attention task encoder (``attnmeta.nn.film.TaskEncoder``) reads a task's real
support pairs, each as the mean of the model's encoder states over its source and over its target, into a
vector ``z [dim]`` that the model adds to every source and decoder input embedding (its ``task_context``;
a language token computed instead of looked up). Meta-training is episodic: the loss is that of pairs the
encoder did not read (the query pairs, and the support set's hallucinated pairs when ``meta_hallucinate``
adds some), so that ``z`` can only carry what the language's pairs have in common. Pooled multilingual
training (``transfer``) has to average the languages' conflicting rules into one model; this model can
tell them apart, for a new language too. At test time ``z`` is computed once from the new task's real pairs
and the model is then fine-tuned as every sequence learner is (``finetune_*``; ``z`` is fine-tuned with it).
The output layer of ``z`` starts at zero, so the learner starts as the model it is initialised from.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from attnmeta.learners.base import MetaOutput
from attnmeta.learners.seq2seq.base import EncodedTask, Seq2SeqLearner, batch_output
from attnmeta.nn.film import TaskEncoder
from attnmeta.tasks.seq2seq import Seq2SeqBatch, Vocabulary


class Seq2SeqTaskContext(Seq2SeqLearner):
    """Transformer conditioned on a task vector from its support pairs (set attention, attention pooling).

    Args:
        vocabulary: see ``Seq2SeqLearner`` (and its model options, passed through ``model_options``).
        task_dim / task_heads / task_layers: the task encoder's width, attention heads and set-attention
            blocks.
    """

    name = "context"
    uses_task_context = True

    def __init__(self, vocabulary: Vocabulary, *, task_dim: int = 64, task_heads: int = 4,
                 task_layers: int = 1, **model_options: Any) -> None:
        super().__init__(vocabulary, **model_options)
        if task_dim < 1 or task_heads < 1 or task_layers < 0 or task_dim % task_heads:
            raise ValueError(f"task_dim must be a positive multiple of task_heads and task_layers >= 0, got "
                             f"task_dim={task_dim}, task_heads={task_heads}, task_layers={task_layers}")
        dim = self.model.dim
        self.task_encoder = TaskEncoder(dim, dim, task_dim, heads=task_heads, layers=task_layers)
        self.context_head = nn.Linear(task_dim, dim)
        nn.init.zeros_(self.context_head.weight)
        nn.init.zeros_(self.context_head.bias)

    def pooled_states(self, ids: Tensor) -> Tensor:
        """``ids [n, L]`` -> the mean of the encoder's states over each row's tokens, ``[n, dim]``."""
        memory, mask = self.model.encode(ids)
        weights = mask.transpose(1, 2).to(memory.dtype)  # [n, L, 1]
        return (memory * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def task_vector(self, source: Tensor, target: Tensor) -> Tensor:
        """The task vector ``z [dim]`` of support pairs ``source [n, S]``, ``target [n, T]``."""
        return self.context_head(self.task_encoder(self.pooled_states(source), self.pooled_states(target)))

    def encoded_vector(self, encoded: EncodedTask) -> Tensor:
        """``task_vector`` of the task's real support pairs (hallucinated ones are not read)."""
        real = encoded.support_source.shape[0] if encoded.real_support is None else encoded.real_support
        return self.task_vector(encoded.support_source[:real], encoded.support_target[:real])

    def meta_loss(self, batch: Seq2SeqBatch) -> MetaOutput:
        params = self.params()
        losses, norms = [], []
        for task in batch:
            encoded = self.encode_task(task)
            z = self.encoded_vector(encoded)
            conditioned = {**params, "task_context": z}
            loss = self.pair_loss(conditioned, encoded.query_source, encoded.query_target)
            real = encoded.real_support
            if real is not None and real < encoded.support_source.shape[0]:
                unread = self.pair_loss(conditioned, encoded.support_source[real:],
                                        encoded.support_target[real:])
                loss = (loss + unread) / 2
            losses.append(loss)
            norms.append(z.detach().norm().item())
        return batch_output(losses, {"task_vector_norm": sum(norms) / len(norms)})

    def task_model(self, encoded: EncodedTask) -> nn.Module:
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            model.task_context.copy_(self.encoded_vector(encoded))  # type: ignore[union-attr]
        return model
