"""Meta-learned TF-IDF over token ids: :func:`corpus_idf` (initial piece weights) and
:class:`LexicalEncoder` (attention pooling of one-hot word and character n-gram ids)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.nn.text_tokenizer import PAD_ID, _as_tokens, _is_batched

__all__ = ["corpus_idf", "LexicalEncoder"]


def corpus_idf(tokens: Tensor, num_embeddings: int) -> Tensor:
    """Smooth idf ``ln((1 + n) / (1 + df)) + 1`` of every id, float32 ``[num_embeddings]``.

    ``df`` counts the ``n`` texts of ``tokens`` (``[n, max_words, pieces]`` or ``[n, max_words]``) holding
    an id in any word or piece slot; ids never seen get the largest idf, ``ln(1 + n) + 1``. Give it
    meta-training texts only (never test-domain text).
    """
    tokens = _as_tokens(tokens)
    flat = tokens.reshape(tokens.shape[0], -1)
    if flat.numel() and int(flat.max()) >= num_embeddings:
        raise ValueError(f"token ids go up to {int(flat.max())} but num_embeddings={num_embeddings}; "
                         "pass tokenizer.num_embeddings")
    ordered = flat.sort(dim=1).values
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    df = torch.bincount(ordered[first & (ordered != PAD_ID)], minlength=num_embeddings).to(torch.float64)
    n = flat.shape[0]
    return (torch.log((1 + n) / (1 + df)) + 1).to(torch.float32)


class LexicalEncoder(nn.Module):
    """Meta-learned TF-IDF: attention pooling of one-hot word and character n-gram ids.

    A text with pieces ``t`` (word ids and the hashed character n-grams of :class:`TextTokenizer`) becomes
    ``scale * normalize(sum_t exp(s_t) onehot(id_t))`` over the whole id space. Because of the L2
    normalisation this is softmax attention pooling of one-hot piece vectors (the softmax denominator
    cancels). The attention score of a piece is::

        s_t = log_weight[id_t] + channel[word | n-gram] + query . mean(context_embedding[pieces of word_t])

    ``log_weight`` starts at ``log(idf)`` (e.g. :func:`corpus_idf` of the meta-training texts), ``channel``
    and ``query`` at 0, so the untrained encoder with cosine prototypes is TF-IDF nearest centroid over words
    and n-grams; meta-training (e.g. Prototypical Networks episodes) re-weights the pieces. The context term
    reads hashed sub-word embeddings, so it also re-weights words never seen in meta-training.

    Input ``[..., max_words, pieces]``, output ``[..., num_embeddings]`` (stored dense).

    Args:
        num_embeddings: id space size (``TextTokenizer.num_embeddings``), the output width.
        idf: initial piece weights ``[num_embeddings]`` (positive); ``None``: all 1.
        context_dim: width of the sub-word embeddings of the context score (0: no context term).
        scale: initial output norm (learned, log-parametrised): a temperature for distance-based learners.
        learn_weights: learn the per-id weights (else only channel, context and scale are learned).
        dense: optional extra encoder (e.g. :class:`TextEncoder`) whose L2-normalised output is appended,
            multiplied by a learned weight (initially ``dense_weight``).
    """

    def __init__(self, num_embeddings: int, *, idf: Tensor | None = None, context_dim: int = 32,
                 scale: float = 4.0, learn_weights: bool = True, dense: nn.Module | None = None,
                 dense_weight: float = 0.5) -> None:
        super().__init__()
        if num_embeddings < 2:
            raise ValueError(f"num_embeddings must be >= 2 (padding + ids), got {num_embeddings}")
        if scale <= 0 or dense_weight <= 0:
            raise ValueError(f"scale and dense_weight must be > 0, got {scale} and {dense_weight}")
        weights = torch.ones(num_embeddings) if idf is None else torch.as_tensor(idf, dtype=torch.float32)
        if weights.shape != (num_embeddings,) or not bool((weights > 0).all()):
            raise ValueError(f"idf must be positive with shape [{num_embeddings}], got "
                             f"{tuple(weights.shape)}" + ("" if weights.shape != (num_embeddings,) else
                                                          " with values <= 0"))
        log_weight = weights.log()
        if learn_weights:
            self.log_weight = nn.Parameter(log_weight)
        else:
            self.register_buffer("log_weight", log_weight)
        self.channel = nn.Parameter(torch.zeros(2))
        self.context_dim = int(context_dim)
        if context_dim > 0:
            table = torch.randn(num_embeddings, context_dim) * context_dim ** -0.5
            self.context_embedding = nn.Parameter(table)
            self.query = nn.Parameter(torch.zeros(context_dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.dense = dense
        if dense is not None:
            self.log_dense_weight = nn.Parameter(torch.tensor(math.log(dense_weight)))
        self.num_embeddings = num_embeddings
        dense_dim = getattr(dense, "out_features", 0) if dense is not None else 0
        self.out_features = num_embeddings + int(dense_dim)

    @staticmethod
    def _pieces(tokens: Tensor) -> Tensor:
        """Token ids as ``[B, L, P]``."""
        tokens = _as_tokens(tokens)
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(-1)
        return tokens.reshape(-1, tokens.shape[-2], tokens.shape[-1])

    def scores(self, tokens: Tensor) -> Tensor:
        """Attention scores ``s_t`` ``[B, L, P]`` of every piece (padding: ``-inf``)."""
        tokens = self._pieces(tokens)
        checkable = tokens.numel() and not _is_batched(tokens)
        if checkable and (int(tokens.max()) >= self.num_embeddings or int(tokens.min()) < 0):
            raise ValueError(f"token ids must be in 0..{self.num_embeddings - 1}; the tokenizer does not "
                             "match this encoder (build it with num_embeddings=tokenizer.num_embeddings)")
        mask = tokens != PAD_ID
        kind = (torch.arange(tokens.shape[-1], device=tokens.device) > 0).long()       # 0 word, 1 n-gram
        s = self.log_weight[tokens] + self.channel[kind]
        if self.context_dim > 0:
            pieces = F.embedding(tokens, self.context_embedding) * mask.unsqueeze(-1)   # [B, L, P, c]
            words = pieces.sum(-2) / mask.sum(-1, keepdim=True).clamp(min=1)            # [B, L, c]
            s = s + (words @ self.query).unsqueeze(-1)
        return s.masked_fill(~mask, float("-inf"))

    def lexical(self, tokens: Tensor) -> Tensor:
        """Unit-norm weighted bag of pieces ``[B, num_embeddings]``."""
        s = self.scores(tokens)
        flat_ids = self._pieces(tokens).reshape(s.shape[0], -1)
        flat = s.reshape(s.shape[0], -1)
        weights = (flat - flat.max(-1, keepdim=True).values.detach()).exp()            # softmax numerators
        bag = torch.zeros(s.shape[0], self.num_embeddings, dtype=weights.dtype, device=weights.device)
        bag = bag.scatter_add(1, flat_ids, weights)
        return F.normalize(bag, dim=-1)

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = _as_tokens(tokens)
        lead = tokens.shape[:-2] if tokens.dim() >= 3 else tokens.shape[:-1]
        out = self.lexical(tokens)
        if self.dense is not None:
            dense = F.normalize(self.dense(tokens).reshape(out.shape[0], -1), dim=-1)
            out = torch.cat([out, self.log_dense_weight.exp() * dense], dim=-1)
        return (self.log_scale.exp() * out).reshape(*lead, self.out_features)
