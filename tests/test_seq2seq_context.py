"""The task-vector learner (``context``): the model's ``task_context`` input, what the task encoder reads (the
real support pairs, in any order) and what the loss sees (only pairs it did not read), and that the vector
tells tasks apart where pooled training cannot."""

from __future__ import annotations

import re

import pytest
import torch

from attnmeta.learners.seq2seq.registry import build_seq2seq
from attnmeta.nn.seq2seq import Seq2SeqTransformer, shift_right
from attnmeta.nn.seq2seq_decoding import _IncrementalDecoder
from attnmeta.tasks.seq2seq import Seq2SeqBatch, Seq2SeqTask, Vocabulary
from seq2seq_fixtures import TINY
from test_seq2seq_learners import SYMBOLS, _character_accuracy, _task

OPTIONS = {**TINY, "task_dim": 16, "task_heads": 2, "finetune_steps": 0}


def _learner(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    learner = build_seq2seq("context", Vocabulary(SYMBOLS), {**OPTIONS, **options}).double()
    torch.nn.init.normal_(learner.context_head.weight)  # a trained-looking head (it starts at zero)
    return learner


def test_task_context_zero_is_the_plain_model_and_decoding_step_by_step_matches():
    torch.manual_seed(0)
    plain = Seq2SeqTransformer(12, dim=16, heads=2, layers=1, ff_dim=32, dropout=0.0).double().eval()
    torch.manual_seed(0)
    with_context = Seq2SeqTransformer(12, dim=16, heads=2, layers=1, ff_dim=32, dropout=0.0,
                                      task_context=True).double().eval()
    assert "task_context" not in dict(plain.named_parameters())
    source = torch.randint(4, 12, (3, 5))
    target_in = shift_right(torch.randint(4, 12, (3, 4)))
    torch.testing.assert_close(with_context(source, target_in), plain(source, target_in), rtol=0, atol=0)
    with torch.no_grad():
        with_context.task_context.normal_()
        full = with_context(source, target_in)
        assert not torch.allclose(full, plain(source, target_in))
        memory, mask = with_context.encode(source)
        incremental = _IncrementalDecoder(with_context, memory, mask, source)
        for t in range(target_in.shape[1]):  # greedy and beam search decode through this path
            torch.testing.assert_close(incremental.step(target_in[:, t]), torch.log_softmax(full[:, t], -1),
                                       rtol=0, atol=1e-10)


def test_the_task_vector_reads_the_real_support_pairs_in_any_order_and_no_hallucinated_one():
    learner = _learner()
    learner.eval()
    encoded = learner.encode_task(_task(3, 6, 2))
    encoded.real_support = 4  # rows 4 and 5 count as hallucinated
    z = learner.encoded_vector(encoded)
    assert z.shape == (TINY["dim"],) and z.abs().sum() > 0
    order = torch.tensor([2, 0, 3, 1, 5, 4])
    encoded.support_source = encoded.support_source[order]
    encoded.support_target = encoded.support_target[order]
    torch.testing.assert_close(learner.encoded_vector(encoded), z, rtol=0, atol=1e-12)
    encoded.support_target[4:] = encoded.support_target[:2]  # other hallucinated pairs: the same vector
    torch.testing.assert_close(learner.encoded_vector(encoded), z, rtol=0, atol=1e-12)
    encoded.support_target[0] = encoded.support_target[1]  # another real pair: another vector
    assert not torch.allclose(learner.encoded_vector(encoded), z)
    # adaptation starts from that vector (finetune_steps=0 keeps it)
    torch.testing.assert_close(learner.adapt(encoded)["task_context"], learner.encoded_vector(encoded))


def test_the_loss_is_on_pairs_the_encoder_did_not_read():
    """With a zero head the vector is zero: the support pairs then cannot change the loss, since it is the
    query pairs' (and the hallucinated support pairs', next test); and gradients reach the task encoder."""
    learner = _learner()
    torch.nn.init.zeros_(learner.context_head.weight)
    torch.nn.init.zeros_(learner.context_head.bias)
    task = _task(5, 4, 3)
    other = Seq2SeqTask([tuple("hhh")] * 4, [tuple("qqq")] * 4, task.query_source, task.query_target)
    losses = [learner.meta_loss(Seq2SeqBatch([t])).loss for t in (task, other)]
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    torch.nn.init.normal_(learner.context_head.weight)
    loss = learner.meta_loss(Seq2SeqBatch([task])).loss
    assert learner.meta_loss(Seq2SeqBatch([other])).loss != loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.task_encoder.input.parameters())


def test_hallucinated_support_pairs_join_the_loss(monkeypatch: pytest.MonkeyPatch):
    learner = _learner(meta_hallucinate=3)
    task = _task(5, 4, 3)
    encoded = learner.encode_task(task, torch.Generator().manual_seed(0))
    assert encoded.real_support == 4 and encoded.support_source.shape[0] == 7
    seen = []
    pair_loss = learner.pair_loss
    monkeypatch.setattr(learner, "encode_task", lambda task, generator=None: encoded)
    monkeypatch.setattr(learner, "pair_loss", lambda p, s, t: seen.append(s.shape[0]) or pair_loss(p, s, t))
    out = learner.meta_loss(Seq2SeqBatch([task]))
    assert seen == [3, 3]  # the 3 query pairs, then the 3 hallucinated ones (not the 4 real pairs it read)
    expected = (pair_loss({**learner.params(), "task_context": learner.encoded_vector(encoded)},
                          encoded.query_source, encoded.query_target)
                + pair_loss({**learner.params(), "task_context": learner.encoded_vector(encoded)},
                            encoded.support_source[4:], encoded.support_target[4:])) / 2
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-12)
    assert out.metrics["task_vector_norm"] > 0


def test_bad_task_encoder_options_are_one_line_errors():
    with pytest.raises(ValueError, match=re.escape("task_dim must be a positive multiple of task_heads and "
                                                   "task_layers >= 0, got task_dim=10, task_heads=4, "
                                                   "task_layers=1")):
        build_seq2seq("context", Vocabulary(SYMBOLS), {**TINY, "task_dim": 10})


def test_the_vector_tells_trained_tasks_apart_where_pooled_training_cannot(one_thread):
    """Twelve affix tasks, 450 steps of 4 tasks, then new words of the same tasks with nothing fine-tuned
    (``finetune_steps=0``): the pooled model can only guess which task's affixes to write, the context
    learner reads them off 5 support pairs. Per-character accuracy (teacher forced) measured on other draws
    of the same problem: 0.91 against 0.82 (exact match 0.37 against 0.05); with 600 steps 0.99 (0.89)."""
    scores = {}
    for algo in ("context", "transfer"):
        torch.manual_seed(0)
        options = {**TINY, "finetune_steps": 0, **({"task_dim": 32, "task_heads": 2} if algo == "context"
                                                    else {})}
        learner = build_seq2seq(algo, Vocabulary(SYMBOLS, spare=0), options)
        optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        for step in range(450):
            ids = torch.randint(0, 12, (4,), generator=generator).tolist()
            optimizer.zero_grad()
            learner.meta_loss(Seq2SeqBatch([_task(k, 5, 5, seed=step) for k in ids])).loss.backward()
            optimizer.step()
        scores[algo] = _character_accuracy(learner, [_task(k, 5, 10, seed=99) for k in range(12)])
    assert scores["context"] >= scores["transfer"] + 0.05, scores
