"""Tests of the character-level Transformer encoder-decoder (attnmeta.nn.seq2seq)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from attnmeta.nn.seq2seq import (
    Seq2SeqTransformer,
    copy_log_probs,
    sequence_log_prob,
    sequence_loss,
    shift_right,
)
from attnmeta.nn.seq2seq_decoding import beam_search, greedy_decode
from attnmeta.tasks.seq2seq import BOS, EOS, PAD
from seq2seq_fixtures import check_incremental_decoding

VOCAB = 12


def tiny(seed: int = 0, dtype: torch.dtype = torch.float64, dim: int = 16, max_length: int = 12,
         vocab: int = VOCAB, copy: bool = False) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    return Seq2SeqTransformer(vocab, dim=dim, heads=2, layers=2, ff_dim=2 * dim, dropout=0.0,
                              max_length=max_length, copy=copy).to(dtype).eval()


def random_pairs(n: int, seed: int, vocab: int = VOCAB, max_src: int = 7,
                 max_tgt: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources ``[n, max_src]`` PAD-padded and targets ``[n, max_tgt + 1]`` EOS-terminated, lengths vary."""
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(n, max_src, dtype=torch.long)
    tgt = torch.zeros(n, max_tgt + 1, dtype=torch.long)
    for i in range(n):
        ls = int(torch.randint(1, max_src + 1, (1,), generator=g))
        lt = int(torch.randint(1, max_tgt + 1, (1,), generator=g))
        src[i, :ls] = torch.randint(4, vocab, (ls,), generator=g)
        tgt[i, :lt] = torch.randint(4, vocab, (lt,), generator=g)
        tgt[i, lt] = EOS
    return src, tgt


