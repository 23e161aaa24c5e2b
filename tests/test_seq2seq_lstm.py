"""The LSTM transducer (``architecture="lstm"``): teacher forcing against step-by-step decoding (its decoding
constraints and beam search: ``test_seq2seq_edits.py``), what its encoder and feature vector read, MAML's
second-order gradient against finite differences, a learner that writes words of an alphabet it never saw,
and its bad options."""

from __future__ import annotations

import pytest
import torch

from attnmeta.learners.seq2seq.registry import build_seq2seq
from attnmeta.nn.seq2seq import shift_right
from attnmeta.nn.seq2seq_lstm import Seq2SeqLSTM
from attnmeta.tasks.seq2seq import EOS, PAD, Seq2SeqTask, Vocabulary
from seq2seq_fixtures import (
    MOVES,
    TINY,
    VOCAB,
    check_incremental_decoding,
    check_maml_gradient,
    edit_pairs,
    lstm_model,
    trained_on_suffixes,
)


def test_lstm_teacher_forcing_matches_step_by_step(one_thread) -> None:
    """The one-action-at-a-time decoder (after beams are reordered too) gives teacher forcing's outputs."""
    src, tgt = edit_pairs(6, 2)
    check_incremental_decoding(lstm_model(1), src, shift_right(tgt), prefix=4)


def test_the_encoder_reads_the_symbols_to_edit_and_the_features_read_the_tags() -> None:
    model = lstm_model(3)
    src = torch.tensor([[4, 5, EOS, 6, PAD], [4, 5, EOS, 7, 6]])
    memory, mask = model.encode(src)
    assert mask.squeeze(1).tolist() == [[True, True, True, False, False]] * 2
    torch.testing.assert_close(memory[0], memory[1], rtol=0, atol=0)  # the tags are not encoded
    assert memory[:, 3:].abs().max() == 0
    features = model.features(src)
    embedded = model.embedding.weight * model.dim ** 0.5
    torch.testing.assert_close(features[0], embedded[6], rtol=0, atol=1e-12)
    torch.testing.assert_close(features[1], (embedded[6] + embedded[7]) / 2, rtol=0, atol=1e-12)
    target_in = torch.tensor([[1, MOVES[0], MOVES[0]]] * 2)
    logits = model.decode(memory, mask, target_in, src)
    assert (logits[0] - logits[1]).abs().max() > 1e-6  # ... and the decoder reads them


def test_maml_gradient_through_the_lstm_matches_finite_differences(one_thread) -> None:
    names = ["decoder.recurrent.weight", "backward_encoder.input.weight", "readout.bias", "embedding.weight"]
    check_maml_gradient(lstm_model(4), names)


@pytest.mark.parametrize("explore", [None, 0.3])
def test_an_lstm_learner_writes_words_of_an_alphabet_it_never_saw(one_thread, explore) -> None:
    """Trained on words of a-h plus the suffix xy (teacher forcing, or imitation learning), tested without
    fine-tuning on words of letters it never saw: it copies them and appends the suffix (measured: every
    word after 150 steps, both ways), a symbol it reads as unknown too."""
    options = {"edits": True, "architecture": "lstm", "dropout": 0.0, "explore": explore}
    learner, new = trained_on_suffixes(options)
    predictions, unknown = learner.predict_task(new)
    accuracy = sum(p == t for p, t in zip(predictions, new.query_target)) / len(predictions)
    assert unknown == 0 and accuracy >= 0.9, accuracy
    unseen = Seq2SeqTask(new.support_source, new.support_target, [("<N>", "i", "€", "k")],
                         [("i", "€", "k", "x", "y")])
    assert learner.predict_task(unseen) == ([("i", "€", "k", "x", "y")], 1)


def test_lstm_options_are_checked() -> None:
    vocab = Vocabulary(list("ab"), spare=0)
    with pytest.raises(ValueError, match=r"^architecture=lstm is a transducer of edit actions: it needs "
                                         r"edits=true$"):
        build_seq2seq("transfer", vocab, {**TINY, "architecture": "lstm"})
    with pytest.raises(ValueError, match=r"^architecture must be 'transformer' or 'lstm', got 'gru'$"):
        build_seq2seq("transfer", vocab, {**TINY, "edits": True, "architecture": "gru"})
    message = r"^dim must be even and >= 2, hidden and max_length >= 1, got dim=7, hidden=4, max_length=10$"
    with pytest.raises(ValueError, match=message):
        Seq2SeqLSTM(VOCAB, dim=7, hidden=4, max_length=10)
    with pytest.raises(ValueError, match=r"^target_in length 20 exceeds the model's max_length 14$"):
        model = lstm_model(0)
        src, _ = edit_pairs(2, 0)
        model.decode(*model.encode(src), torch.ones(2, 20, dtype=torch.long), src)
