"""Decoding a ``Seq2SeqTransformer`` or ``Seq2SeqLSTM``: greedy and beam search, batched, one token per step.

Decoding (``greedy_decode``, ``beam_search``) runs under ``torch.no_grad`` in whatever mode the model is:
call ``model.eval()`` first so that dropout is off. The encoder runs once; the decoder runs one token per
step with cached self-attention keys/values (and the memory's cross-attention keys/values projected once).
Decoders never emit ``PAD`` or ``BOS`` (excluded from the choice, not from the softmax, so scores are true
log-probabilities), and a hypothesis that has not ended after ``max_length - 1`` tokens is given ``EOS`` as
its ``max_length``-th token.
A pointer model (``pointer=True``) may not ``COPY`` or ``DELETE`` once its pointer is at the source's end, nor
end before it.
Given a list of models of the same vocabulary (an ensemble), both decode with the log of the members' mean
next-token probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union, cast

import torch
from torch import Tensor

from attnmeta.nn.attention import MultiHeadAttention, scaled_dot_product_attention
from attnmeta.nn.seq2seq import Seq2SeqTransformer, _DecoderLayer, pointer_disallowed, source_ends
from attnmeta.nn.seq2seq_lstm import LSTMIncrementalDecoder, Seq2SeqLSTM
from attnmeta.tasks.seq2seq import BOS, EOS, PAD

__all__ = ["greedy_decode", "beam_search", "incremental_decoder"]

Model = Seq2SeqTransformer | Seq2SeqLSTM
Models = Model | Sequence[Model]
Decoder = Union["_IncrementalDecoder", LSTMIncrementalDecoder]


def _members(models: Models) -> list[Model]:
    members = [models] if isinstance(models, Seq2SeqTransformer | Seq2SeqLSTM) else list(models)
    if not members:
        raise ValueError("an ensemble needs at least one model")
    first = members[0]
    for m in members[1:]:
        if (m.vocab_size, m.max_length, m.actions) != (first.vocab_size, first.max_length, first.actions):
            raise ValueError("an ensemble's models must share the vocabulary, max_length and actions")
    return members


def _check_decoding(model: Model, max_length: int | None) -> int:
    length = model.max_length if max_length is None else max_length
    if not 1 <= length <= model.max_length:
        raise ValueError(f"max_length must be in [1, {model.max_length}] (the model's limit), "
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
        # a pointer model's state; the rows of one source share its memory, so beams never reorder it
        self.memory, self.end = memory, source_ends(source)
        self.pointer = torch.zeros_like(self.end)

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
        if model.actions is not None:
            moved = (token == model.actions[0]) | (token == model.actions[1])
            self.pointer = torch.minimum(self.pointer + moved.long(), self.end)
            y = y + model.pointed(self.memory, self.pointer.unsqueeze(1))
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

    def disallowed(self) -> Tensor | None:
        """``[N, V]`` True where a pointer model may not act next: ``COPY``/``DELETE`` at the source's end,
        ``EOS`` before it; ``None`` for other models."""
        if self.model.actions is None:
            return None
        return pointer_disallowed(self.pointer, self.end, self.model.vocab_size, self.model.actions)

    def reorder(self, rows: Tensor) -> None:
        self.cached = [None if c is None else (c[0][rows], c[1][rows]) for c in self.cached]
        self.source, self.pointer, self.end = self.source[rows], self.pointer[rows], self.end[rows]


class _EnsembleDecoder:
    """Several models' incremental decoders fed the same tokens; ``step`` returns ``log(mean_k p_k)`` of the
    members' next-token probabilities ``[N, V]``. A pointer's state follows from the tokens alone, so every
    member's is the same and the first one's ``disallowed`` holds for all."""

    def __init__(self, decoders: list[Decoder]) -> None:
        self.decoders = decoders

    def step(self, token: Tensor) -> Tensor:
        logp = torch.stack([decoder.step(token) for decoder in self.decoders])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.decoders))

    def disallowed(self) -> Tensor | None:
        return self.decoders[0].disallowed()

    def reorder(self, rows: Tensor) -> None:
        for decoder in self.decoders:
            decoder.reorder(rows)


def incremental_decoder(model: Model, memory: Tensor, source_mask: Tensor, source: Tensor) -> Decoder:
    """The one-token-at-a-time decoder of ``model`` (either architecture) for ``model.encode(source)``."""
    if isinstance(model, Seq2SeqLSTM):
        return LSTMIncrementalDecoder(model, memory, source)
    return _IncrementalDecoder(model, memory, source_mask, source)


def _start(members: list[Model], source: Tensor, repeat: int = 1) -> Decoder | _EnsembleDecoder:
    """The decoder of ``members`` for ``source [B, S]``, each row repeated ``repeat`` times (beams)."""
    decoders = []
    for model in members:
        memory, mask = model.encode(source)
        if repeat > 1:
            memory, mask = memory.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
        decoders.append(incremental_decoder(model, memory, mask, source.repeat_interleave(repeat, 0)))
    return decoders[0] if len(decoders) == 1 else _EnsembleDecoder(decoders)


def _selectable(logp: Tensor, last: bool, disallowed: Tensor | None = None) -> Tensor:
    """Scores to choose from: ``PAD``/``BOS`` and ``disallowed`` excluded; only ``EOS`` allowed at the last
    step."""
    if last:
        choice = torch.full_like(logp, float("-inf"))
        choice[:, EOS] = logp[:, EOS]
        return choice
    choice = logp.clone() if disallowed is None else logp.masked_fill(disallowed, float("-inf"))
    choice[:, [PAD, BOS]] = float("-inf")
    return choice


@torch.no_grad()
def greedy_decode(model: Models, source: Tensor, max_length: int | None = None) -> Tensor:
    """Greedy decoding: ``source [B, S]`` -> ids int64 ``[B, L]``, ``L <= max_length`` (default
    ``model.max_length``); each row ends with ``EOS`` (included), then ``PAD``. Stops when all rows ended.
    Runs in the model's current mode (call ``model.eval()``). ``model``: one model or an ensemble's list."""
    members = _members(model)
    length = _check_decoding(members[0], max_length)
    decoder = _start(members, source)
    inputs = torch.full((source.shape[0], 1), BOS, dtype=torch.long, device=source.device)
    finished = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
    for step in range(length):
        logp = decoder.step(inputs[:, -1])
        choice = _selectable(logp, step == length - 1, decoder.disallowed())
        token = choice.topk(1, dim=-1).indices.squeeze(-1)
        token = token.masked_fill(finished, PAD)
        inputs = torch.cat([inputs, token.unsqueeze(1)], dim=1)
        finished = finished | (token == EOS)
        if bool(finished.all()):
            break
    return inputs[:, 1:]


@torch.no_grad()
def beam_search(model: Models, source: Tensor, beam: int = 5,
                max_length: int | None = None) -> tuple[Tensor, Tensor]:
    """Beam search, batched over ``B * beam`` hypotheses: ``source [B, S]`` -> (best hypothesis per row
    ``[B, L]`` in ``greedy_decode``'s format, its total log-probability ``[B]``, ``EOS`` included).

    Scores are plain sums of log-probabilities (**no length normalisation**, so shorter outputs are
    favoured). Finished hypotheses stay in the beam and compete with the open ones; the search stops when
    every row's best finished score is at least its best open score (open scores can only fall).
    ``beam=1`` gives exactly ``greedy_decode``'s output. Runs in the model's current mode (call ``eval()``).
    ``model``: one model or an ensemble's list.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    members = _members(model)
    length = _check_decoding(members[0], max_length)
    b, device = source.shape[0], source.device
    decoder = _start(members, source, repeat=beam)
    inputs = torch.full((b * beam, 1), BOS, dtype=torch.long, device=device)
    dtype = members[0].embedding.weight.dtype
    scores = torch.full((b, beam), float("-inf"), dtype=dtype, device=device)
    scores[:, 0] = 0.0  # one live empty hypothesis per row; the copies start dead
    finished = torch.zeros(b, beam, dtype=torch.bool, device=device)
    for step in range(length):
        logp = decoder.step(inputs[:, -1])
        choice = _selectable(logp, step == length - 1, decoder.disallowed())
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
