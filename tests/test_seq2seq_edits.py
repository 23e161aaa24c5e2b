"""Hard monotonic attention with edit actions: the oracle against a longest-common-subsequence reference,
the pointer model's teacher forcing against step-by-step decoding, its decoding constraints, its MAML
gradient against finite differences, and a learner that writes words of an alphabet it never saw."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnmeta.learners.seq2seq.registry import build_seq2seq
from attnmeta.nn.seq2seq import (
    Seq2SeqTransformer,
    pointer_positions,
    sequence_log_prob,
    shift_right,
)
from attnmeta.nn.seq2seq_decoding import beam_search, greedy_decode
from attnmeta.tasks.seq2seq import EOS, PAD, Seq2SeqTask, Vocabulary
from attnmeta.tasks.seq2seq_edits import COPY, DELETE, apply_actions, edit_actions, split_tags
from seq2seq_fixtures import (
    MOVES,
    TINY,
    check_incremental_decoding,
    check_maml_gradient,
    edit_pairs,
    lstm_model,
    partly_trained,
    pointer_model,
    trained_on_suffixes,
)

words = st.text(alphabet="abc", max_size=7).map(tuple)


def lcs(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


@settings(max_examples=300, deadline=None)
@given(words, words)
def test_oracle_writes_the_target_with_the_fewest_inserts_and_deletes(source, target) -> None:
    actions = edit_actions(source, target)
    assert apply_actions(source, actions) == target
    moves = sum(a in (COPY, DELETE) for a in actions)
    edits = sum(a != COPY for a in actions)
    assert moves == len(source)
    assert edits == len(source) + len(target) - 2 * lcs(source, target)
    assert all(not (a not in (COPY, DELETE) and b == DELETE) for a, b in zip(actions, actions[1:]))


def test_oracle_and_tags_by_hand() -> None:
    assert edit_actions(tuple("lachen"), tuple("gelacht")) == (
        "g", "e", COPY, COPY, COPY, COPY, DELETE, DELETE, "t")
    assert edit_actions((), ("a",)) == ("a",) and edit_actions(("a",), ()) == (DELETE,)
    assert split_tags(("<V>", "<PST>", "g", "<", ">", "o")) == (("g", "<", ">", "o"), ("<V>", "<PST>"))
    assert apply_actions(("a",), (COPY, COPY, DELETE, "b")) == ("a", "b")  # moves past the end do nothing


def test_pointer_positions_count_moves_and_stop_at_the_sources_end() -> None:
    copy, delete = MOVES
    source = torch.tensor([[5, 6, EOS, 7], [5, EOS, PAD, PAD], [5, 6, 7, PAD]])
    target_in = torch.tensor([[1, copy, 4, delete, copy, 4],
                              [1, 4, copy, copy, 4, 4],
                              [1, delete, delete, delete, delete, 4]])
    # row 3 has no EOS: its end is its length (3), where the padding starts
    expected = torch.tensor([[0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 1], [0, 1, 2, 3, 3, 3]])
    assert torch.equal(pointer_positions(target_in, source, MOVES), expected)


def test_pointer_teacher_forcing_matches_step_by_step(one_thread) -> None:
    """The cached decoder (its pointers too, after beams are reordered) gives teacher forcing's outputs."""
    model = pointer_model(1)
    src, tgt = edit_pairs(6, 2)
    check_incremental_decoding(model, src, shift_right(tgt), prefix=4)


@pytest.mark.parametrize("network", ["transformer", "lstm"])
def test_pointer_decoding_keeps_the_pointer_on_the_source_and_beam_one_is_greedy(one_thread, network) -> None:
    """Either network (the LSTM transducer: ``attnmeta.nn.seq2seq_lstm``)."""
    model = partly_trained(2, 60) if network == "transformer" else partly_trained(
        2, 80, lstm_model(2, torch.float32))
    src, _ = edit_pairs(16, 7)
    greedy = greedy_decode(model, src)
    best, score = beam_search(model, src, beam=1)
    assert torch.equal(best, greedy)
    torch.testing.assert_close(score, sequence_log_prob(model, src, greedy), rtol=0, atol=1e-4)
    best5, score5 = beam_search(model, src, beam=5)
    torch.testing.assert_close(score5, sequence_log_prob(model, src, best5), rtol=0, atol=1e-4)
    ends = (src == EOS).int().argmax(1)
    for out in (greedy, best5):
        for row, end in zip(out.tolist(), ends.tolist()):
            body = row[:row.index(EOS)]
            assert sum(t in MOVES for t in body) == end  # every source symbol read, none past the end
            assert PAD not in body and 1 not in body


def test_maml_gradient_through_the_pointer_matches_finite_differences(one_thread) -> None:
    names = ["pointer_proj.weight", "pointer_proj.bias", "encoder_layers.1.ff.linear1.weight"]
    check_maml_gradient(pointer_model(4, max_length=14), names)


def test_an_edits_learner_writes_words_of_an_alphabet_it_never_saw(one_thread) -> None:
    """Trained on words of a-h with the suffix xy, tested (no fine-tuning) on words of letters it never saw
    (spare ids, untrained embeddings): the edit-action model copies them and appends the suffix (measured:
    every word after 150 steps), even a symbol it reads as unknown; the plain model writes none of them
    right. About 10 s on one thread."""
    scores = {}
    for edits in (False, True):
        learner, new = trained_on_suffixes({"edits": edits})
        predictions, unknown = learner.predict_task(new)
        assert unknown == 0
        scores[edits] = sum(p == t for p, t in zip(predictions, new.query_target)) / len(predictions)
    assert scores[True] >= 0.9 and scores[False] <= 0.1, scores
    # a symbol seen neither in training nor in the support pairs is read as UNK, and copied as itself
    unseen = Seq2SeqTask(new.support_source, new.support_target, [("<N>", "i", "€", "k")],
                         [("i", "€", "k", "x", "y")])
    assert learner.predict_task(unseen) == ([("i", "€", "k", "x", "y")], 1)


def test_copy_and_edits_together_are_refused() -> None:
    vocab = Vocabulary(list("ab"), spare=0)
    message = r"^copy and edits are two ways of copying source symbols: choose one$"
    with pytest.raises(ValueError, match=message):
        build_seq2seq("transfer", vocab, {**TINY, "copy": True, "edits": True})
    with pytest.raises(ValueError, match=r"^copy=True and pointer=True are two ways of copying: choose one$"):
        Seq2SeqTransformer(8, copy=True, pointer=True)
    with pytest.raises(ValueError, match=r"^a pointer model \(pointer=True\) needs the source ids: "):
        model = pointer_model(0)
        src, tgt = edit_pairs(2, 0)
        model.decode(*model.encode(src), shift_right(tgt))
