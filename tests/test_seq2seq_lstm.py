"""The LSTM transducer (``architecture="lstm"``): teacher forcing against step-by-step decoding, decoding's
constraints, what its encoder and feature vector read, MAML's second-order gradient against finite
differences, a learner that writes words of an alphabet it never saw, and its bad options."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from attnmeta.learners.seq2seq.registry import build_seq2seq
from attnmeta.nn.seq2seq import sequence_log_prob, sequence_loss, shift_right
from attnmeta.nn.seq2seq_decoding import beam_search, greedy_decode
from attnmeta.nn.seq2seq_lstm import Seq2SeqLSTM
from attnmeta.tasks.seq2seq import EOS, PAD, Seq2SeqTask, Vocabulary
from seq2seq_fixtures import MOVES, TINY, VOCAB, check_incremental_decoding, edit_pairs, trained_on_suffixes


def lstm_model(seed: int, dtype: torch.dtype = torch.float64, max_length: int = 14) -> Seq2SeqLSTM:
    torch.manual_seed(seed)
    return Seq2SeqLSTM(VOCAB, dim=8, hidden=12, dropout=0.0, max_length=max_length).to(dtype).eval()


def copier(seed: int, steps: int = 80) -> Seq2SeqLSTM:
    """Trained briefly to copy or delete its source: outputs of varied length and some uncertainty."""
    model = lstm_model(seed, torch.float32).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        src, _ = edit_pairs(32, 1000 * seed + step)
        lengths = (src == EOS).int().argmax(1)
        tgt = torch.zeros(32, src.shape[1] + 1, dtype=torch.long)
        for i, length in enumerate(lengths.tolist()):
            tgt[i, :length] = MOVES[0] if i % 3 else MOVES[1]
            tgt[i, length] = EOS
        loss = sequence_loss(model(src, shift_right(tgt)), tgt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_lstm_teacher_forcing_matches_step_by_step(one_thread) -> None:
    """The one-action-at-a-time decoder (after beams are reordered too) gives teacher forcing's outputs."""
    src, tgt = edit_pairs(6, 2)
    check_incremental_decoding(lstm_model(1), src, shift_right(tgt), prefix=4)


def test_lstm_decoding_keeps_the_pointer_on_the_source_and_beam_one_is_greedy(one_thread) -> None:
    model = copier(2)
    src, _ = edit_pairs(16, 7)
    greedy = greedy_decode(model, src)
    best, score = beam_search(model, src, beam=1)
    assert torch.equal(best, greedy)
    torch.testing.assert_close(score, sequence_log_prob(model, src, greedy), rtol=0, atol=1e-4)
    best5, score5 = beam_search(model, src, beam=5)
    torch.testing.assert_close(score5, sequence_log_prob(model, src, best5), rtol=0, atol=1e-4)
    assert bool((score5 >= score - 1e-5).all())
    ends = (src == EOS).int().argmax(1)
    for out in (greedy, best5):
        for row, end in zip(out.tolist(), ends.tolist()):
            body = row[:row.index(EOS)]
            assert sum(t in MOVES for t in body) == end  # every source symbol read, none past the end
            assert PAD not in body and 1 not in body


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
    model = lstm_model(4)
    s_src, s_tgt = edit_pairs(3, 40, max_src=3)
    q_src, q_tgt = edit_pairs(3, 41, max_src=3)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}

    def query_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        support = sequence_loss(functional_call(model, p, (s_src, shift_right(s_tgt))), s_tgt)
        grads = torch.autograd.grad(support, list(p.values()), create_graph=True)
        fast = {n: w - 0.5 * g for (n, w), g in zip(p.items(), grads)}
        return sequence_loss(functional_call(model, fast, (q_src, shift_right(q_tgt))), q_tgt)

    names = ["decoder.recurrent.weight", "backward_encoder.input.weight", "readout.bias", "embedding.weight"]
    grads = torch.autograd.grad(query_loss(params), [params[n] for n in names])
    for name, grad in zip(names, grads):
        flat = params[name].detach().reshape(-1)
        for index in (0, flat.numel() // 2, flat.numel() - 1):
            loss_at = []
            for sign in (1.0, -1.0):
                value = flat.clone()
                value[index] += sign * 1e-6
                shifted = value.reshape(params[name].shape).requires_grad_()
                loss_at.append(float(query_loss({**params, name: shifted})))
            numeric = (loss_at[0] - loss_at[1]) / 2e-6
            assert float(grad.reshape(-1)[index]) == pytest.approx(numeric, rel=1e-5, abs=1e-8)


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
