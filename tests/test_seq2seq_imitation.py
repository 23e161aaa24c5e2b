"""Imitation learning of edit actions: the roll-in follows the expert (or the model), the loss is the
optimal actions' total probability, and a learner trained by it learns."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from attnmeta.learners.seq2seq.imitation import experts_for, imitation_loss, roll_in, roll_in_groups
from attnmeta.learners.seq2seq.registry import build_seq2seq
from attnmeta.nn.seq2seq import sequence_loss
from attnmeta.tasks.seq2seq import EOS, PAD, Seq2SeqBatch, Vocabulary
from seq2seq_fixtures import MOVES, TINY, edit_pairs, partly_trained, suffix_task, trained_on_suffixes


def test_with_one_optimal_action_the_loss_is_the_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 9, requires_grad=True)
    target = torch.tensor([[4, 5, EOS, PAD, PAD], [6, 6, 7, 8, EOS], [EOS, PAD, PAD, PAD, PAD]])
    optimal = F.one_hot(target, 9).bool() & (target != PAD).unsqueeze(-1)
    loss = imitation_loss(logits, target, optimal, label_smoothing=0.1)
    torch.testing.assert_close(loss, sequence_loss(logits, target, 0.1))
    loss.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    # two optimal actions: -log of their summed probability
    both = optimal.clone()
    both[0, 0, 7] = True
    logp = logits.detach().log_softmax(-1)
    expected = -torch.logsumexp(logp[0, 0, [4, 7]], 0)
    per_position = imitation_loss(logits.detach()[:1, :1], target[:1, :1], both[:1, :1])
    torch.testing.assert_close(per_position, expected)


def _rolled_targets(actions: list[int], source: list[int]) -> list[int]:
    out, pointer = [], 0
    for a in actions:
        if a == EOS:
            break
        if a == MOVES[0]:
            out.append(source[pointer])
        if a in MOVES:
            pointer += 1
        else:
            out.append(a)
    return out


@pytest.mark.parametrize("explore", [0.0, 1.0])
def test_a_roll_in_records_the_experts_optimal_actions_at_every_state(one_thread, explore: float) -> None:
    """Following the expert writes every target exactly; sampling from the model writes other outputs, and
    at each of their states the recorded optimal actions are the expert's for that state."""
    model = partly_trained(3, steps=20)
    source, target = edit_pairs(12, 5)
    experts = experts_for(source, target, MOVES)
    actions, optimal = roll_in(model, source, experts, explore, torch.Generator().manual_seed(0))
    assert actions.shape == optimal.shape[:2]
    ends = (source == EOS).int().argmax(1).tolist()
    wrong = 0
    for r, expert in enumerate(experts):
        row = actions[r].tolist()
        length = row.index(EOS) + 1
        assert all(a == PAD for a in row[length:]) and not optimal[r, length:].any()
        assert sum(a in MOVES for a in row[:length]) == ends[r]  # the pointer read the whole source
        written = _rolled_targets(row, source[r, :ends[r]].tolist())
        if explore == 0.0:
            assert written == list(expert.target)
        wrong += written != list(expert.target)
        state = expert.start()
        for t in range(length):
            assert set(torch.nonzero(optimal[r, t]).flatten().tolist()) == set(expert.optimal(state))
            assert explore > 0 or bool(optimal[r, t, row[t]])
            state = expert.step(state, row[t])
    assert explore == 0.0 or wrong > 0  # the model's own samples leave the gold path


def test_groups_rolled_in_together_equal_each_rolled_in_alone(one_thread) -> None:
    """A meta-batch's support and query sets roll in as one batch (sources of other widths padded): each
    group gets what its own roll-in gives (following the expert, nothing random)."""
    model = partly_trained(4, steps=20)
    groups = [edit_pairs(5, 11, max_src=3), edit_pairs(7, 12, max_src=5), edit_pairs(3, 13, max_src=2)]
    together = roll_in_groups(model, groups, MOVES, explore=0.0)
    for (source, target), (actions, optimal) in zip(groups, together):
        alone = roll_in(model, source, experts_for(source, target, MOVES), 0.0)
        assert torch.equal(actions, alone[0]) and torch.equal(optimal, alone[1])


def test_an_imitation_learner_learns_and_the_option_is_checked(one_thread) -> None:
    """The suffix task of the edit-action tests, trained by imitation learning with exploration: the learner
    writes the new alphabet's words (measured: every word after 150 steps). About 15 s on one thread."""
    learner, new = trained_on_suffixes({"edits": True, "explore": 0.3})
    predictions, _ = learner.predict_task(new)
    assert sum(p == t for p, t in zip(predictions, new.query_target)) / len(predictions) >= 0.9
    message = (r"^explore \(imitation learning of edit actions\) must be in \[0, 1\] and needs edits=true, "
               r"got explore=0.5 with edits=False$")
    vocab = Vocabulary(list("ab"), spare=0)
    with pytest.raises(ValueError, match=message):
        build_seq2seq("transfer", vocab, {**TINY, "explore": 0.5})
    with pytest.raises(ValueError, match=r"got explore=1.5 with edits=True$"):
        build_seq2seq("transfer", vocab, {**TINY, "edits": True, "explore": 1.5})


def test_finetune_explore_rolls_in_at_test_time_only(monkeypatch) -> None:
    """``finetune_explore`` makes the test-time fine-tuning imitation learning and leaves pooled training
    on the oracle's actions; ``explore`` does both; each is checked alike."""
    from attnmeta.learners.seq2seq import base

    rates: list[float] = []

    def counted(model, groups, moves, explore, generator=None):
        rates.append(explore)
        return roll_in_groups(model, groups, moves, explore, generator)

    monkeypatch.setattr(base, "roll_in_groups", counted)
    vocab = Vocabulary(sorted(set("abcdefghxy")) + ["<N>"], spare=8)
    batch = Seq2SeqBatch([suffix_task("train", "abcdefgh", 8, 0)])
    task = suffix_task("new", "abcdefgh", 8, 1)
    for options, expected in (({"finetune_explore": 0.3}, [0.3, 0.3]),
                              ({"explore": 0.2}, [0.2, 0.2, 0.2]),
                              ({"explore": 0.2, "finetune_explore": 0.0}, [0.2, 0.0, 0.0])):
        torch.manual_seed(0)
        learner = build_seq2seq("transfer", vocab, {**TINY, "edits": True, "finetune_steps": 2, **options})
        rates.clear()
        learner.meta_loss(batch)  # pooled training: one roll-in of the batch with explore, if any
        learner.predict_task(task)  # fine-tuning: one roll-in per step
        assert rates == expected, options
    message = (r"^finetune_explore \(imitation learning of edit actions\) must be in \[0, 1\] and needs "
               r"edits=true, got finetune_explore=0.3 with edits=False$")
    with pytest.raises(ValueError, match=message):
        build_seq2seq("transfer", vocab, {**TINY, "finetune_explore": 0.3})
