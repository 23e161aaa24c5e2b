"""Parallel data (``attnmeta.data.parallel``): reading TSV / JSONL, bad inputs, task sources, benchmarks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from attnmeta.data.parallel import (
    FixedTasks,
    ParallelTasks,
    group_by_task,
    make_parallel_benchmark,
    read_parallel,
)
from attnmeta.errors import DataError

TRANSLIT = {  # task -> (source, target) pairs
    "ru-en": [("москва", "moskva"), ("привет", "privet"), ("да", "da"), ("нет", "net"), ("кот", "kot"),
              ("мир", "mir"), ("дом", "dom"), ("сон", "son")],
    "el-en": [("αθηνα", "athina"), ("καλα", "kala"), ("ναι", "nai"), ("οχι", "ochi"), ("ενα", "ena"),
              ("δυο", "dyo"), ("τρια", "tria")],
    "uk-en": [("київ", "kyiv"), ("так", "tak"), ("ні", "ni"), ("хліб", "khlib"), ("сік", "sik")],
    "hy-en": [("բարև", "barev"), ("այո", "ayo"), ("ոչ", "voch"), ("մեկ", "mek")],
}


def _write_translit(path: Path) -> Path:
    path.write_text("".join(f"{s}\t{t}\t{task}\n" for task, pairs in TRANSLIT.items() for s, t in pairs),
                    encoding="utf-8")
    return path


def _write_translation(path: Path) -> Path:
    rows = [{"source": "the cat", "target": "die Katze", "task": "en-de"},
            {"source": "a dog", "target": "ein Hund", "task": "en-de"},
            {"source": "the cat", "target": "le chat", "task": "en-fr"},
            {"source": "good  day", "target": "bonjour"}]  # no task: "default"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    return path


def _exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def _raises(kind: type[Exception], message: str) -> pytest.RaisesExc:
    return pytest.raises(kind, match=_exact(message))


def test_reads_transliteration_tsv_as_characters(tmp_path: Path):
    records = read_parallel(_write_translit(tmp_path / "translit.tsv"))
    assert records[0] == (tuple("москва"), tuple("moskva"), "ru-en")
    assert len(records) == sum(len(p) for p in TRANSLIT.values())
    grouped = group_by_task(records)
    assert list(grouped) == list(TRANSLIT)
    assert grouped["hy-en"][-1] == (tuple("մեկ"), tuple("mek"))


def test_reads_translation_jsonl_as_words_with_default_task(tmp_path: Path):
    records = read_parallel(_write_translation(tmp_path / "mt.jsonl"), tokenize="words")
    assert records[0] == (("the", "cat"), ("die", "Katze"), "en-de")
    assert records[-1] == (("good", "day"), ("bonjour",), "default")


def test_reads_summarisation_like_tsv_without_task(tmp_path: Path):
    path = tmp_path / "summaries.tsv"
    path.write_text("the meeting was moved to friday because the room was booked\tmeeting moved to friday\r\n"
                    "\n"
                    "rain is expected all week in the north\train all week\r\n", encoding="utf-8")
    records = read_parallel(path, tokenize="words")
    assert [r[2] for r in records] == ["default", "default"]
    assert records[1][1] == ("rain", "all", "week")
    with _raises(ValueError, "the data has 1 task(s) (default); a benchmark needs at least 3 "
                             "(one each for train, val and test): add a task column / key"):
        make_parallel_benchmark(path, shots=1, queries=1)


BAD_TSV = {
    "one field": ("abc\n", "{p}:1: 1 tab-separated fields; write source<TAB>target or "
                  "source<TAB>target<TAB>task (no tabs inside a text)"),
    "four fields": ("a\tb\n\nc\td\te\tf\n", "{p}:3: 4 tab-separated fields; write source<TAB>target or "
                    "source<TAB>target<TAB>task (no tabs inside a text)"),
    "empty source": ("a\tb\n\tb\n", "{p}:2: empty source; every pair needs a non-empty source and target"),
    "empty target": ("a\t\tt\n", "{p}:1: empty target; every pair needs a non-empty source and target"),
    "empty task": ("a\tb\t\n", "{p}:1: empty task name; name the task, or leave the field out for task "
                   "'default'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TSV))
def test_bad_tsv_lines_are_named(case: str, tmp_path: Path):
    text, message = BAD_TSV[case]
    path = tmp_path / "bad.tsv"
    path.write_text(text, encoding="utf-8")
    with _raises(DataError, message.format(p=path)):
        read_parallel(path)


BAD_JSONL = {
    "broken json": ('{"source": "a", "target": "b"}\n{"source": "a",\n',
                    "{p}:2: invalid JSON (Expecting property name enclosed in double quotes at column 16); "
                    "fix the file or export it again as JSON"),
    "not an object": ('["a", "b"]\n', '{p}:1: expected a JSON object with "source" and "target", got list'),
    "missing target": ('{"source": "a"}\n', "{p}:1: missing key(s) ['target']; every object needs \"source\" "
                       "and \"target\" strings (and optionally \"task\")"),
    "number source": ('{"source": 3, "target": "b"}\n', '{p}:1: "source" must be a string, got int'),
    "null task": ('{"source": "a", "target": "b", "task": null}\n', '{p}:1: "task" must be a string, got '
                  'NoneType'),
    "blank words": ('{"source": "  ", "target": "b"}\n', "{p}:1: empty source; every pair needs a non-empty "
                    "source and target"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_bad_jsonl_lines_are_named(case: str, tmp_path: Path):
    text, message = BAD_JSONL[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with _raises(DataError, message.format(p=path)):
        read_parallel(path, tokenize="words")


def test_bad_files_and_options(tmp_path: Path):
    with _raises(DataError, f"{tmp_path / 'x.csv'}: unknown parallel-data format '.csv'; use "
                            "a .tsv file (source<TAB>target[<TAB>task]) or a .jsonl file "
                            '({"source", "target", "task"})'):
        read_parallel(tmp_path / "x.csv")
    with _raises(FileNotFoundError, f"parallel data file {tmp_path / 'no.tsv'} not found; "
                                    "check the path"):
        read_parallel(tmp_path / "no.tsv")
    (tmp_path / "empty.tsv").write_text("\n\n", encoding="utf-8")
    with _raises(DataError, f"{tmp_path / 'empty.tsv'} holds no pairs; write one "
                            "source/target pair a line"):
        read_parallel(tmp_path / "empty.tsv")
    (tmp_path / "latin1.tsv").write_bytes("a\tb\nd\xe9j\xe0\tx\n".encode("latin-1"))
    with _raises(DataError, f"{tmp_path / 'latin1.tsv'}:2: invalid UTF-8 (byte 0xe9); save "
                            "the TSV file with UTF-8 encoding"):
        read_parallel(tmp_path / "latin1.tsv")
    with _raises(ValueError, "tokenize must be one of chars, words, got 'bytes'"):
        read_parallel(tmp_path / "empty.tsv", tokenize="bytes")


def test_parallel_tasks_episodes_and_exact_resume():
    pairs = {name: [(tuple(s), tuple(t)) for s, t in p] for name, p in TRANSLIT.items()}
    source = ParallelTasks(pairs, shots=2, queries=2, seed=3)
    for task in source.sample_batch(4):
        support, query = set(zip(task.support_source, task.support_target)), set(zip(task.query_source,
                                                                                    task.query_target))
        assert len(support) == 2 and len(query) == 2 and not support & query
        assert support | query <= set(pairs[task.name]) and task.info == {"split": "train"}
    assert sorted(t.name for t in source.sample_batch(4)) == sorted(TRANSLIT)  # distinct tasks
    assert len({t.name for t in source.sample_batch(6)}) == 4  # repeats only past the number of tasks
    state = source.state_dict()
    after = [source.sample() for _ in range(3)]
    resumed = ParallelTasks(pairs, shots=2, queries=2, seed=99)
    resumed.load_state_dict(state)
    assert [resumed.sample() for _ in range(3)] == after
    assert source.fixed_tasks(3, seed=1) == source.fixed_tasks(3, seed=1) != source.fixed_tasks(3, seed=2)
    other = ParallelTasks(pairs, shots=1, queries=2)
    with pytest.raises(ValueError, match="state was saved by a task source with other shots"):
        other.load_state_dict(state)


def test_parallel_tasks_refuse_small_tasks_and_bad_sizes():
    pairs = {"a": [(("x",), ("y",))] * 5, "b": [(("x",), ("y",))] * 3}
    with _raises(ValueError, "task 'b' has 3 pairs, fewer than shots + queries = 4 (1 task(s) "
                             "too small); use fewer shots/queries or drop the task"):
        ParallelTasks(pairs, shots=2, queries=2)
    with _raises(ValueError, "shots must be a positive integer, got 0"):
        ParallelTasks(pairs, shots=0, queries=2)
    with _raises(ValueError, "meta_batch must be a positive integer, got 0"):
        ParallelTasks(pairs, shots=1, queries=1).sample_batch(0)


def test_benchmark_with_explicit_tasks(tmp_path: Path):
    path = _write_translit(tmp_path / "translit.tsv")
    bench = make_parallel_benchmark(path, shots=2, queries=3, val_tasks=["uk-en"], test_tasks=["hy-en"])
    assert bench.tasks == {"train": ["ru-en", "el-en"], "val": ["uk-en"], "test": ["hy-en"]}
    assert bench.name == "translit" and isinstance(bench.test, FixedTasks)
    (test,) = bench.test.fixed_tasks(10)
    assert test.support_source == [tuple("բարև"), tuple("այո")] and test.queries == 2
    assert test.info == {"split": "test"} and bench.test.fixed_tasks(10, seed=5) == [test]
    train_symbols = {c for n in ("ru-en", "el-en") for s, t in TRANSLIT[n] for c in s + t}
    assert bench.vocabulary.symbols == sorted(train_symbols) and bench.vocabulary.spare == 96
    assert bench.train.sample().name in ("ru-en", "el-en")


def test_seeded_split_is_deterministic_with_one_task_at_least_each(tmp_path: Path):
    path = _write_translit(tmp_path / "translit.tsv")
    first = make_parallel_benchmark(path, shots=1, queries=2, seed=4).tasks
    assert first == make_parallel_benchmark(path, shots=1, queries=2, seed=4).tasks
    assert [len(first[p]) for p in ("train", "val", "test")] == [2, 1, 1]
    assert sorted(sum(first.values(), [])) == sorted(TRANSLIT)


def test_benchmark_refuses_bad_task_lists_and_small_tasks(tmp_path: Path):
    path = _write_translit(tmp_path / "translit.tsv")
    cases = [
        (dict(val_tasks=["uk-en"]), "give both val_tasks and test_tasks, or neither (for a seeded split)"),
        (dict(val_tasks=["xx"], test_tasks=["hy-en"]),
         "val_tasks must be a non-empty list of task names of the data; unknown: ['xx']; the data has ru-en, "
         "el-en, uk-en, hy-en"),
        (dict(val_tasks=["uk-en"], test_tasks=["uk-en"]),
         "tasks ['uk-en'] are in both val_tasks and test_tasks"),
        (dict(val_tasks=["uk-en", "ru-en"], test_tasks=["hy-en", "el-en"]),
         "no task is left for training; leave at least one task out of val_tasks/test_tasks"),
    ]
    for kwargs, message in cases:
        with _raises(ValueError, message):
            make_parallel_benchmark(path, shots=2, queries=2, **kwargs)
    with _raises(ValueError, "test task 'hy-en' has 4 pairs, fewer than shots + 1 = 5 (shots "
                             "support pairs and at least one query); use fewer shots or "
                             "another task"):
        make_parallel_benchmark(path, shots=4, queries=1, val_tasks=["ru-en"], test_tasks=["hy-en"])
    with _raises(ValueError, "task 'el-en' has 7 pairs, fewer than shots + queries = 8 (1 "
                             "task(s) too small); use fewer shots/queries or drop the task"):
        make_parallel_benchmark(path, shots=4, queries=4, val_tasks=["uk-en"], test_tasks=["hy-en"])


def test_fixed_tasks_source_samples_its_tasks():
    pairs = {name: [(tuple(s), tuple(t)) for s, t in p] for name, p in TRANSLIT.items()}
    tasks = ParallelTasks(pairs, shots=1, queries=1).fixed_tasks(3)
    source = FixedTasks(tasks, seed=0)
    assert source.sample(torch.Generator().manual_seed(0)) in tasks
    assert len(source.sample_batch(5)) == 5
    state = source.state_dict()
    nxt = source.sample()
    source.load_state_dict(state)
    assert source.sample() == nxt
