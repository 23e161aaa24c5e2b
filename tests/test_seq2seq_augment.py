"""Data hallucination for few-shot inflection (``attnmeta.tasks.seq2seq_augment``): the stem is the longest
shared run of characters (against brute force), hallucinated pairs keep everything around it, the draw is
repeatable, and a learner adds them only when it adapts to a new task."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnmeta.learners.seq2seq.registry import build_seq2seq
from attnmeta.tasks.seq2seq import Seq2SeqTask, Vocabulary
from attnmeta.tasks.seq2seq_augment import common_stem, hallucinate_pairs, hallucinate_task, task_alphabet
from seq2seq_fixtures import TINY

WORDS = st.lists(st.sampled_from("abc"), min_size=0, max_size=8).map(tuple)


def _brute_force_length(source: tuple, target: tuple) -> int:
    return max([n for n in range(1, len(source) + 1) for i in range(len(source) - n + 1)
                for j in range(len(target) - n + 1) if source[i:i + n] == target[j:j + n]], default=0)


@settings(max_examples=200, deadline=None)
@given(WORDS, WORDS)
def test_common_stem_is_the_longest_shared_run(source, target):
    i, j, n = common_stem(source, target)
    assert n == _brute_force_length(source, target)
    assert source[i:i + n] == target[j:j + n]


def test_common_stem_skips_tags_and_finds_the_stem_inside_affixes():
    source = ("<V>", "<PST>", "w", "a", "l", "k")
    assert common_stem(source, tuple("gewalked")) == (2, 2, 4)
    assert common_stem(("<V>",), ("<V>",)) == (0, 0, 0)  # a tag is not a character of the stem


def test_hallucinated_pairs_replace_the_stem_in_both_and_keep_the_affixes():
    sources = [("<V>", *"walk"), ("<V>", *"talk"), ("<N>", *"ox")]
    targets = [tuple("gewalked"), tuple("getalked"), tuple("oxen")]
    new_sources, new_targets = hallucinate_pairs(sources, targets, 50, torch.Generator().manual_seed(0))
    assert len(new_sources) == len(new_targets) == 50
    alphabet = set(task_alphabet(sources, targets))
    for source, target in zip(new_sources, new_targets):
        assert source[0] == "<V>" and len(source) == 5  # "ox" is shorter than the minimum stem of 3
        stem = source[1:]
        assert target == ("g", "e", *stem, "e", "d") and set(stem) <= alphabet
    assert len({s for s in new_sources}) > 10


def test_hallucination_is_repeatable_and_leaves_queries_alone():
    task = Seq2SeqTask([tuple("walk"), tuple("jump")], [tuple("walked"), tuple("jumped")], [tuple("go")],
                       [tuple("went")], name="en")
    once, again = hallucinate_task(task, 20), hallucinate_task(task, 20)
    assert once.support_source == again.support_source and once.support_target == again.support_target
    assert once.shots == 22 and once.support_source[:2] == task.support_source
    assert once.query_source == task.query_source and once.query_target == task.query_target
    assert hallucinate_task(task, 20, seed=1).support_source != once.support_source
    none = Seq2SeqTask([tuple("ab")], [tuple("xy")], [], [])
    assert hallucinate_task(none, 5).shots == 1  # no shared stem: nothing to hallucinate from
    with pytest.raises(ValueError, match=re.escape("count must be >= 0 and min_stem >= 1, got -1 and 3")):
        hallucinate_pairs([], [], -1, torch.Generator())


def test_learner_hallucinates_only_when_adapting_to_a_new_task():
    vocab = Vocabulary(sorted(set("walkedjump")), spare=4)
    learner = build_seq2seq("transfer", vocab, {**TINY, "hallucinate": 30})
    task = Seq2SeqTask([tuple("walk"), tuple("jump")], [tuple("walked"), tuple("jumped")], [tuple("walk")],
                       [tuple("walked")])
    assert learner.train().encode_task(task).support_source.shape[0] == 2
    assert learner.eval().encode_task(task).support_source.shape[0] == 32
    meta = build_seq2seq("maml", vocab, {**TINY, "meta_hallucinate": 5}).train()
    first, second = (meta.encode_task(task, torch.Generator().manual_seed(0)) for _ in range(2))
    assert first.support_source.shape[0] == 7 and torch.equal(first.support_source, second.support_source)
    assert not torch.equal(first.support_source, meta.encode_task(task).support_source)  # drawn anew
    assert meta.eval().encode_task(task).support_source.shape[0] == 2
    with pytest.raises(ValueError, match=re.escape("hallucinate and meta_hallucinate must be >= 0 "
                                                   "(hallucinated pairs per task), got -1 and 0")):
        build_seq2seq("transfer", vocab, {**TINY, "hallucinate": -1})


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_fine_tuning_batches_hold_the_hallucinated_share(share):
    vocab = Vocabulary(sorted(set("walkedjump")), spare=4)
    learner = build_seq2seq("transfer", vocab, {**TINY, "finetune_batch": 8, "hallucinated_share": share})
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        rows = learner.batch_rows(30, 10, generator)
        assert len(rows) == 8 and len(set(rows.tolist())) == 8 and int(rows.max()) < 30
        assert int((rows >= 10).sum()) == round(share * 8)  # rows 10.. are the hallucinated pairs
    assert len(learner.batch_rows(12, 10, generator)) == 8  # only 2 hallucinated: the rest real
    assert int((learner.batch_rows(30, 2, generator) < 2).sum()) <= 2


def test_fine_tuning_batches_are_uniform_without_a_share():
    vocab = Vocabulary(sorted(set("walkedjump")), spare=4)
    learner = build_seq2seq("transfer", vocab, {**TINY, "finetune_batch": 8})
    rows = learner.batch_rows(30, 10, torch.Generator().manual_seed(0))
    assert torch.equal(rows, torch.randperm(30, generator=torch.Generator().manual_seed(0))[:8])
    task = Seq2SeqTask([tuple("walk"), tuple("jump")], [tuple("walked"), tuple("jumped")], [tuple("walk")],
                       [tuple("walked")])
    hallucinating = build_seq2seq("transfer", vocab, {**TINY, "hallucinate": 30}).eval()
    assert hallucinating.encode_task(task).real_support == 2
    with pytest.raises(ValueError, match=re.escape("hallucinated_share must be in [0, 1] (or null: uniform "
                                                   "over all support pairs), got 1.5")):
        build_seq2seq("transfer", vocab, {**TINY, "hallucinated_share": 1.5})


def test_adaptation_draws_its_batches_knowing_which_pairs_are_real(monkeypatch):
    vocab = Vocabulary(sorted(set("walkedjump")), spare=4)
    learner = build_seq2seq("transfer", vocab, {**TINY, "hallucinate": 30, "hallucinated_share": 0.5,
                                                "finetune_steps": 3}).eval()
    task = Seq2SeqTask([tuple("walk"), tuple("jump")], [tuple("walked"), tuple("jumped")], [tuple("walk")],
                       [tuple("walked")])
    calls = []
    draw = learner.batch_rows
    monkeypatch.setattr(learner, "batch_rows", lambda n, real, g: calls.append((n, real)) or draw(n, real, g))
    learner.adapt(learner.encode_task(task))
    assert calls == [(32, 2)] * 3  # 2 real pairs first, then 30 hallucinated ones

