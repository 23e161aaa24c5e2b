"""The baselines of few-shot sequence-to-sequence learning: multilingual transfer and training from scratch.

``MultilingualTransfer``: pre-train one model on all training tasks' pairs together (each meta-batch's
support and query pairs are one training batch; no inner loop), then fine-tune a copy on a new task's
support pairs (``Seq2SeqLearner.adapt``). ``Scratch``: the same fine-tuning from the random initialisation,
nothing meta-trained (the trainer only tests it).
"""

from __future__ import annotations

from typing import Any

from attnmeta.learners.base import MetaOutput
from attnmeta.learners.seq2seq.base import Seq2SeqLearner, batch_output
from attnmeta.tasks.seq2seq import Seq2SeqBatch, Vocabulary


class MultilingualTransfer(Seq2SeqLearner):
    """Pre-training on the pooled pairs of the training tasks, then plain fine-tuning (``finetune_*``)."""

    name = "transfer"

    def meta_loss(self, batch: Seq2SeqBatch) -> MetaOutput:
        params = self.params()
        groups = []
        for task in batch:
            encoded = self.encode_task(task)
            groups += [(encoded.support_source, encoded.support_target),
                       (encoded.query_source, encoded.query_target)]
        rolled = self.rolled_in(self.model, groups, self.explore)  # one batched roll-in
        losses = []
        for k in range(0, len(groups), 2):  # a task's support set, then its query set
            support = self.pair_loss(params, *groups[k], rolled[k])
            query = self.pair_loss(params, *groups[k + 1], rolled[k + 1])
            losses.append((support + query) / 2)
        return batch_output(losses, {})


class Scratch(Seq2SeqLearner):
    """The network trained on the new task's support pairs alone, from its initialisation (nothing
    meta-trained; ``finetune_steps`` is the training length)."""

    name = "scratch"
    meta_trained = False

    def __init__(self, vocabulary: Vocabulary, *, finetune_steps: int = 1500, finetune_lr: float = 1e-3,
                 finetune_batch: int = 20, **model_options: Any) -> None:
        super().__init__(vocabulary, finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                         finetune_batch=finetune_batch, **model_options)
