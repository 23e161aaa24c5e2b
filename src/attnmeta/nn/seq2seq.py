"""Character-level Transformer encoder-decoder for few-shot sequence-to-sequence meta-learning.

Token ids follow ``attnmeta.tasks.seq2seq``: ``PAD=0, BOS=1, EOS=2, UNK=3``. Sources are ``[B, S]`` int64
padded with ``PAD``; targets are ``[B, T]``, ``EOS``-terminated then ``PAD``-padded; decoder inputs are
``shift_right(target)`` (``BOS`` then the target without its last column).

The model is pre-LayerNorm (``layers`` encoder and ``layers`` decoder blocks, a final LayerNorm on each
side), with **learned** position embeddings (``max_length`` of them, shared by encoder and decoder) and one
token embedding shared by the source, the target and the output projection (tied, plus an output bias).
With ``copy=True`` the output is a pointer-generator mixture (See et al., ACL 2017; the copy mechanism of
low-resource inflection systems): ``p(w) = g p_vocab(w) + (1 - g) sum_{s: source_s = w} a_s``, with ``a`` the
last decoder layer's cross-attention averaged over heads and ``g`` a learned gate, so that a character can
be written by copying it from the source even when its output embedding has never been trained (a new
script). The model then returns log-probabilities where it would return logits; every consumer here
(``sequence_loss``, ``log_softmax``) treats both alike, as ``log_softmax`` of log-probabilities is the
identity.
With ``pointer=True`` the model is a transducer with hard monotonic attention (``attnmeta.tasks.
seq2seq_edits``): its last two ids are the actions ``COPY`` (``vocab_size - 2``) and ``DELETE``
(``vocab_size - 1``), every other output id inserts that token, and each source ends its edited part with
``EOS`` (the tags, if any, follow it). Decoder input ``t`` gets, besides its token and position, a projection
of the encoder state under the pointer: the number of ``COPY``/``DELETE`` among the inputs up to ``t``, at
most the position of the source's ``EOS``. The soft cross-attention stays (it reads the tags).
Every attention is the library's ``MultiHeadAttention`` on its explicit (non-fused) path: torch's fused CPU
kernel has no double backward, and MAML's second-order inner loop needs one. The forward pass is purely
functional (no state changes), so it can run under ``torch.func.functional_call`` / ``torch.func.grad``.
Decoding is ``attnmeta.nn.seq2seq_decoding`` (greedy and beam search).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.nn.attention import MultiHeadAttention
from attnmeta.tasks.seq2seq import BOS, EOS, PAD

__all__ = ["Seq2SeqTransformer", "shift_right", "sequence_loss", "sequence_log_prob", "copy_log_probs",
           "pointer_positions", "pointer_disallowed", "source_ends", "check_token_ids"]


def _attend(attention: MultiHeadAttention, query: Tensor, key: Tensor, mask: Tensor | None) -> Tensor:
    # return_weights=True selects the explicit softmax(q k^T) v path, which is twice differentiable on CPU
    out, _ = attention(query, key, key, mask, return_weights=True)
    return out


class _FeedForward(nn.Module):
    def __init__(self, dim: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(dim, ff_dim), nn.Linear(ff_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class _EncoderLayer(nn.Module):
    """``x = x + SA(LN(x)); x = x + FF(LN(x))``, ``x [B, S, D]``."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attention = MultiHeadAttention(dim, heads, dropout=dropout)
        self.ff = _FeedForward(dim, ff_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.dropout(_attend(self.self_attention, h, h, mask))
        return x + self.dropout(self.ff(self.norm2(x)))


class _DecoderLayer(nn.Module):
    """``y = y + causal SA(LN(y)); y = y + CA(LN(y), memory); y = y + FF(LN(y))``, ``y [B, T, D]``."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attention = MultiHeadAttention(dim, heads, dropout=dropout, causal=True)
        self.cross_attention = MultiHeadAttention(dim, heads, dropout=dropout)
        self.ff = _FeedForward(dim, ff_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: Tensor, memory: Tensor, source_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(y [B, T, D], cross-attention weights [B, heads, T, S])``."""
        h = self.norm1(y)
        y = y + self.dropout(_attend(self.self_attention, h, h, None))
        context, weights = self.cross_attention(self.norm2(y), memory, memory, source_mask,
                                                return_weights=True)
        y = y + self.dropout(context)
        return y + self.dropout(self.ff(self.norm3(y))), weights


class Seq2SeqTransformer(nn.Module):
    """Pre-LN Transformer encoder-decoder over token ids.

    Args:
        vocab_size: number of token ids (``Vocabulary.size``), specials included.
        dim: model size (divisible by ``heads``); heads: attention heads.
        layers: encoder blocks and decoder blocks (each).
        ff_dim: hidden size of the feed-forward sublayers.
        dropout: dropout on embeddings, attention weights and residual branches (training mode only).
        max_length: longest source and decoder input (number of learned positions).
        copy: pointer-generator output (log-probabilities of the mixture of generating and copying a
            source token) instead of logits.
        task_context: a parameter ``task_context [dim]`` (zeros) added to every source and decoder input
            embedding: a language (task) vector that a learner sets per task (``attnmeta.learners.seq2seq.
            context``); without it the model has no such parameter.
        pointer: hard monotonic attention with edit actions (the module's docstring); the last two ids are
            ``COPY`` and ``DELETE``.
    """

    def __init__(self, vocab_size: int, dim: int = 128, heads: int = 4, layers: int = 2, ff_dim: int = 256,
                 dropout: float = 0.1, max_length: int = 64, copy: bool = False,
                 task_context: bool = False, pointer: bool = False) -> None:
        super().__init__()
        specials = max(PAD, BOS, EOS) + 2 * pointer
        if vocab_size <= specials:
            raise ValueError(f"vocab_size must include the special ids (> {specials}), got {vocab_size}")
        if copy and pointer:
            raise ValueError("copy=True and pointer=True are two ways of copying: choose one")
        if layers < 1 or max_length < 1:
            raise ValueError(f"layers and max_length must be >= 1, got {layers} and {max_length}")
        self.vocab_size, self.dim, self.max_length = vocab_size, dim, max_length
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embedding.weight, std=dim ** -0.5)  # tied: logits start at unit scale
        self.positions = nn.Embedding(max_length, dim)
        nn.init.normal_(self.positions.weight)  # unit scale, like the scaled token embeddings
        self.encoder_layers = nn.ModuleList(_EncoderLayer(dim, heads, ff_dim, dropout) for _ in range(layers))
        self.decoder_layers = nn.ModuleList(_DecoderLayer(dim, heads, ff_dim, dropout) for _ in range(layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        self.copy_gate = nn.Linear(dim, 1) if copy else None
        self.task_context = nn.Parameter(torch.zeros(dim)) if task_context else None
        self.pointer_proj = nn.Linear(dim, dim) if pointer else None
        self.dropout = nn.Dropout(dropout)

    @property
    def actions(self) -> tuple[int, int] | None:
        """``(COPY, DELETE)`` ids of a pointer model, else ``None``."""
        return None if self.pointer_proj is None else (self.vocab_size - 2, self.vocab_size - 1)

    def pointed(self, memory: Tensor, pointer: Tensor) -> Tensor:
        """``pointer_proj`` of the states ``memory [B, S, D]`` at ``pointer [B, T]`` -> ``[B, T, D]``."""
        assert self.pointer_proj is not None
        index = pointer.unsqueeze(-1).expand(*pointer.shape, memory.shape[-1])
        return self.pointer_proj(memory.gather(1, index))

    def embed_tokens(self, ids: Tensor, positions: Tensor) -> Tensor:
        """Scaled token embeddings plus ``positions`` (and ``task_context``), before dropout."""
        x = self.embedding(ids) * math.sqrt(self.dim) + positions
        return x if self.task_context is None else x + self.task_context

    def _embed(self, ids: Tensor, what: str) -> Tensor:
        """``ids [B, L]`` -> ``[B, L, D]``: scaled token embedding plus learned positions."""
        check_token_ids(ids, what, self.max_length)
        return self.dropout(self.embed_tokens(ids, self.positions.weight[: ids.shape[1]]))

    def encode(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """``source`` int64 ``[B, S]`` (``PAD``-padded) -> ``(memory [B, S, D], source_mask [B, 1, S])``
        (boolean, True at real tokens)."""
        mask = (source != PAD).unsqueeze(1)
        x = self._embed(source, "source")
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def decode(self, memory: Tensor, source_mask: Tensor, target_in: Tensor,
               source: Tensor | None = None) -> Tensor:
        """Decoder inputs ``target_in [B, T]`` (starting with ``BOS``) -> logits ``[B, T, V]`` (with ``copy``:
        log-probabilities; ``source [B, S]``, the tokens to copy, is then required).

        Causal self-attention (position ``t`` sees inputs ``<= t``) and cross-attention to ``memory``.
        """
        y = self._embed(target_in, "target_in")
        if self.actions is not None:
            if source is None:
                raise ValueError("a pointer model (pointer=True) needs the source ids: decode(memory, "
                                 "source_mask, target_in, source)")
            y = y + self.pointed(memory, pointer_positions(target_in, source, self.actions))
        for layer in self.decoder_layers:
            y, weights = layer(y, memory, source_mask)
        return self.output(self.decoder_norm(y), weights, source)

    def output(self, hidden: Tensor, cross_weights: Tensor, source: Tensor | None) -> Tensor:
        """Final decoder states ``[B, T, D]`` and the last layer's cross-attention ``[B, heads, T, S]`` ->
        logits ``[B, T, V]``, or the pointer-generator's log-probabilities with ``copy``."""
        logits = hidden @ self.embedding.weight.t() + self.output_bias
        if self.copy_gate is None:
            return logits
        if source is None:
            raise ValueError("a copying model (copy=True) needs the source ids: decode(memory, source_mask, "
                             "target_in, source)")
        return copy_log_probs(logits, torch.sigmoid(self.copy_gate(hidden)), cross_weights.mean(1), source)

    def forward(self, source: Tensor, target_in: Tensor) -> Tensor:
        """Teacher forcing: ``source [B, S]``, ``target_in [B, T]`` -> logits ``[B, T, V]``."""
        memory, mask = self.encode(source)
        return self.decode(memory, mask, target_in, source)


def check_token_ids(ids: Tensor, what: str, max_length: int) -> None:
    """A one-line ``ValueError`` unless ``ids`` is ``[batch, length]`` with ``length <= max_length``."""
    if ids.dim() != 2:
        raise ValueError(f"{what} must be token ids of shape [batch, length], got {tuple(ids.shape)}")
    if ids.shape[1] > max_length:
        raise ValueError(f"{what} length {ids.shape[1]} exceeds the model's max_length {max_length}")


def copy_log_probs(logits: Tensor, gate: Tensor, attention: Tensor, source: Tensor) -> Tensor:
    """Pointer-generator log-probabilities ``[B, T, V]``: ``log(g softmax(logits) + (1 - g) copy)``, where
    ``copy[b, t, w]`` sums the attention ``[B, T, S]`` over the source positions holding token ``w``
    (``source [B, S]``), ``gate`` ``g [B, T, 1]`` in (0, 1). Twice differentiable."""
    copied = torch.zeros_like(logits).scatter_add(-1, source.unsqueeze(1).expand_as(attention), attention)
    mixture = gate * torch.softmax(logits, dim=-1) + (1 - gate) * copied
    return torch.log(mixture + 1e-10)  # an epsilon, not a clamp: every token keeps a gradient


def source_ends(source: Tensor) -> Tensor:
    """``[B]`` the position of each row's first ``EOS`` (its number of tokens when it has none)."""
    is_eos = source == EOS
    ends = torch.where(is_eos.any(1), is_eos.int().argmax(1), (source != PAD).sum(1))
    return ends.clamp_max(source.shape[1] - 1)


def pointer_positions(target_in: Tensor, source: Tensor, actions: tuple[int, int]) -> Tensor:
    """``[B, T]`` the source position under the pointer at each decoder input of ``target_in [B, T]``: the
    ``COPY``/``DELETE`` (``actions``) among the inputs so far, at most the source's ``EOS`` position."""
    moves = (target_in == actions[0]) | (target_in == actions[1])
    return torch.minimum(moves.long().cumsum(1), source_ends(source).unsqueeze(1))


def pointer_disallowed(pointer: Tensor, end: Tensor, vocab_size: int, actions: tuple[int, int]) -> Tensor:
    """``[N, V]`` True where a pointer model may not act next: ``COPY``/``DELETE`` with the pointer at the
    source's end (``pointer >= end``, both ``[N]``), ``EOS`` before it."""
    at_end = pointer >= end
    mask = torch.zeros(at_end.shape[0], vocab_size, dtype=torch.bool, device=at_end.device)
    mask[:, list(actions)] = at_end.unsqueeze(1)
    mask[:, EOS] = ~at_end
    return mask


def shift_right(target: Tensor) -> Tensor:
    """Targets ``[B, T]`` (``EOS``-terminated, ``PAD``-padded) -> decoder inputs ``[B, T]``: ``BOS`` then
    ``target[:, :-1]`` (the inputs at padded positions are harmless: causal attention never looks ahead and
    the loss ignores ``PAD`` targets)."""
    bos = torch.full_like(target[:, :1], BOS)
    return torch.cat([bos, target[:, :-1]], dim=1)


def sequence_loss(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean token cross-entropy over the non-``PAD`` positions of ``target [B, T]``; ``logits [B, T, V]``.

    Returns a scalar (0 when every target position is ``PAD``).
    """
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=PAD,
                             reduction="none", label_smoothing=label_smoothing)
    count = (target != PAD).sum().clamp_min(1)
    return losses.sum() / count


def sequence_log_prob(model: Seq2SeqTransformer, source: Tensor, target: Tensor) -> Tensor:
    """``[B]`` total log-probability of ``target [B, T]`` (``EOS`` included, ``PAD`` ignored) given
    ``source [B, S]`` under teacher forcing (differentiable; wrap in ``torch.no_grad`` to score only)."""
    logp = torch.log_softmax(model(source, shift_right(target)), dim=-1)
    token = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return token.masked_fill(target == PAD, 0.0).sum(-1)
