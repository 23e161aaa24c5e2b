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
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["TextTokenizer", "TextEncoder", "LexicalEncoder", "TfidfCentroid", "corpus_idf", "word_ids",
           "build_text_backbone"]

PAD_ID = 0
_WORD_RE = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def _stable_hash(text: str) -> int:
    """Process-independent hash (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


class TextTokenizer:
    """Words plus hashed character n-grams; built from training text, no downloads.

    Id layout: ``0`` padding, ``1 .. V`` vocabulary words, then ``word_buckets`` hashed ids for other words,
    then ``ngram_buckets`` hashed character n-gram ids. ``num_embeddings`` is the total.

    Args:
        vocab: the known words (from :meth:`fit`), id ``i + 1`` for ``vocab[i]``.
        max_words: words kept per text (longer texts are truncated), the tensor's second dimension.
        pieces: ids per word (1 word id + up to ``pieces - 1`` n-grams), the third dimension.
        ngram_sizes: character n-gram lengths over ``<word>``; empty for words only.
        word_buckets, ngram_buckets: hash table sizes for out-of-vocabulary words and for n-grams.
    """

    def __init__(self, vocab: Sequence[str], *, max_words: int = 32, pieces: int = 12,
                 ngram_sizes: Sequence[int] = (3,), word_buckets: int = 1 << 16,
                 ngram_buckets: int = 1 << 16) -> None:
        if max_words < 1 or pieces < 1:
            raise ValueError(f"max_words and pieces must be >= 1, got max_words={max_words}, pieces={pieces}")
        if word_buckets < 1 or (ngram_sizes and ngram_buckets < 1):
            raise ValueError("word_buckets (and ngram_buckets when ngram_sizes is not empty) must be >= 1")
        if any(int(n) < 1 for n in ngram_sizes):
            raise ValueError(f"ngram_sizes must be positive lengths, got {list(ngram_sizes)}")
        self.vocab = list(vocab)
        self.word_to_id = {w: i + 1 for i, w in enumerate(self.vocab)}
        if len(self.word_to_id) != len(self.vocab):
            raise ValueError("vocab contains duplicate words")
        self.max_words = int(max_words)
        self.pieces = int(pieces)
        self.ngram_sizes = tuple(int(n) for n in ngram_sizes)
        self.word_buckets = int(word_buckets)
        self.ngram_buckets = int(ngram_buckets) if self.ngram_sizes else 0
        self._cache: dict[str, list[int]] = {}

    # Construction ---------------------------------------------------------------------------------------
    @staticmethod
    def split_words(text: str) -> list[str]:
        """Lower-cased words (letters/digits/underscore, with an inner apostrophe kept: ``don't``)."""
        return _WORD_RE.findall(text.lower())

    @classmethod
    def fit(cls, texts: Iterable[str], *, max_vocab: int = 20000, min_count: int = 1, **options: Any
            ) -> TextTokenizer:
        """Build the vocabulary from training ``texts``: the ``max_vocab`` most frequent words seen at least
        ``min_count`` times (ties broken alphabetically). ``options`` go to the constructor."""
        if isinstance(texts, str):
            raise TypeError("fit expects a list of texts, got one string; wrap it in a list")
        counts: Counter[str] = Counter()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is a {type(text).__name__}, expected str")
            counts.update(cls.split_words(text))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words[:max_vocab], **options)

    @property
    def num_embeddings(self) -> int:
        """Size of the id space (rows of the embedding table a :class:`TextEncoder` needs)."""
        return 1 + len(self.vocab) + self.word_buckets + self.ngram_buckets

    # Encoding --------------------------------------------------------------------------------------------
    def word_pieces(self, word: str) -> list[int]:
        """Ids of one (lower-cased) word: its word id, then its hashed character n-grams (truncated)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        word_id = self.word_to_id.get(word)
        if word_id is None:
            word_id = 1 + len(self.vocab) + _stable_hash("w:" + word) % self.word_buckets
        ids = [word_id]
        if self.ngram_sizes and self.pieces > 1:
            marked = f"<{word}>"
            offset = 1 + len(self.vocab) + self.word_buckets
            for n in self.ngram_sizes:
                for start in range(0, max(len(marked) - n + 1, 0)):
                    ids.append(offset + _stable_hash(marked[start:start + n]) % self.ngram_buckets)
            ids = ids[:self.pieces]
        self._cache[word] = ids
        return ids

    def encode(self, texts: Sequence[str] | str) -> Tensor:
        """Token ids ``[n, max_words, pieces]`` (int64, 0 = padding) of ``n`` texts.

        A text without any word gets one out-of-vocabulary word, so every row has at least one token.
        """
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.max_words, self.pieces), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is a {type(text).__name__} ({text!r}); encode expects strings")
            words = self.split_words(text)[:self.max_words] or [""]
            for j, word in enumerate(words):
                ids = self.word_pieces(word)
                out[i, j, :len(ids)] = ids
        return torch.from_numpy(out)

    __call__ = encode

    def trim(self, tokens: Tensor) -> Tensor:
        """Drop trailing all-padding word positions (shorter tensors, same encoder outputs)."""
        used = (tokens[..., 0] != PAD_ID).any(dim=tuple(range(tokens.dim() - 2)))
        length = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
        return tokens[..., :length, :].contiguous()

    # Saving ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description; :meth:`from_dict` rebuilds an identical tokenizer."""
        return {"vocab": list(self.vocab), "max_words": self.max_words, "pieces": self.pieces,
                "ngram_sizes": list(self.ngram_sizes), "word_buckets": self.word_buckets,
                "ngram_buckets": self.ngram_buckets or 1}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TextTokenizer:
        return cls(state["vocab"], max_words=state["max_words"], pieces=state["pieces"],
                   ngram_sizes=state["ngram_sizes"], word_buckets=state["word_buckets"],
                   ngram_buckets=state["ngram_buckets"])