def partly_trained(seed: int, dtype: torch.dtype = torch.float64, steps: int = 40,
                   copy: bool = False) -> Seq2SeqTransformer:
    """A tiny model trained briefly on a noisy copy task: confident enough to emit outputs of varied
    lengths (untrained models repeat one token), uncertain enough that beam search beats greedy."""
    model = tiny(seed, dtype=dtype, vocab=8, copy=copy).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        src, tgt = random_pairs(32, 1000 * seed + step, vocab=8)
        body = tgt[:, :-1]
        tgt[:, :-1] = torch.where((body > EOS) & (src[:, :6] > EOS), src[:, :6], body)
        loss = sequence_loss(model(src, shift_right(tgt)), tgt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def check_format(out: torch.Tensor) -> None:
    """Each row: tokens other than PAD/BOS, one EOS, then only PAD."""
    assert out.dtype == torch.long and out.dim() == 2
    for row in out.tolist():
        assert EOS in row
        end = row.index(EOS)
        assert all(t not in (PAD, BOS, EOS) for t in row[:end])
        assert all(t == PAD for t in row[end + 1:])


def test_shapes_shift_right_and_loss() -> None:
    model = tiny()
    src, tgt = random_pairs(5, 0)
    target_in = shift_right(tgt)
    assert target_in[:, 0].eq(BOS).all() and torch.equal(target_in[:, 1:], tgt[:, :-1])
    memory, mask = model.encode(src)
    assert memory.shape == (5, 7, 16) and mask.shape == (5, 1, 7) and mask.dtype == torch.bool
    logits = model(src, target_in)
    assert logits.shape == (5, 7, VOCAB)
    expected = F.cross_entropy(logits[tgt != PAD], tgt[tgt != PAD])
    torch.testing.assert_close(sequence_loss(logits, tgt), expected)
    assert sequence_loss(logits, torch.zeros_like(tgt)).item() == 0.0  # all PAD: 0, not NaN
    logp = torch.log_softmax(logits, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(sequence_log_prob(model, src, tgt), (logp * (tgt != PAD)).sum(-1))


def test_causal_and_source_padding() -> None:
    model = tiny(1)
    src, tgt = random_pairs(4, 1)
    target_in = shift_right(tgt)
    logits = model(src, target_in)
    for t in range(target_in.shape[1] - 1):
        changed = target_in.clone()
        changed[:, t + 1:] = torch.randint(4, VOCAB, changed[:, t + 1:].shape)
        torch.testing.assert_close(model(src, changed)[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-12)
        assert not torch.allclose(model(src, changed)[:, t + 1:], logits[:, t + 1:])
    # a padded source gives the same memory at real positions and the same logits as the source alone
    row = 2
    length = int((src[row] != PAD).sum())
    padded = torch.cat([src, torch.zeros(4, 5, dtype=torch.long)], 1)  # extra padding columns too
    memory, _ = model.encode(padded)
    alone_memory, _ = model.encode(src[row:row + 1, :length])
    torch.testing.assert_close(memory[row:row + 1, :length], alone_memory, rtol=0, atol=1e-10)
    torch.testing.assert_close(model(padded, target_in)[row:row + 1],
                               model(src[row:row + 1, :length], target_in[row:row + 1]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("copy", [False, True])
def test_teacher_forcing_matches_step_by_step(copy: bool) -> None:
    model = partly_trained(2, copy=copy)
    src, tgt = random_pairs(6, 2, vocab=8)
    target_in = shift_right(tgt)
    memory, mask = model.encode(src)
    full = check_incremental_decoding(model, src, target_in)  # the cached decoder, beams reordered
    for t in range(target_in.shape[1]):
        step = model.decode(memory, mask, target_in[:, : t + 1], src)[:, -1]
        torch.testing.assert_close(step, full[:, t], rtol=0, atol=1e-10)
    # greedy by hand, one step at a time, and its log-probability
    out = greedy_decode(model, src, max_length=9)
    check_format(out)
    assert len(set((out != PAD).sum(1).tolist())) > 1  # varied lengths
    for i in range(src.shape[0]):
        prefix, total = [BOS], 0.0
        for step_index in range(9):
            with torch.no_grad():
                logp = torch.log_softmax(model(src[i:i + 1], torch.tensor([prefix]))[0, -1], -1)
            allowed = logp.clone()
            allowed[[PAD, BOS]] = float("-inf")
            if step_index == 8:  # the last allowed step forces EOS
                allowed[:] = float("-inf")
                allowed[EOS] = logp[EOS]
            token = int(allowed.argmax())
            prefix.append(token)
            total += float(logp[token])
            if token == EOS:
                break
        hyp = prefix[1:]
        assert out[i, : len(hyp)].tolist() == hyp and out[i, len(hyp):].eq(PAD).all()
        assert sequence_log_prob(model, src[i:i + 1], out[i:i + 1]).item() == pytest.approx(total, abs=1e-10)


def test_greedy_truncates_with_eos() -> None:
    model = tiny(3)
    src, _ = random_pairs(5, 3)
    out = greedy_decode(model, src, max_length=2)
    assert out.shape[1] <= 2
    check_format(out)


@pytest.mark.parametrize(("seed", "copy"), [(0, False), (1, False), (2, True), (3, True)])
def test_beam_one_is_greedy_and_scores_are_log_probs(seed: int, copy: bool) -> None:
    model = partly_trained(seed, dtype=torch.float32, copy=copy)
    src, _ = random_pairs(7, seed + 10, vocab=8)
    greedy = greedy_decode(model, src)
    best, score = beam_search(model, src, beam=1)
    assert torch.equal(best, greedy)
    torch.testing.assert_close(score, sequence_log_prob(model, src, greedy), rtol=0, atol=1e-4)
    best5, score5 = beam_search(model, src, beam=5)
    check_format(best5)
    torch.testing.assert_close(score5, sequence_log_prob(model, src, best5), rtol=0, atol=1e-4)


def test_beam_finds_better_hypotheses_than_greedy() -> None:
    model = partly_trained(5)
    src, _ = random_pairs(20, 5, vocab=8)
    with torch.no_grad():
        greedy_score = sequence_log_prob(model, src, greedy_decode(model, src))
        best, score = beam_search(model, src, beam=5)
        torch.testing.assert_close(score, sequence_log_prob(model, src, best), rtol=0, atol=1e-10)
    check_format(best)
    # not guaranteed row by row, but a wider beam finds likelier hypotheses here
    assert bool((score >= greedy_score - 1e-9).all()) and bool((score > greedy_score + 1e-6).any())


@pytest.mark.parametrize("eos_penalty", [0.0, 20.0])
def test_wide_beam_is_exact_search(eos_penalty: float) -> None:
    """With max_length 3 and 3 likely non-EOS tokens (the others made 50 nats less likely) there are
    1 + 3 + 9 candidate outputs: a beam of 13 keeps every prefix of them, so it must return the most likely
    one (found here by enumeration). Penalising EOS makes the 2-token outputs win, whose ranking depends on
    the last step's log-probabilities (decoded from reordered cached states)."""
    model = partly_trained(6)
    with torch.no_grad():
        model.output_bias[[4, 5, 6, 7]] -= torch.tensor([0.0, 0.0, 50.0, 50.0], dtype=torch.float64)
        model.output_bias[EOS] -= eos_penalty
    src, _ = random_pairs(6, 6, vocab=8)
    best, score = beam_search(model, src, beam=13, max_length=3)
    bodies = [[]] + [[a] for a in (3, 4, 5)] + [[a, b] for a in (3, 4, 5) for b in (3, 4, 5)]
    candidates = torch.tensor([body + [EOS] + [PAD] * (2 - len(body)) for body in bodies])
    for i in range(src.shape[0]):
        with torch.no_grad():
            scores = sequence_log_prob(model, src[i:i + 1].expand(len(bodies), -1), candidates)
        j = int(scores.argmax())
        expected = candidates[j, : len(bodies[j]) + 1]
        assert best[i, : expected.shape[0]].tolist() == expected.tolist()
        assert best[i, expected.shape[0]:].eq(PAD).all()
        assert score[i].item() == pytest.approx(scores[j].item(), abs=1e-10)


@pytest.mark.parametrize("copy", [False, True])
def test_maml_second_order_gradient_matches_finite_differences(copy: bool) -> None:
    model = tiny(4, dim=16, max_length=8, vocab=8, copy=copy)
    s_src, s_tgt = random_pairs(3, 40, vocab=8, max_src=4, max_tgt=3)
    q_src, q_tgt = random_pairs(3, 41, vocab=8, max_src=4, max_tgt=3)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    lr = 0.5

    def query_loss(p: dict[str, torch.Tensor], create_graph: bool) -> torch.Tensor:
        support = sequence_loss(functional_call(model, p, (s_src, shift_right(s_tgt))), s_tgt)
        grads = torch.autograd.grad(support, list(p.values()), create_graph=create_graph)
        fast = {n: w - lr * g for (n, w), g in zip(p.items(), grads)}
        return sequence_loss(functional_call(model, fast, (q_src, shift_right(q_tgt))), q_tgt)

    names = ["embedding.weight", "decoder_layers.1.cross_attention.q_proj.weight",
             "encoder_layers.0.self_attention.k_proj.weight", "decoder_layers.0.self_attention.v_proj.weight",
             "positions.weight"] + (["copy_gate.weight"] if copy else [])
    grads = dict(zip(names, torch.autograd.grad(query_loss(params, True), [params[n] for n in names])))
    # torch.func second order (grad of a function whose inner step uses torch.func.grad) agrees
    def func_query_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        def support(w: dict[str, torch.Tensor]) -> torch.Tensor:
            return sequence_loss(functional_call(model, w, (s_src, shift_right(s_tgt))), s_tgt)
        inner = torch.func.grad(support)(p)
        fast = {n: w - lr * inner[n] for n, w in p.items()}
        return sequence_loss(functional_call(model, fast, (q_src, shift_right(q_tgt))), q_tgt)

    func_grads = torch.func.grad(func_query_loss)({n: p.detach() for n, p in params.items()})
    for n in names:
        torch.testing.assert_close(func_grads[n], grads[n], rtol=1e-9, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for n in names:
        for _ in range(2):
            index = tuple(int(torch.randint(0, s, (1,), generator=g)) for s in params[n].shape)
            values = []
            for sign in (1.0, -1.0):
                shifted = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
                with torch.no_grad():
                    shifted[n][index] += sign * eps
                values.append(query_loss(shifted, False).item())
            numeric = (values[0] - values[1]) / (2 * eps)
            assert grads[n][index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8), (n, index)


def test_learns_string_reversal() -> None:
    torch.manual_seed(0)
    alphabet = 5
    vocab = 4 + alphabet

    def reversal_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.randint(3, 7, (n,), generator=g)
        src = torch.zeros(n, 6, dtype=torch.long)
        tgt = torch.zeros(n, 7, dtype=torch.long)
        for i, length in enumerate(lengths.tolist()):
            symbols = torch.randint(4, vocab, (length,), generator=g)
            src[i, :length], tgt[i, :length], tgt[i, length] = symbols, symbols.flip(0), EOS
        return src, tgt

    model = Seq2SeqTransformer(vocab, dim=32, heads=2, layers=2, ff_dim=64, dropout=0.0, max_length=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        src, tgt = reversal_batch(64, g)
        loss = sequence_loss(model(src, shift_right(tgt)), tgt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_src, test_tgt = reversal_batch(300, torch.Generator().manual_seed(1))
    out = greedy_decode(model, test_src)
    width = max(out.shape[1], test_tgt.shape[1])
    out, test_tgt = F.pad(out, (0, width - out.shape[1])), F.pad(test_tgt, (0, width - test_tgt.shape[1]))
    accuracy = (out == test_tgt).all(1).float().mean().item()
    assert accuracy >= 0.95
    beam_out, _ = beam_search(model, test_src[:50], beam=3)
    beam_out = F.pad(beam_out, (0, width - beam_out.shape[1]))
    assert (beam_out == test_tgt[:50]).all(1).float().mean().item() >= 0.95


def test_bad_inputs() -> None:
    model = tiny(max_length=6)
    with pytest.raises(ValueError) as info:
        model(torch.full((2, 7), 5), torch.full((2, 3), BOS))
    assert str(info.value) == "source length 7 exceeds the model's max_length 6"
    with pytest.raises(ValueError, match="target_in length 9 exceeds"):
        model(torch.full((2, 3), 5), torch.full((2, 9), BOS))
    with pytest.raises(ValueError, match=r"max_length must be in \[1, 6\]"):
        greedy_decode(model, torch.full((2, 3), 5), max_length=7)
    with pytest.raises(ValueError, match="beam must be >= 1"):
        beam_search(model, torch.full((2, 3), 5), beam=0)
    with pytest.raises(ValueError, match="source length 7 exceeds"):
        greedy_decode(model, torch.full((2, 7), 5))


def test_copy_log_probs_mix_generation_and_the_attention_over_source_tokens() -> None:
    logits = torch.tensor([[[0.0, 0.0, 1.0, 0.0, 2.0, 0.0]]], dtype=torch.float64)  # [1, 1, 6]
    source = torch.tensor([[4, 5, 4, PAD]])
    attention = torch.tensor([[[0.2, 0.5, 0.3, 0.0]]], dtype=torch.float64)
    gate = torch.tensor([[[0.25]]], dtype=torch.float64)
    logp = copy_log_probs(logits, gate, attention, source)
    expected = 0.25 * torch.softmax(logits, -1) + 0.75 * torch.tensor([0, 0, 0, 0, 0.5, 0.5])
    torch.testing.assert_close(logp.exp(), expected + 1e-10, rtol=0, atol=1e-12)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-8)


def test_copy_writes_tokens_whose_embeddings_were_never_trained(one_thread) -> None:
    """Trained to copy strings of tokens 4-7 (vocabulary 12), tested on strings of tokens 8-11 it never saw
    (untrained embeddings, as input and as output): the pointer-generator copies most of them whole
    (measured: 22 of 32 strings after 200 steps; every string of seen tokens), the plain model none (it
    cannot write them). About 7 s on one thread."""
    correct = {}
    for copy in (False, True):
        model = tiny(7, dtype=torch.float32, vocab=12, copy=copy).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(200):
            src, _ = random_pairs(32, 500 + step, vocab=8, max_src=6)
            tgt = torch.cat([src, torch.zeros_like(src[:, :1])], 1)
            tgt[torch.arange(32), (src != PAD).sum(1)] = EOS
            loss = sequence_loss(model(src, shift_right(tgt)), tgt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        src, _ = random_pairs(32, 9999, vocab=12, max_src=6)
        src = torch.where(src == PAD, src, (src % 4) + 8)  # tokens 8..11 only
        out = greedy_decode(model.eval(), src)
        lengths = (src != PAD).sum(1)
        correct[copy] = sum(out[i, :int(lengths[i])].tolist() == src[i, :int(lengths[i])].tolist()
                            and int(out[i, int(lengths[i])]) == EOS for i in range(32)) / 32
    assert correct[True] >= 0.6 and correct[False] == 0.0, correct


def test_a_copying_model_needs_the_source_to_decode() -> None:
    model = tiny(copy=True)
    src, tgt = random_pairs(2, 0)
    memory, mask = model.encode(src)
    with pytest.raises(ValueError, match=r"^a copying model \(copy=True\) needs the source ids: "
                                         r"decode\(memory, source_mask, target_in, source\)$"):
        model.decode(memory, mask, shift_right(tgt))
    plain = tiny()
    target_in = shift_right(tgt)
    torch.testing.assert_close(plain.decode(*plain.encode(src), target_in), plain(src, target_in))


@pytest.mark.parametrize("copy", [False, True])
def test_an_ensemble_decodes_with_the_members_mean_probability(copy: bool) -> None:
    """One member decodes as the model alone; two give beam-1 = greedy, and a beam's score is the sum over
    its tokens of log(mean of the members' teacher-forced probabilities)."""
    first, second = partly_trained(7, copy=copy), partly_trained(8, copy=copy)
    src, _ = random_pairs(9, 7, vocab=8)
    assert torch.equal(greedy_decode([first], src), greedy_decode(first, src))
    assert torch.equal(beam_search([first], src, beam=3)[0], beam_search(first, src, beam=3)[0])
    greedy = greedy_decode([first, second], src)
    best, score = beam_search([first, second], src, beam=1)
    assert torch.equal(best, greedy)
    check_format(greedy)
    best5, score5 = beam_search([first, second], src, beam=5)
    for out, total in ((greedy, score), (best5, score5)):
        with torch.no_grad():
            logp = torch.stack([torch.log_softmax(m(src, shift_right(out)), -1) for m in (first, second)])
        mean = (torch.logsumexp(logp, 0) - math.log(2)).gather(-1, out.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(total, mean.masked_fill(out == PAD, 0.0).sum(-1), rtol=0, atol=1e-9)
    alone = [greedy_decode(m, src) for m in (first, second)]
    assert not all(torch.equal(greedy, out) for out in alone)  # the members do not all decode alike
    with pytest.raises(ValueError, match=r"^an ensemble's models must share the vocabulary, max_length and "
                                         r"actions$"):
        greedy_decode([first, tiny(0, vocab=9)], src)
    with pytest.raises(ValueError, match=r"^an ensemble needs at least one model$"):
        greedy_decode([], src)
