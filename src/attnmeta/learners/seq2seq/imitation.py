"""Imitation learning of edit actions: the model rolls in, the expert says which actions were best.

Teacher forcing on the static oracle's actions trains a transducer only on states of one gold path; at test
time its own mistakes lead it to states it never saw (exposure bias), and where several alignments are
equally good it is taught one of them arbitrarily. Imitation learning (Makarov & Clematide, EMNLP 2018)
instead decodes each training pair step by step: at every step the expert (``attnmeta.tasks.
seq2seq_expert.EditExpert``) names the optimal actions from the current state, and the next action is, with
probability ``explore``, one sampled from the model (roll-in with the learned policy), else the optimal
action the model likes best. The loss is then ``-log`` of the total probability of the optimal actions at
each state of that sequence (``imitation_loss``), label-smoothed like ``sequence_loss``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor
from torch.nn import functional as F

from attnmeta.nn.seq2seq import source_ends
from attnmeta.nn.seq2seq_decoding import Model, _selectable, incremental_decoder
from attnmeta.tasks.seq2seq import BOS, EOS, PAD
from attnmeta.tasks.seq2seq_edits import apply_actions
from attnmeta.tasks.seq2seq_expert import EditExpert

__all__ = ["experts_for", "roll_in", "roll_in_groups", "imitation_loss"]


@lru_cache(maxsize=100_000)
def _expert(source: tuple[int, ...], actions: tuple[int, ...], copy: int, delete: int) -> EditExpert:
    ends = [k for k, action in enumerate(actions) if action in (EOS, PAD)]
    target = apply_actions(source, actions[:ends[0]] if ends else actions, copy=copy, delete=delete)
    return EditExpert(source, target, copy=copy, delete=delete, end=EOS)


def experts_for(source: Tensor, target: Tensor, moves: tuple[int, int]) -> list[EditExpert]:
    """One expert per row: the source ids up to ``EOS`` (``source [n, S]``) and the target ids that the
    static oracle's actions ``target [n, T]`` write; ``moves``: the ``COPY`` and ``DELETE`` ids."""
    ends = source_ends(source).tolist()
    return [_expert(tuple(row[:end]), tuple(actions), *moves)
            for row, end, actions in zip(source.tolist(), ends, target.tolist())]


@torch.no_grad()
def roll_in(model: Model, source: Tensor, experts: list[EditExpert], explore: float,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Decode ``source [n, S]`` (dropout off) following the experts, or with probability ``explore`` per
    step a sample of the model; -> (actions ``[n, L]``, ``EOS``-terminated then ``PAD``; the optimal actions
    at each of their states ``[n, L, V]`` bool, all ``False`` after ``EOS``)."""
    was_training = model.training
    model.eval()
    try:
        memory, mask = model.encode(source)
        decoder = incremental_decoder(model, memory, mask, source)
        n, limit = source.shape[0], model.max_length
        states = [expert.start() for expert in experts]
        token = torch.full((n,), BOS, dtype=torch.long, device=source.device)
        done = torch.zeros(n, dtype=torch.bool, device=source.device)
        open_rows = list(range(n))
        actions, optimal = [], []
        for step in range(limit):
            logp = decoder.step(token)
            best = torch.zeros_like(logp, dtype=torch.bool)
            pairs = [(r, a) for r in open_rows for a in experts[r].optimal(states[r])]
            best[[r for r, _ in pairs], [a for _, a in pairs]] = True
            token = logp.masked_fill(~best, float("-inf")).argmax(-1)
            if explore > 0:
                # a sample of the allowed actions by the Gumbel-max trick (torch.multinomial is slower here)
                # (drawn on the CPU, where the generator lives, then moved to the model's device)
                noise = torch.rand(logp.shape, generator=generator).clamp_min(1e-20).to(logp.device)
                sampled = (_selectable(logp, False, decoder.disallowed()) - (-noise.log()).log()).argmax(-1)
                explored = (torch.rand(n, generator=generator) < explore).to(logp.device)
                token = torch.where(explored, sampled, token)
            if step == limit - 1:
                token = torch.full_like(token, EOS)
            token = token.masked_fill(done, PAD)
            chosen = token.tolist()
            for r in open_rows:
                states[r] = experts[r].step(states[r], chosen[r])
            actions.append(token)
            optimal.append(best)
            done = done | (token == EOS)
            open_rows = [r for r in open_rows if chosen[r] != EOS]
            if not open_rows:
                break
    finally:
        model.train(was_training)
    return torch.stack(actions, 1), torch.stack(optimal, 1)


def roll_in_groups(model: Model, groups: list[tuple[Tensor, Tensor]], moves: tuple[int, int],
                   explore: float, generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor]]:
    """``roll_in`` of several ``(source [n_k, S_k], static oracle's actions [n_k, T_k])`` groups (a
    meta-batch's support and query sets) as one batch, which costs little more than one group's decoding;
    -> each group's (actions, optimal), cut to its own longest roll-in."""
    width = max(source.shape[1] for source, _ in groups)
    sources = torch.cat([F.pad(source, (0, width - source.shape[1]), value=PAD) for source, _ in groups])
    experts = [expert for source, target in groups for expert in experts_for(source, target, moves)]
    actions, optimal = roll_in(model, sources, experts, explore, generator)
    out, start = [], 0
    for source, _ in groups:
        rows = slice(start, start + source.shape[0])
        length = int((actions[rows] != PAD).sum(1).max())
        out.append((actions[rows, :length], optimal[rows, :length]))
        start += source.shape[0]
    return out


def imitation_loss(logits: Tensor, actions: Tensor, optimal: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean over the non-``PAD`` positions of ``actions [n, L]`` of ``-log`` the total probability of the
    ``optimal [n, L, V]`` actions under ``logits [n, L, V]``, label-smoothed as ``F.cross_entropy`` does (with
    one optimal action per position it equals ``sequence_loss``)."""
    valid = actions != PAD
    logp = torch.log_softmax(logits, dim=-1)
    chosen = optimal | ~valid.unsqueeze(-1)  # padded positions: anything, so nothing is -inf (no NaN grads)
    nll = -torch.logsumexp(logp.masked_fill(~chosen, float("-inf")), dim=-1)
    per_position = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    return (per_position * valid).sum() / valid.sum().clamp_min(1)