def _is_batched(tensor: Tensor) -> bool:
    """True inside ``torch.func.vmap`` (value checks needing ``.item()`` are skipped there)."""
    is_batched = getattr(torch._C._functorch, "is_batchedtensor", None)
    return bool(is_batched is not None and is_batched(tensor))


def _as_tokens(tokens: Tensor) -> Tensor:
    if not isinstance(tokens, Tensor):
        raise TypeError(f"expected a token id tensor from TextTokenizer.encode, got {type(tokens).__name__}; "
                        "encode strings first")
    if tokens.dtype not in (torch.long, torch.int32):
        raise TypeError(f"token ids must be int64 (from TextTokenizer.encode), got {tokens.dtype}")
    if tokens.dim() < 2:
        raise ValueError(f"token ids must be [n, max_words] or [n, max_words, pieces], got shape "
                         f"{tuple(tokens.shape)}")
    return tokens


class TextEncoder(nn.Module):
    """Attention-pooling sentence encoder over word/n-gram ids.

    Input ``[..., max_words, pieces]`` (or ``[..., max_words]`` word ids), output ``[..., out_dim]``.

    Args:
        num_embeddings: id space size (``TextTokenizer.num_embeddings``).
        dim: embedding / hidden width.
        out_dim: output feature width.
        heads: attention heads of the pooling (and of the self-attention layer); ``dim % heads == 0``.
        self_attention: add one residual pre-norm self-attention block over the words before pooling.
        dropout: dropout on word vectors (training only).
        freeze_embeddings: keep the (random) piece embeddings fixed, as a buffer. Words of unseen domains then
            look like training words to the trained layers (a trainable table only learns training words,
            leaving new words at their initial scale); the layers above learn which ids to attend to.
        normalize: L2-normalise the output and multiply it by a learned scale (initially ``scale``), so
            Euclidean distances between texts of any length become cosine distances.
    """

    def __init__(self, num_embeddings: int, dim: int = 128, out_dim: int = 128, *, heads: int = 4,
                 self_attention: bool = True, dropout: float = 0.1, freeze_embeddings: bool = False,
                 normalize: bool = False, scale: float = 5.0) -> None:
        super().__init__()
        if num_embeddings < 2:
            raise ValueError(f"num_embeddings must be >= 2 (padding + ids), got {num_embeddings}")
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.dim, self.heads, self.out_dim = dim, heads, out_dim
        self.out_features = out_dim
        table = torch.randn(num_embeddings, dim) * dim ** -0.5
        if freeze_embeddings:
            self.register_buffer("embedding", table)
        else:
            self.embedding = nn.Parameter(table)
        self.self_attention = self_attention
        if self_attention:
            self.attn_norm = nn.LayerNorm(dim)
            self.attn_qkv = nn.Linear(dim, 3 * dim)
            self.attn_out = nn.Linear(dim, dim)
        self.pool_norm = nn.LayerNorm(dim)
        self.pool_queries = nn.Parameter(torch.randn(heads, dim // heads) * (dim // heads) ** -0.5)
        self.pool_key = nn.Linear(dim, dim)
        self.pool_value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.normalize = normalize
        if normalize:
            self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def word_vectors(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``(vectors [B, L, dim], mask [B, L] bool)``: mean piece embedding of each word, word mask."""
        tokens = _as_tokens(tokens)
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(-1)
        tokens = tokens.reshape(-1, tokens.shape[-2], tokens.shape[-1])
        rows = self.embedding.shape[0]
        checkable = tokens.numel() and not _is_batched(tokens)
        if checkable and (int(tokens.max()) >= rows or int(tokens.min()) < 0):
            raise ValueError(f"token ids must be in 0..{rows - 1}; the tokenizer does not "
                             "match this encoder (build it with num_embeddings=tokenizer.num_embeddings)")
        piece_mask = (tokens != PAD_ID).to(self.embedding.dtype)                      # [B, L, P]
        pieces = F.embedding(tokens, self.embedding) * piece_mask.unsqueeze(-1)     # [B, L, P, dim]
        counts = piece_mask.sum(-1, keepdim=True).clamp(min=1.0)
        return pieces.sum(-2) / counts, tokens[..., 0] != PAD_ID

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.dim // self.heads).transpose(1, 2)

    def contextualize(self, x: Tensor, mask: Tensor) -> Tensor:
        """One residual self-attention block (pre-norm, masked keys): ``[B, L, dim] -> [B, L, dim]``."""
        q, k, v = self.attn_qkv(self.attn_norm(x)).chunk(3, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)   # [B, h, L, d_h]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])                  # [B, h, L, L]
        scores = scores.masked_fill(~mask[:, None, None, :], -1e9)
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        return x + self.attn_out(mixed)

    def pooling_weights(self, x: Tensor, mask: Tensor) -> Tensor:
        """Attention of each pooling head over the words, ``[B, heads, L]``; padding gets weight 0."""
        keys = self._split_heads(self.pool_key(self.pool_norm(x)))                 # [B, h, L, d_h]
        scores = torch.einsum("bhld,hd->bhl", keys, self.pool_queries) / math.sqrt(keys.shape[-1])
        return scores.masked_fill(~mask[:, None, :], -1e9).softmax(-1)

    def attention(self, tokens: Tensor) -> Tensor:
        """Pooling attention weights ``[B, heads, L]`` of ``tokens`` (for inspection)."""
        x, mask = self.word_vectors(tokens)
        if self.self_attention:
            x = self.contextualize(x, mask)
        return self.pooling_weights(x, mask)

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = _as_tokens(tokens)
        lead = tokens.shape[:-2] if tokens.dim() >= 3 else tokens.shape[:-1]
        x, mask = self.word_vectors(tokens)
        x = self.dropout(x)
        if self.self_attention:
            x = self.contextualize(x, mask)
        weights = self.pooling_weights(x, mask)                                     # [B, h, L]
        values = self._split_heads(self.pool_value(self.pool_norm(x)))             # [B, h, L, d_h]
        pooled = torch.einsum("bhl,bhld->bhd", weights, values).reshape(x.shape[0], self.dim)
        out = self.output(pooled)
        if self.normalize:
            out = F.normalize(out, dim=-1) * self.log_scale.exp()
        return out.reshape(*lead, self.out_dim)


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


def word_ids(tokens: Tensor) -> Tensor:
    """Word-id channel ``[n, max_words]`` of token ids ``[n, max_words, pieces]`` (identity for 2-d input)."""
    tokens = _as_tokens(tokens)
    return tokens[..., 0] if tokens.dim() == 3 else tokens


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
