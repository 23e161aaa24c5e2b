"""CoNLL-SIGMORPHON 2018 inflection tasks (``attnmeta.data.sigmorphon``).

File-format and split checks run on files written here; the benchmark tests need the shared data
(``../shared/data/text/sigmorphon2018``) and are skipped without it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnmeta.data.sigmorphon import (
    InflectionEpisodes,
    LanguageTasks,
    evalm_items,
    inflection_source,
    inflection_target,
    make_sigmorphon_benchmark,
    read_inflections,
    read_language_split,
)
from attnmeta.errors import DataError

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "sigmorphon2018"


def _exact(message: str) -> str:
    return f"^{re.escape(message)}$"


# -- files written here ----------------------------------------------------------------------------------
def test_read_inflections_and_symbols(tmp_path: Path):
    path = tmp_path / "toy-train-low"
    path.write_text("walk\twalked\tV;PST\r\n\nice cream\tice creams\tN;PL\n", encoding="utf-8")
    assert read_inflections(path) == [("walk", "walked", "V;PST"), ("ice cream", "ice creams", "N;PL")]
    assert inflection_source("a b", "V;PTCP") == ("<V>", "<PTCP>", "a", " ", "b")
    assert inflection_target("ab") == ("a", "b")


@pytest.mark.parametrize("text, message", [
    ("walk\twalked\n", "{p}:1: 2 tab-separated fields, expected 3 (lemma<TAB>form<TAB>tags)"),
    ("a\tb\tV\n\nwalk\twalked\tV\tX\n",
     "{p}:3: 4 tab-separated fields, expected 3 (lemma<TAB>form<TAB>tags)"),
    ("\twalked\tV\n", "{p}:1: empty lemma; every line needs a lemma, a form and tags"),
    ("walk\t\tV\n", "{p}:1: empty form; every line needs a lemma, a form and tags"),
])
def test_bad_inflection_lines_name_file_and_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad-dev"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=_exact(message.format(p=path))):
        read_inflections(path)


def test_evalm_items_keep_the_last_form_in_first_appearance_order():
    items = [("go", "went", "V;PST"), ("be", "was", "V;PST"), ("go", "gone", "V;PST"), ("go", "goes", "V;3")]
    assert evalm_items(items) == [("go", "gone", "V;PST"), ("be", "was", "V;PST"), ("go", "goes", "V;3")]


def test_packaged_split_is_valid_and_bad_splits_are_refused(tmp_path: Path):
    split = read_language_split()
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (67, 5, 20)
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["a"], "val": ["b"], "test": ["a"]}), encoding="utf-8")
    with pytest.raises(DataError, match=_exact(f"{bad}: language 'a' is listed in 'train' and 'test'; each "
                                               "language belongs to one part")):
        read_language_split(bad)
    bad.write_text(json.dumps({"train": ["a"], "val": ["b"]}), encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON object with keys train, val, test"):
        read_language_split(bad)


def _fake_root(tmp_path: Path) -> Path:
    folder = tmp_path / "task1" / "all"
    folder.mkdir(parents=True)
    (folder / "toy-train-low").write_text("a\tab\tN;PL\nb\tbb\tN;PL\nc\tcb\tN;PL\n", encoding="utf-8")
    (folder / "toy-test").write_text("x\txa\tN;PL\ny\tyb\tN;PL\nx\txb\tN;PL\n", encoding="utf-8")
    return tmp_path


def test_language_tasks_score_queries_as_evalm_does(tmp_path: Path):
    root = _fake_root(tmp_path)
    (task,) = LanguageTasks(root, ["toy"], split="test", shots=2).fixed_tasks(5, seed=9)
    assert task.name == "toy" and task.info == {"split": "test"} and task.shots == 2
    assert task.query_target == [tuple("xb"), tuple("yb")]  # duplicate key (x, N;PL): last form, first place
    with pytest.raises(ValueError, match=_exact("shots=4 but 'toy' has 3 train-low pairs; use shots <= 3 or "
                                                "None")):
        LanguageTasks(root, ["toy"], split="test", shots=4)
    missing = f"inflection file {root}/task1/all/toy-dev not found"
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        LanguageTasks(root, ["toy"], split="val")


def test_missing_root_says_where_the_data_is_expected(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=_exact(
            f"SIGMORPHON 2018 folder {tmp_path / 'task1' / 'all'} not found; the data is expected in "
            "<root>/task1/all/<language>-<part> (root: text/sigmorphon2018 of ../shared/data)")):
        make_sigmorphon_benchmark(tmp_path, shots=1, queries=1)


# -- the shared data ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    if not (ROOT / "task1" / "all").is_dir():
        pytest.skip(f"needs the SIGMORPHON 2018 data in {ROOT} (see ../shared/data/README.md)")
    return make_sigmorphon_benchmark(ROOT, shots=5, queries=7, seed=1, val_queries=50)


def test_benchmark_parts_and_vocabulary(bench):
    split = read_language_split()
    assert bench.name == "sigmorphon2018" and bench.tasks == split
    assert bench.train.languages == split["train"]
    val, test = bench.val.fixed_tasks(100), bench.test.fixed_tasks(100)
    assert [t.name for t in val] == split["val"] and [t.name for t in test] == split["test"]
    assert all(t.shots == 100 and t.queries <= 50 and t.info == {"split": "val"} for t in val)
    assert [t.name for t in bench.test.fixed_tasks(3, seed=123)] == split["test"][:3]
    gold = read_inflections(ROOT / "task1" / "all" / "finnish-test")
    (finnish,) = [t for t in test if t.name == "finnish"]
    assert finnish.query_source == [inflection_source(lemma, tags) for lemma, _, tags in gold]
    vocab = bench.vocabulary
    assert vocab.symbols == sorted(vocab.symbols) and vocab.spare == 96 and "<V>" in vocab.index
    assert "ა" not in vocab.index  # Georgian script: only in a test language
    again = make_sigmorphon_benchmark(ROOT, shots=5, queries=7, splits=("val",))
    assert again.train is None and again.test is None and again.vocabulary.symbols == vocab.symbols


def test_no_dev_or_test_file_of_the_split_repeats_a_lemma_and_tags(bench):
    for language in bench.tasks["val"] + bench.tasks["test"]:
        for part in ("dev", "test"):
            items = read_inflections(ROOT / "task1" / "all" / f"{language}-{part}")
            assert evalm_items(items) == items, f"{language}-{part}"


def test_training_episodes_resume_exactly(bench):
    train = bench.train
    batch = train.sample_batch(8)
    assert len({t.name for t in batch}) == 8  # distinct languages
    state = train.state_dict()
    expected = [train.sample_batch(4).tasks for _ in range(2)]
    resumed = InflectionEpisodes(dict(zip(train.names, train.items)), shots=5, queries=7, seed=42)
    resumed.load_state_dict(state)
    assert [resumed.sample_batch(4).tasks for _ in range(2)] == expected
    assert train.fixed_tasks(3, seed=5) == resumed.fixed_tasks(3, seed=5)


@settings(max_examples=25, deadline=None)
@given(shots=st.integers(1, 20), queries=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_episodes_are_disjoint_sized_and_from_train_languages(bench, shots: int, queries: int, seed: int):
    source = InflectionEpisodes(dict(zip(bench.train.names, bench.train.items)), shots=shots, queries=queries)
    train_languages = set(bench.tasks["train"])
    for task in source.sample_batch(3, torch.Generator().manual_seed(seed)):
        support = set(zip(task.support_source, task.support_target))
        query = set(zip(task.query_source, task.query_target))
        assert task.shots == len(support) == shots and task.queries == len(query) == queries
        assert not support & query and task.name in train_languages


def test_unknown_language_says_where_the_file_is_expected(bench):
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"inflection file {ROOT}/task1/all/klingon-train-low not found; the data is expected in")):
        make_sigmorphon_benchmark(ROOT, shots=1, queries=1, splits=("test",), languages={"test": ["klingon"]})
