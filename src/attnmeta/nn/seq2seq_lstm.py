"""An LSTM transducer with hard monotonic attention over edit actions (Aharoni & Goldberg, ACL 2017;
Makarov & Clematide, EMNLP 2018: the architecture of the strongest low-resource systems of the
CoNLL-SIGMORPHON 2018 shared task).

It is the ``pointer=True`` interface of ``attnmeta.nn.seq2seq.Seq2SeqTransformer`` with recurrent layers
(``Seq2SeqTransformer``'s docstring has the token ids and the edit actions): a source row is the symbols to
edit, ``EOS``, then the tags. A bidirectional LSTM reads the symbols up to ``EOS`` (``memory [B, S, dim]``;
the tags' positions are zeros there); the tags are one *feature vector*, the mean of their embeddings. The
decoder is an LSTM whose input at each step is the embedding of the previous action, the encoder state under
the pointer (which only ``COPY`` and ``DELETE`` move), the embedding of the symbol there and the feature
vector; its state gives the next action's logits through the tied token embedding. There are no positions
and no soft attention: what is written next depends on where the pointer is and what was written, which is
what 100 examples of a language can teach.
The cells are written out (matrix products, ``sigmoid``, ``tanh``) so that the forward pass is pure and
twice differentiable under ``torch.func`` (MAML's second-order inner loop).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnmeta.nn.layers import lstm_update
from attnmeta.nn.seq2seq import check_token_ids, pointer_disallowed, pointer_positions, source_ends
from attnmeta.tasks.seq2seq import EOS, PAD

__all__ = ["Seq2SeqLSTM", "LSTMIncrementalDecoder"]


class _LSTM(nn.Module):
    """A one-layer LSTM over ``x [B, L, In]`` whose state is held where ``mask [B, L]`` is False."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.input = nn.Linear(in_dim, 4 * hidden)
        self.recurrent = nn.Linear(hidden, 4 * hidden, bias=False)
        bound = hidden ** -0.5
        for weight in (self.input.weight, self.recurrent.weight):
            nn.init.uniform_(weight, -bound, bound)
        with torch.no_grad():  # forget gates start open (Jozefowicz et al. 2015)
            self.input.bias.zero_()
            self.input.bias[hidden:2 * hidden] = 1.0
        self.hidden = hidden

    def start(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        zeros = like.new_zeros(batch, self.hidden)
        return zeros, zeros

    def step(self, projected: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """One step from the input's projection ``projected [B, 4H]`` (``self.input(x_t)``)."""
        h, c = state
        return lstm_update(projected + self.recurrent(h), c)

    def forward(self, x: Tensor, mask: Tensor, reverse: bool = False) -> Tensor:
        """``[B, L, H]`` the states (zeros where ``mask`` is False), right to left with ``reverse``."""
        projected = self.input(x)
        state = self.start(x.shape[0], x)
        outputs: list[Tensor] = [x.new_zeros(0)] * x.shape[1]
        steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
        for t in steps:
            h, c = self.step(projected[:, t], state)
            keep = mask[:, t].unsqueeze(1)
            state = (torch.where(keep, h, state[0]), torch.where(keep, c, state[1]))
            outputs[t] = h * keep
        return torch.stack(outputs, 1)


class Seq2SeqLSTM(nn.Module):
    """Hard-attention LSTM transducer over edit actions (the module's docstring).

    Args:
        vocab_size: number of token ids, specials and the two actions included (``COPY`` is
            ``vocab_size - 2``, ``DELETE`` ``vocab_size - 1``).
        dim: embedding size, and the size of the encoder's states (``dim // 2`` per direction).
        hidden: the decoder LSTM's state size.
        dropout: on the embeddings and the decoder's states (training mode only).
        max_length: longest source and output this model is used with (decoding's limit).
        task_context: a parameter ``task_context [dim]`` (zeros) added to every embedding, a language
            vector a learner sets per task (``attnmeta.learners.seq2seq.context``).
    """

    def __init__(self, vocab_size: int, dim: int = 128, hidden: int = 256, dropout: float = 0.3,
                 max_length: int = 100, task_context: bool = False) -> None:
        super().__init__()
        if vocab_size <= EOS + 2:
            raise ValueError(f"vocab_size must include the special ids and the two actions (> {EOS + 2}), "
                             f"got {vocab_size}")
        if dim < 2 or dim % 2 or hidden < 1 or max_length < 1:
            raise ValueError(f"dim must be even and >= 2, hidden and max_length >= 1, got dim={dim}, "
                             f"hidden={hidden}, max_length={max_length}")
        self.vocab_size, self.dim, self.max_length = vocab_size, dim, max_length
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embedding.weight, std=dim ** -0.5)  # tied: logits start at unit scale
        self.forward_encoder, self.backward_encoder = _LSTM(dim, dim // 2), _LSTM(dim, dim // 2)
        self.decoder = _LSTM(4 * dim, hidden)
        self.readout = nn.Linear(hidden, dim)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        self.task_context = nn.Parameter(torch.zeros(dim)) if task_context else None
        self.dropout = nn.Dropout(dropout)

    @property
    def actions(self) -> tuple[int, int]:
        """``(COPY, DELETE)`` ids."""
        return self.vocab_size - 2, self.vocab_size - 1

    def embed(self, ids: Tensor) -> Tensor:
        """Token embeddings (scaled to unit size per coordinate) plus ``task_context``, before dropout."""
        x = self.embedding(ids) * math.sqrt(self.dim)
        return x if self.task_context is None else x + self.task_context

    def encode(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """``source [B, S]`` -> ``(memory [B, S, dim], mask [B, 1, S])``: the bidirectional states of the
        symbols up to and including each row's first ``EOS`` (zeros after it); the mask is True there."""
        check_token_ids(source, "source", self.max_length)
        edited = torch.arange(source.shape[1], device=source.device) <= source_ends(source).unsqueeze(1)
        edited = edited & (source != PAD)
        x = self.dropout(self.embed(source))
        memory = torch.cat([self.forward_encoder(x, edited), self.backward_encoder(x, edited, reverse=True)],
                           dim=-1)
        return memory, edited.unsqueeze(1)

    def features(self, source: Tensor) -> Tensor:
        """``[B, dim]`` the mean embedding of each row's tags (the tokens after its first ``EOS``; zeros for a
        row without)."""
        positions = torch.arange(source.shape[1], device=source.device)
        tags = ((positions > source_ends(source).unsqueeze(1)) & (source != PAD)).unsqueeze(-1)
        summed = (self.embedding(source) * math.sqrt(self.dim) * tags).sum(1)
        return summed / tags.sum(1).clamp_min(1)

    def step_input(self, previous: Tensor, pointed: Tensor, symbol: Tensor, features: Tensor) -> Tensor:
        """The decoder's input ``[..., 4 dim]``: the previous action, the encoder state under the pointer and
        the symbol there (ids; its embedding says plainly whether the pointer is at ``EOS``), the tags."""
        return self.dropout(torch.cat([self.embed(previous), pointed, self.embed(symbol), features], dim=-1))

    def output(self, hidden: Tensor) -> Tensor:
        """Decoder states ``[..., hidden]`` -> logits ``[..., V]`` (tied to the token embedding)."""
        return self.readout(self.dropout(hidden)) @ self.embedding.weight.t() + self.output_bias

    def decode(self, memory: Tensor, source_mask: Tensor, target_in: Tensor, source: Tensor) -> Tensor:
        """Teacher forcing: decoder inputs ``target_in [B, T]`` (``BOS``, then actions) -> logits
        ``[B, T, V]``; ``source [B, S]`` gives the pointer's limit and the tags."""
        check_token_ids(target_in, "target_in", self.max_length)
        pointer = pointer_positions(target_in, source, self.actions)
        index = pointer.unsqueeze(-1).expand(*pointer.shape, memory.shape[-1])
        features = self.features(source).unsqueeze(1).expand(-1, target_in.shape[1], -1)
        inputs = self.step_input(target_in, memory.gather(1, index), source.gather(1, pointer), features)
        projected = self.decoder.input(inputs)
        state = self.decoder.start(target_in.shape[0], memory)
        states = []
        for t in range(target_in.shape[1]):
            state = self.decoder.step(projected[:, t], state)
            states.append(state[0])
        return self.output(torch.stack(states, 1))

    def forward(self, source: Tensor, target_in: Tensor) -> Tensor:
        """Teacher forcing: ``source [B, S]``, ``target_in [B, T]`` -> logits ``[B, T, V]``."""
        memory, mask = self.encode(source)
        return self.decode(memory, mask, target_in, source)


class LSTMIncrementalDecoder:
    """``Seq2SeqLSTM.decode`` one action at a time: ``step(token [N])`` -> next-action log-probabilities
    ``[N, V]``; ``reorder(rows)`` keeps the states of ``rows`` (beam search); ``disallowed()`` as
    ``pointer_disallowed``."""

    def __init__(self, model: Seq2SeqLSTM, memory: Tensor, source: Tensor) -> None:
        self.model, self.memory, self.features = model, memory, model.features(source)
        self.source = source
        self.end = source_ends(source)
        self.pointer = torch.zeros_like(self.end)
        self.state = model.decoder.start(source.shape[0], memory)

    def step(self, token: Tensor) -> Tensor:
        model = self.model
        moved = (token == model.actions[0]) | (token == model.actions[1])
        self.pointer = torch.minimum(self.pointer + moved.long(), self.end)
        rows = torch.arange(token.shape[0], device=token.device)
        x = model.step_input(token, self.memory[rows, self.pointer], self.source[rows, self.pointer],
                             self.features)
        self.state = model.decoder.step(model.decoder.input(x), self.state)
        return torch.log_softmax(model.output(self.state[0]), dim=-1)

    def disallowed(self) -> Tensor:
        return pointer_disallowed(self.pointer, self.end, self.model.vocab_size, self.model.actions)

    def reorder(self, rows: Tensor) -> None:
        self.memory, self.features, self.source = self.memory[rows], self.features[rows], self.source[rows]
        self.pointer, self.end = self.pointer[rows], self.end[rows]
        self.state = (self.state[0][rows], self.state[1][rows])

