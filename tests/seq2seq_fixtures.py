"""Small few-shot sequence-to-sequence problems the tests write: affix tasks (each task wraps a word in its
own prefix and suffix, as a language's inflection would), as a parallel-data TSV file."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.func import functional_call

from attnmeta.nn.seq2seq import Seq2SeqTransformer, sequence_loss, shift_right
from attnmeta.nn.seq2seq_decoding import Model, incremental_decoder
from attnmeta.nn.seq2seq_lstm import Seq2SeqLSTM
from attnmeta.tasks.seq2seq import EOS, PAD, Seq2SeqBatch, Seq2SeqTask, Vocabulary

ALPHABET = "abcdefgh"
AFFIXES = "xyzqrstuvw"
#: A pointer model's vocabulary size in the tests, and its COPY, DELETE ids.
VOCAB = 10
MOVES = (VOCAB - 2, VOCAB - 1)
#: Model options small enough for tests.
TINY = {"dim": 32, "heads": 2, "layers": 1, "ff_dim": 64, "dropout": 0.0, "max_length": 16,
        "label_smoothing": 0.0}


def affix_rule(task: int) -> tuple[str, str]:
    """Task ``task``'s (prefix, suffix)."""
    rng = random.Random(task)
    return rng.choice(AFFIXES), "".join(rng.choice(AFFIXES) for _ in range(2))


