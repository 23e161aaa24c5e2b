"""TF-IDF nearest-centroid baseline (not meta-learned) over the word ids of
:class:`~attnmeta.nn.text.TextTokenizer` tensors."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.nn.text_tokenizer import PAD_ID, word_ids
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["TfidfCentroid"]


class TfidfCentroid(Learner):
    """Nearest class centroid on TF-IDF vectors of the support examples (no meta-learning, no parameters).

    Per episode: the vocabulary is the support set's words; ``tf`` = word counts (``1 + log`` counts with
    ``sublinear_tf``); ``idf = ln((1 + n_docs) / (1 + df)) + 1`` over the support documents (scikit-learn's
    smooth idf), or over a fixed corpus when ``corpus_tokens`` is given; rows are L2-normalised, a class
    centroid is the mean of its support rows, and a query's logits are its cosine similarities to the
    centroids. Works on the word-id channel of :class:`TextTokenizer` tensors.
    """

    name = "tfidf-centroid"

    def __init__(self, *, sublinear_tf: bool = False, corpus_tokens: Tensor | None = None) -> None:
        super().__init__("classification")
        self.sublinear_tf = sublinear_tf
        self.corpus_idf: dict[int, float] | None = None
        if corpus_tokens is not None:
            words = word_ids(corpus_tokens)
            n_docs = words.shape[0]
            df: Counter[int] = Counter()
            for row in words.tolist():
                df.update({w for w in row if w != PAD_ID})
            self.corpus_idf = {w: math.log((1 + n_docs) / (1 + c)) + 1 for w, c in df.items()}
            self.corpus_default_idf = math.log(1 + n_docs) + 1

    @staticmethod
    def _counts(words: Tensor, vocab: Tensor) -> Tensor:
        """Term counts ``[n, |vocab|]`` (float64) of word-id rows ``[n, L]`` over a sorted ``vocab``."""
        position = torch.searchsorted(vocab, words.contiguous()).clamp(max=vocab.numel() - 1)
        hit = (vocab[position] == words) & (words != PAD_ID)
        counts = torch.zeros(words.shape[0], vocab.numel(), dtype=torch.float64)
        return counts.scatter_add_(1, position, hit.to(torch.float64))

    def _vectors(self, counts: Tensor, idf: Tensor) -> Tensor:
        """L2-normalised TF-IDF rows from term counts."""
        tf = torch.where(counts > 0, 1 + counts.clamp(min=1).log(), counts) if self.sublinear_tf else counts
        return F.normalize(tf * idf, dim=1)

    def predict(self, task: Task) -> Tensor:
        if not isinstance(task, Task) or task.support_y.dtype != torch.long:
            raise TypeError("TfidfCentroid.predict expects a classification Task with int64 labels")
        support, query = word_ids(task.support_x), word_ids(task.query_x)
        vocab = torch.unique(support[support != PAD_ID])
        if vocab.numel() == 0:
            return torch.zeros(query.shape[0], task.ways, dtype=torch.float64)
        support_counts = self._counts(support, vocab)
        if self.corpus_idf is None:
            df = (support_counts > 0).sum(0).to(torch.float64)
            idf = torch.log((1 + support.shape[0]) / (1 + df)) + 1
        else:
            idf = torch.tensor([self.corpus_idf.get(int(w), self.corpus_default_idf) for w in vocab],
                               dtype=torch.float64)
        support_vec = self._vectors(support_counts, idf)
        query_vec = self._vectors(self._counts(query, vocab), idf)
        centroids = torch.zeros(task.ways, vocab.numel(), dtype=torch.float64)
        centroids.index_add_(0, task.support_y, support_vec)
        centroids = F.normalize(centroids, dim=1)
        return (query_vec @ centroids.T).to(torch.float32)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        raise TypeError("TfidfCentroid is not meta-learned (it has no parameters); use it only with "
                        "evaluate()/predict()")
