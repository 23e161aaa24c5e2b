"""Text models trained from scratch on CPU: a download-free tokenizer, an attention-pooling encoder, and a
TF-IDF nearest-centroid baseline.

* :class:`TextTokenizer` is built from training text only. Each word becomes ``pieces`` ids: its own id
  (a vocabulary id for frequent training words, a hashed bucket for any other word) followed by hashed
  character n-grams of ``<word>`` (fastText style), so words never seen in training (new domains) still get
  distinct, stable ids and share sub-word pieces with known words. ``encode`` returns one padded int64 tensor
  ``[n, max_words, pieces]`` (0 = padding), which the episode samplers index like any other tensor data set.
* :class:`TextEncoder` maps such a tensor to ``[n, out_dim]`` features: word vectors = mean of piece
  embeddings, optional residual self-attention over words, and multi-head attention pooling with learned
  queries (the feature attention of this domain). Padding is masked everywhere. Written with plain tensor ops,
  so it works under ``torch.func.functional_call`` / ``vmap`` / ``grad``.
* :class:`LexicalEncoder` is a meta-learned TF-IDF: attention pooling of one-hot word and character n-gram
  ids, with scores initialised to ``log idf`` of the meta-training text (:func:`corpus_idf`) and a sub-word
  context term; with cosine prototypes the untrained encoder is TF-IDF nearest centroid over words and
  n-grams, and meta-training re-weights the pieces.
* :class:`TfidfCentroid` is the non-meta-learned baseline: nearest class centroid of the support set's TF-IDF
  vectors (cosine similarity), computed per episode from the word ids.

Modules: :mod:`attnmeta.nn.text_tokenizer` (tokenizer, ``word_ids``), :mod:`attnmeta.nn.text_encoder`,
:mod:`attnmeta.nn.text_lexical` (``LexicalEncoder``, ``corpus_idf``), :mod:`attnmeta.nn.text_tfidf`
(``TfidfCentroid``); every name is importable from here, and :func:`build_text_backbone` is defined here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnmeta.nn.text_encoder import TextEncoder
from attnmeta.nn.text_lexical import LexicalEncoder, corpus_idf
from attnmeta.nn.text_tfidf import TfidfCentroid
from attnmeta.nn.text_tokenizer import PAD_ID as PAD_ID
from attnmeta.nn.text_tokenizer import TextTokenizer, word_ids

__all__ = ["TextTokenizer", "TextEncoder", "LexicalEncoder", "TfidfCentroid", "corpus_idf", "word_ids",
           "build_text_backbone"]


def build_text_backbone(in_shape: Sequence[int], out_features: int | None = None, *, num_embeddings: int,
                        encoder: str = "lexical", idf: Sequence[float] | None = None, context_dim: int = 32,
                        dim: int = 64, heads: int = 2, dense: bool = False, learn_weights: bool = True,
                        dense_weight: float = 0.5, **options: Any) -> nn.Module:
    """The ``"text"`` backbone of ``attnmeta.nn.backbones.build_backbone`` (token ids ``[n, *in_shape]``).

    ``encoder="lexical"``: :class:`LexicalEncoder` (``idf``: initial piece weights, a list of
    ``num_embeddings`` floats; ``learn_weights=False`` keeps them fixed; ``dense=True`` appends an
    attention-pooling encoder of width ``dim``, weighted by a learned weight starting at ``dense_weight``);
    ``"attention"``: :class:`TextEncoder` (``dim``, ``heads`` and its other keyword ``options``). With
    ``out_features`` (head learners) a zero-initialised ``Linear(D, out_features)`` follows.
    """
    if len(in_shape) not in (1, 2):
        raise ValueError(f"the text backbone takes token ids [max_words] or [max_words, pieces], got "
                         f"in_shape={tuple(in_shape)}")
    if encoder == "lexical":
        extra = TextEncoder(num_embeddings, dim, dim, heads=heads, **options) if dense else None
        if options and not dense:
            raise TypeError(f"unexpected keyword argument(s) {sorted(options)} for the lexical encoder")
        weights = None if idf is None else torch.tensor(list(idf), dtype=torch.float32)
        model: LexicalEncoder | TextEncoder = LexicalEncoder(
            num_embeddings, idf=weights, context_dim=context_dim, dense=extra, learn_weights=learn_weights,
            dense_weight=dense_weight)
    elif encoder == "attention":
        model = TextEncoder(num_embeddings, dim, dim, heads=heads, **options)
    else:
        raise ValueError(f"text backbone encoder must be 'lexical' or 'attention', got {encoder!r}")
    if out_features is None:
        return model
    head = nn.Linear(model.out_features, out_features)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(model, head)