def affix_pairs(task: int, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (word, prefix + word + suffix) pairs of task ``task``; words of 3-5 letters."""
    rng = random.Random(1000 * seed + task)
    prefix, suffix = affix_rule(task)
    words = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 5))) for _ in range(n)]
    return [(w, prefix + w + suffix) for w in words]


def write_affix_tsv(path: Path, tasks: int = 12, pairs: int = 40) -> Path:
    """``source<TAB>target<TAB>task`` lines of ``tasks`` affix tasks (named ``t0`` ...)."""
    lines = [f"{s}\t{t}\tt{k}\n" for k in range(tasks) for s, t in affix_pairs(k, pairs)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def check_incremental_decoding(model: Model, src: torch.Tensor, target_in: torch.Tensor,
                               prefix: int = 3) -> torch.Tensor:
    """Assert that the decoders' cached one-token-at-a-time path gives teacher forcing's next-token
    log-probabilities, also after ``reorder`` (beam search: the 6 hypotheses of one source take over each
    other's cached prefixes of ``prefix`` tokens); returns teacher forcing's outputs ``[B, T, V]``."""
    memory, mask = model.encode(src)
    full = model.decode(memory, mask, target_in, src)
    with torch.no_grad():
        incremental = incremental_decoder(model, memory, mask, src)
        for t in range(target_in.shape[1]):
            torch.testing.assert_close(incremental.step(target_in[:, t]), torch.log_softmax(full[:, t], -1),
                                       rtol=0, atol=1e-10)
        rows = torch.tensor([3, 0, 0, 5, 1, 2])
        one = (memory[:1].expand(6, -1, -1), mask[:1].expand(6, -1, -1), src[:1].expand(6, -1))
        incremental = incremental_decoder(model, *one)
        for t in range(prefix):
            incremental.step(target_in[:6, t])
        incremental.reorder(rows)
        swapped = torch.cat([target_in[rows, :prefix], target_in[:6, prefix:prefix + 1]], 1)
        expected = torch.log_softmax(model.decode(one[0], one[1], swapped, one[2])[:, -1], -1)
        torch.testing.assert_close(incremental.step(target_in[:6, prefix]), expected, rtol=0, atol=1e-10)
    return full


def pointer_model(seed: int, dtype: torch.dtype = torch.float64, max_length: int = 12) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    return Seq2SeqTransformer(VOCAB, dim=16, heads=2, layers=2, ff_dim=32, dropout=0.0, max_length=max_length,
                              pointer=True).to(dtype).eval()


def lstm_model(seed: int, dtype: torch.dtype = torch.float64, max_length: int = 14) -> Seq2SeqLSTM:
    torch.manual_seed(seed)
    return Seq2SeqLSTM(VOCAB, dim=8, hidden=12, dropout=0.0, max_length=max_length).to(dtype).eval()


def edit_pairs(n: int, seed: int, max_src: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources (tokens 4-7 then EOS, sometimes a tag-like token 4 after it) and random action targets."""
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(n, max_src + 2, dtype=torch.long)
    tgt = torch.zeros(n, 2 * max_src + 2, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, max_src + 1, (1,), generator=g))
        src[i, :length] = torch.randint(4, 8, (length,), generator=g)
        src[i, length] = EOS
        src[i, length + 1] = 4 if i % 2 else PAD
        actions = torch.randint(4, VOCAB, (int(torch.randint(1, 2 * max_src + 1, (1,), generator=g)),),
                                generator=g)
        tgt[i, :actions.numel()] = actions
        tgt[i, actions.numel()] = EOS
    return src, tgt


def partly_trained(seed: int, steps: int = 60, model: Model | None = None) -> Model:
    """A pointer model (``model``, float32, else ``pointer_model(seed)``) trained briefly to copy or delete
    its source: outputs of varied length and some uncertainty."""
    model = (pointer_model(seed, torch.float32) if model is None else model).train()
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


def check_maml_gradient(model: Model, names: list[str]) -> None:
    """Assert that the second-order MAML gradient (one inner step of lr 0.5 on 3 support pairs, the loss on
    3 query pairs) of the ``names`` parameters of ``model`` (float64) matches central finite differences."""
    s_src, s_tgt = edit_pairs(3, 40, max_src=3)
    q_src, q_tgt = edit_pairs(3, 41, max_src=3)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}

    def query_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        support = sequence_loss(functional_call(model, p, (s_src, shift_right(s_tgt))), s_tgt)
        grads = torch.autograd.grad(support, list(p.values()), create_graph=True)
        fast = {n: w - 0.5 * g for (n, w), g in zip(p.items(), grads)}
        return sequence_loss(functional_call(model, fast, (q_src, shift_right(q_tgt))), q_tgt)

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
            assert float(grad.reshape(-1)[index]) == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def suffix_task(name: str, alphabet: str, n: int, seed: int) -> Seq2SeqTask:
    """Words of ``alphabet`` -> the word plus the suffix ``xy`` (tag ``<N>`` first, as SIGMORPHON writes)."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        word = tuple(alphabet[int(i)] for i in torch.randint(len(alphabet), (int(torch.randint(3, 6, (1,),
                                                                                           generator=g)),),
                                                             generator=g))
        pairs.append((("<N>",) + word, word + ("x", "y")))
    half = n // 2
    return Seq2SeqTask([s for s, _ in pairs[:half]], [t for _, t in pairs[:half]],
                       [s for s, _ in pairs[half:]], [t for _, t in pairs[half:]], name=name)


def trained_on_suffixes(options: dict, steps: int = 150) -> tuple[Any, Seq2SeqTask]:
    """A ``transfer`` learner with ``options`` (on ``TINY``) trained ``steps`` Adam steps on words of a-h
    plus the suffix ``xy``, and a task of words of i-p (letters it never saw, all in the support set)."""
    from attnmeta.learners.seq2seq.registry import build_seq2seq

    vocab = Vocabulary(sorted(set("abcdefghxy")) + ["<N>"], spare=8)
    torch.manual_seed(0)
    learner = build_seq2seq("transfer", vocab, {**TINY, **options, "finetune_steps": 0})
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for step in range(steps):
        batch = Seq2SeqBatch([suffix_task("train", "abcdefgh", 32, 10 * step + k) for k in range(2)])
        optimizer.zero_grad()
        learner.meta_loss(batch).loss.backward()
        optimizer.step()
    new = suffix_task("new", "ijklmnop", 64, 12345)
    return learner, Seq2SeqTask(new.support_source + new.query_source, new.support_target + new.query_target,
                                new.query_source, new.query_target, name="new")
