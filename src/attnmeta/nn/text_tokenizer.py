"""A download-free text tokenizer (words plus hashed character n-grams) and the checks of its token id
tensors ``[n, max_words, pieces]``, shared by the text encoders of :mod:`attnmeta.nn.text`."""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PAD_ID", "TextTokenizer", "word_ids"]

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


def word_ids(tokens: Tensor) -> Tensor:
    """Word-id channel ``[n, max_words]`` of token ids ``[n, max_words, pieces]`` (identity for 2-d input)."""
    tokens = _as_tokens(tokens)
    return tokens[..., 0] if tokens.dim() == 3 else tokens
