"""Attention-pooling sentence encoder over the token ids of :class:`~attnmeta.nn.text.TextTokenizer`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.nn.text_tokenizer import PAD_ID, _as_tokens, _is_batched

__all__ = ["TextEncoder"]


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
