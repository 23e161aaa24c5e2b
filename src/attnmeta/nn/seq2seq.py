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
Every attention is the library's ``MultiHeadAttention`` on its explicit (non-fused) path: torch's fused CPU
kernel has no double backward, and MAML's second-order inner loop needs one. The forward pass is purely
functional (no state changes), so it can run under ``torch.func.functional_call`` / ``torch.func.grad``.

Decoding (``greedy_decode``, ``beam_search``) runs under ``torch.no_grad`` in whatever mode the model is:
call ``model.eval()`` first so that dropout is off. The encoder runs once; the decoder runs one token per
step with cached self-attention keys/values (and the memory's cross-attention keys/values projected once).
Decoders never emit ``PAD`` or ``BOS`` (excluded from the choice, not from the softmax, so scores are true
log-probabilities), and a hypothesis that has not ended after ``max_length - 1`` tokens is given ``EOS`` as
its ``max_length``-th token.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.nn.attention import MultiHeadAttention, scaled_dot_product_attention
from attnmeta.tasks.seq2seq import BOS, EOS, PAD

__all__ = ["Seq2SeqTransformer", "shift_right", "sequence_loss", "greedy_decode", "beam_search",
           "sequence_log_prob", "copy_log_probs"]


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
    """

    def __init__(self, vocab_size: int, dim: int = 128, heads: int = 4, layers: int = 2, ff_dim: int = 256,
                 dropout: float = 0.1, max_length: int = 64, copy: bool = False,
                 task_context: bool = False) -> None:
        super().__init__()
        if vocab_size <= max(PAD, BOS, EOS):
            raise ValueError(f"vocab_size must include the special ids (> {max(PAD, BOS, EOS)}), "
                             f"got {vocab_size}")
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
        self.dropout = nn.Dropout(dropout)

    def embed_tokens(self, ids: Tensor, positions: Tensor) -> Tensor:
        """Scaled token embeddings plus ``positions`` (and ``task_context``), before dropout."""
        x = self.embedding(ids) * math.sqrt(self.dim) + positions
        return x if self.task_context is None else x + self.task_context

    def _embed(self, ids: Tensor, what: str) -> Tensor:
        """``ids [B, L]`` -> ``[B, L, D]``: scaled token embedding plus learned positions."""
        if ids.dim() != 2:
            raise ValueError(f"{what} must be token ids of shape [batch, length], got {tuple(ids.shape)}")
        if ids.shape[1] > self.max_length:
            raise ValueError(f"{what} length {ids.shape[1]} exceeds the model's max_length {self.max_length}")
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


def copy_log_probs(logits: Tensor, gate: Tensor, attention: Tensor, source: Tensor) -> Tensor:
    """Pointer-generator log-probabilities ``[B, T, V]``: ``log(g softmax(logits) + (1 - g) copy)``, where
    ``copy[b, t, w]`` sums the attention ``[B, T, S]`` over the source positions holding token ``w``
    (``source [B, S]``), ``gate`` ``g [B, T, 1]`` in (0, 1). Twice differentiable."""
    copied = torch.zeros_like(logits).scatter_add(-1, source.unsqueeze(1).expand_as(attention), attention)
    mixture = gate * torch.softmax(logits, dim=-1) + (1 - gate) * copied
    return torch.log(mixture + 1e-10)  # an epsilon, not a clamp: every token keeps a gradient


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


def _check_decoding(model: Seq2SeqTransformer, max_length: int | None) -> int:
    length = model.max_length if max_length is None else max_length
    if not 1 <= length <= model.max_length:
        raise ValueError(f"max_length must be in [1, {model.max_length}] (the model's positions), "
                         f"got {length}")
    return length


class _IncrementalDecoder:
    """``model.decode`` one token at a time with cached keys and values (decoding is O(L), not O(L^2)).

    The cross-attention keys/values of the memory ``[N, S, D]`` are projected once; ``step(token [N])``
    returns the next-token log-probabilities ``[N, V]`` (what ``decode`` gives at the last position of the
    prefix); ``reorder(rows)`` keeps the cached states of ``rows`` (beam search)."""

    def __init__(self, model: Seq2SeqTransformer, memory: Tensor, source_mask: Tensor,
                 source: Tensor) -> None:
        self.model, self.mask, self.length = model, source_mask.unsqueeze(-3), 0  # mask [N, 1, 1, S]
        self.source = source
        self.layers = [cast(_DecoderLayer, layer) for layer in model.decoder_layers]
        self.cross = [(layer.cross_attention._split(layer.cross_attention.k_proj(memory)),
                       layer.cross_attention._split(layer.cross_attention.v_proj(memory)))
                      for layer in self.layers]
        self.cached: list[tuple[Tensor, Tensor] | None] = [None] * len(self.cross)

    def _attention(self, attention: MultiHeadAttention, query: Tensor, k: Tensor, v: Tensor,
                   mask: Tensor | None) -> tuple[Tensor, Tensor]:
        dropout = attention.dropout if attention.training else 0.0
        out, weights = scaled_dot_product_attention(attention._split(attention.q_proj(query)), k, v, mask,
                                                    dropout=dropout, return_weights=True)
        return attention._merge(out, query), weights

    def step(self, token: Tensor) -> Tensor:
        model = self.model
        position = model.positions.weight[self.length]
        y = model.dropout(model.embed_tokens(token.unsqueeze(1), position))
        for i, layer in enumerate(self.layers):
            h, sa = layer.norm1(y), layer.self_attention
            k, v = sa._split(sa.k_proj(h)), sa._split(sa.v_proj(h))
            cached = self.cached[i]
            if cached is not None:  # the new token attends to every earlier one: no causal mask needed
                k, v = torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)
            self.cached[i] = (k, v)
            y = y + layer.dropout(self._attention(sa, h, k, v, None)[0])
            cross_k, cross_v = self.cross[i]
            context, weights = self._attention(layer.cross_attention, layer.norm2(y), cross_k, cross_v,
                                               self.mask)
            y = y + layer.dropout(context)
            y = y + layer.dropout(layer.ff(layer.norm3(y)))
        self.length += 1
        out = model.output(model.decoder_norm(y), weights, self.source)
        return torch.log_softmax(out[:, 0], dim=-1)

    def reorder(self, rows: Tensor) -> None:
        self.cached = [None if c is None else (c[0][rows], c[1][rows]) for c in self.cached]
        self.source = self.source[rows]


def _selectable(logp: Tensor, last: bool) -> Tensor:
    """Scores to choose from: ``PAD``/``BOS`` excluded; only ``EOS`` allowed at the last step."""
    choice = logp.clone()
    if last:
        eos = choice[:, EOS].clone()
        choice.fill_(float("-inf"))
        choice[:, EOS] = eos
    else:
        choice[:, [PAD, BOS]] = float("-inf")
    return choice


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, source: Tensor, max_length: int | None = None) -> Tensor:
    """Greedy decoding: ``source [B, S]`` -> ids int64 ``[B, L]``, ``L <= max_length`` (default
    ``model.max_length``); each row ends with ``EOS`` (included), then ``PAD``. Stops when all rows ended.
    Runs in the model's current mode (call ``model.eval()``)."""
    length = _check_decoding(model, max_length)
    memory, mask = model.encode(source)
    decoder = _IncrementalDecoder(model, memory, mask, source)
    inputs = torch.full((source.shape[0], 1), BOS, dtype=torch.long, device=source.device)
    finished = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
    for step in range(length):
        logp = decoder.step(inputs[:, -1])
        token = _selectable(logp, step == length - 1).topk(1, dim=-1).indices.squeeze(-1)
        token = token.masked_fill(finished, PAD)
        inputs = torch.cat([inputs, token.unsqueeze(1)], dim=1)
        finished = finished | (token == EOS)
        if bool(finished.all()):
            break
    return inputs[:, 1:]


@torch.no_grad()
def beam_search(model: Seq2SeqTransformer, source: Tensor, beam: int = 5,
                max_length: int | None = None) -> tuple[Tensor, Tensor]:
    """Beam search, batched over ``B * beam`` hypotheses: ``source [B, S]`` -> (best hypothesis per row
    ``[B, L]`` in ``greedy_decode``'s format, its total log-probability ``[B]``, ``EOS`` included).

    Scores are plain sums of log-probabilities (**no length normalisation**, so shorter outputs are
    favoured). Finished hypotheses stay in the beam and compete with the open ones; the search stops when
    every row's best finished score is at least its best open score (open scores can only fall).
    ``beam=1`` gives exactly ``greedy_decode``'s output. Runs in the model's current mode (call ``eval()``).
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    length = _check_decoding(model, max_length)
    b, device = source.shape[0], source.device
    memory, mask = model.encode(source)
    decoder = _IncrementalDecoder(model, memory.repeat_interleave(beam, 0), mask.repeat_interleave(beam, 0),
                                  source.repeat_interleave(beam, 0))
    inputs = torch.full((b * beam, 1), BOS, dtype=torch.long, device=device)
    scores = torch.full((b, beam), float("-inf"), dtype=memory.dtype, device=device)
    scores[:, 0] = 0.0  # one live empty hypothesis per row; the copies start dead
    finished = torch.zeros(b, beam, dtype=torch.bool, device=device)
    for step in range(length):
        logp = decoder.step(inputs[:, -1])
        choice = _selectable(logp, step == length - 1)
        # a finished hypothesis has one continuation, PAD, at no cost
        done = finished.reshape(-1)
        choice[done] = float("-inf")
        choice[done, PAD] = 0.0
        # each hypothesis' best `beam` tokens, then the best `beam` of those `beam * beam` extensions
        top_logp, top_token = choice.topk(min(beam, choice.shape[-1]), dim=-1)
        total = (scores.reshape(-1, 1) + top_logp).reshape(b, -1)
        scores, flat = total.topk(beam, dim=-1)
        parent = flat // top_logp.shape[-1]
        token = top_token.reshape(b, -1).gather(1, flat)
        rows = (parent + beam * torch.arange(b, device=device).unsqueeze(1)).reshape(-1)
        inputs = torch.cat([inputs[rows], token.reshape(-1, 1)], dim=1)
        decoder.reorder(rows)
        finished = finished.gather(1, parent) | (token == EOS)
        best_done = scores.masked_fill(~finished, float("-inf")).amax(1)
        best_open = scores.masked_fill(finished, float("-inf")).amax(1)
        if bool((finished.any(1) & (best_done >= best_open)).all()):
            break
    best = scores.masked_fill(~finished, float("-inf")).argmax(1)
    hypotheses = inputs.reshape(b, beam, -1)[torch.arange(b, device=device), best, 1:]
    width = int((hypotheses != PAD).sum(1).max())
    return hypotheses[:, :width], scores.gather(1, best.unsqueeze(1)).squeeze(1)
