"""Any parallel data as few-shot sequence-to-sequence tasks (transliteration, translation, summarisation).

A file holds ``(source, target, task)`` triples: ``.tsv`` lines ``source<TAB>target[<TAB>task]`` (no header)
or ``.jsonl`` objects ``{"source": ..., "target": ..., "task": ...}`` (``task`` optional). Pairs without a
task belong to the task ``"default"``. Texts become symbol sequences of characters (``tokenize="chars"``)
or of whitespace-separated words (``"words"``).

``make_parallel_benchmark`` splits the *task names* into train / val / test: meta-training samples episodes
from the train tasks (``ParallelTasks``); each val / test task is one fixed ``Seq2SeqTask`` (``FixedTasks``)
whose support is its first ``shots`` pairs (file order) and whose queries are all its other pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from attnmeta.data.safe_io import MissingDataError, read_text
from attnmeta.data.textfiles import json_lines
from attnmeta.errors import DataError
from attnmeta.tasks.seq2seq import Seq2SeqBatch, Seq2SeqTask, Sequence_, Vocabulary

__all__ = ["DEFAULT_TASK", "Pair", "Seq2SeqBenchmark", "read_parallel", "tokenize_text", "group_by_task",
           "ParallelTasks", "FixedTasks", "make_parallel_benchmark"]

#: Task name of the pairs whose line gives none.
DEFAULT_TASK = "default"
TOKENIZERS = ("chars", "words")

Pair = tuple[Sequence_, Sequence_]
Item = TypeVar("Item")


@dataclass
class Seq2SeqBenchmark:
    """Train / val / test sequence task sources (``None`` when not built) and the shared vocabulary."""

    train: Any
    val: Any
    test: Any
    vocabulary: Vocabulary
    name: str
    tasks: dict[str, list[str]]  # task (or language) names of each part


def tokenize_text(text: str, tokenize: str = "chars") -> Sequence_:
    """``text`` as symbols: its characters (``"chars"``, spaces kept) or its words (``"words"``)."""
    if tokenize == "chars":
        return tuple(text)
    if tokenize == "words":
        return tuple(text.split())
    raise ValueError(f"tokenize must be one of {', '.join(TOKENIZERS)}, got {tokenize!r}")


def _record(path: Path, number: int, source: str, target: str, task: str,
            tokenize: str) -> tuple[Sequence_, Sequence_, str]:
    src, tgt = tokenize_text(source, tokenize), tokenize_text(target, tokenize)
    for name, seq in (("source", src), ("target", tgt)):
        if not seq:
            raise DataError(f"{path}:{number}: empty {name}; every pair needs a non-empty source and target")
    if not task:
        raise DataError(f"{path}:{number}: empty task name; name the task, or leave the field out for task "
                        f"{DEFAULT_TASK!r}")
    return src, tgt, task


def _tsv_records(path: Path, tokenize: str) -> list[tuple[Sequence_, Sequence_, str]]:
    out = []
    for number, line in enumerate(read_text(path, "the TSV file").split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) not in (2, 3):
            raise DataError(f"{path}:{number}: {len(fields)} tab-separated fields; write source<TAB>target "
                            "or source<TAB>target<TAB>task (no tabs inside a text)")
        task = fields[2] if len(fields) == 3 else DEFAULT_TASK
        out.append(_record(path, number, fields[0], fields[1], task, tokenize))
    return out


def _jsonl_records(path: Path, tokenize: str) -> list[tuple[Sequence_, Sequence_, str]]:
    out = []
    for number, value in json_lines(path):
        if not isinstance(value, dict):
            raise DataError(f"{path}:{number}: expected a JSON object with \"source\" and \"target\", got "
                            f"{type(value).__name__}")
        missing = [k for k in ("source", "target") if k not in value]
        if missing:
            raise DataError(f"{path}:{number}: missing key(s) {missing}; every object needs \"source\" and "
                            "\"target\" strings (and optionally \"task\")")
        task = value.get("task", DEFAULT_TASK)
        for key, text in (("source", value["source"]), ("target", value["target"]), ("task", task)):
            if not isinstance(text, str):
                raise DataError(f"{path}:{number}: \"{key}\" must be a string, got {type(text).__name__}")
        out.append(_record(path, number, value["source"], value["target"], task, tokenize))
    return out


def read_parallel(path: str | Path, tokenize: str = "chars") -> list[tuple[Sequence_, Sequence_, str]]:
    """``(source, target, task)`` of every non-blank line of a ``.tsv`` or ``.jsonl`` file, in file order.

    Problems (wrong field count, broken JSON, missing keys, non-strings, empty texts) raise ``DataError``
    naming the file and line.
    """
    if tokenize not in TOKENIZERS:
        raise ValueError(f"tokenize must be one of {', '.join(TOKENIZERS)}, got {tokenize!r}")
    path = Path(path)
    if path.suffix not in (".tsv", ".jsonl"):
        raise DataError(f"{path}: unknown parallel-data format {path.suffix!r}; use a .tsv file "
                        "(source<TAB>target[<TAB>task]) or a .jsonl file "
                        "({\"source\", \"target\", \"task\"})")
    if not path.is_file():
        raise MissingDataError(f"parallel data file {path} not found; check the path")
    records = _tsv_records(path, tokenize) if path.suffix == ".tsv" else _jsonl_records(path, tokenize)
    if not records:
        raise DataError(f"{path} holds no pairs; write one source/target pair a line")
    return records


def group_by_task(records: Iterable[tuple[Sequence_, Sequence_, str]]) -> dict[str, list[Pair]]:
    """``task -> [(source, target), ...]``, tasks in order of first appearance, pairs in input order."""
    out: dict[str, list[Pair]] = {}
    for source, target, task in records:
        out.setdefault(task, []).append((source, target))
    return out


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class ParallelTasks(Generic[Item]):
    """Episodes over named tasks (the ``Seq2SeqTaskSource`` protocol): a task uniformly, then ``shots``
    support and ``queries`` query pairs, disjoint, uniformly without replacement.

    Args:
        pairs_by_task: ``task -> items`` (``(source, target)`` pairs; subclasses may store other items and
            turn them into pairs in ``_pair``).
        shots / queries: support / query pairs per episode.
        seed: seed of the source's own generator (``sample`` without a generator uses it; ``state_dict``
            saves it, so a resumed run samples the same episodes).
        split: ``info["split"]`` of the tasks.
    """

    def __init__(self, pairs_by_task: Mapping[str, Sequence[Item]], shots: int, queries: int, seed: int = 0,
                 *, split: str = "train") -> None:
        self.shots, self.queries = _positive("shots", shots), _positive("queries", queries)
        if not pairs_by_task:
            raise ValueError("a task source needs at least one task")
        small = [(name, len(p)) for name, p in pairs_by_task.items() if len(p) < shots + queries]
        if small:
            name, count = small[0]
            raise ValueError(f"task {name!r} has {count} pairs, fewer than shots + queries = "
                             f"{shots + queries} ({len(small)} task(s) too small); use fewer shots/queries "
                             "or drop the task")
        self.names = list(pairs_by_task)
        self.items = [list(pairs_by_task[n]) for n in self.names]
        self.split = split
        self.generator = torch.Generator().manual_seed(int(seed))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.names)} tasks, {self.shots}-shot, {self.queries} queries)"

    def _pair(self, item: Item) -> Pair:
        return item  # type: ignore[return-value]

    def _episode(self, task: int, g: torch.Generator) -> Seq2SeqTask:
        items = self.items[task]
        pick = torch.randperm(len(items), generator=g)[: self.shots + self.queries].tolist()
        pairs = [self._pair(items[i]) for i in pick]
        support, query = pairs[: self.shots], pairs[self.shots:]
        return Seq2SeqTask([s for s, _ in support], [t for _, t in support], [s for s, _ in query],
                           [t for _, t in query], name=self.names[task], info={"split": self.split})

    def sample(self, generator: torch.Generator | None = None) -> Seq2SeqTask:
        g = self.generator if generator is None else generator
        return self._episode(int(torch.randint(len(self.names), (), generator=g)), g)

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> Seq2SeqBatch:
        """``meta_batch`` episodes of distinct tasks (tasks repeat only when ``meta_batch`` exceeds them)."""
        g = self.generator if generator is None else generator
        _positive("meta_batch", meta_batch)
        order: list[int] = []
        while len(order) < meta_batch:
            order += torch.randperm(len(self.names), generator=g).tolist()
        return Seq2SeqBatch([self._episode(t, g) for t in order[:meta_batch]])

    def fixed_tasks(self, n: int = 100, seed: int = 0) -> list[Seq2SeqTask]:
        """``n`` episodes that depend only on ``seed`` and the data (not on the source's generator)."""
        _positive("n", n)
        g = torch.Generator().manual_seed(int(seed))
        return [self.sample(g) for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "shots": self.shots, "queries": self.queries,
                "tasks": list(self.names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("shots", self.shots), ("queries", self.queries), ("tasks", self.names)):
            if state.get(key) != mine:
                raise ValueError(f"state was saved by a task source with other {key} "
                                 f"({state.get(key)!r:.60}), this one has {mine!r:.60}; load it into a "
                                 "source built the same way")
        self.generator.set_state(state["generator"])


class FixedTasks:
    """A fixed list of evaluation tasks (one per held-out task or language).

    ``fixed_tasks(n, seed)`` gives the first ``min(n, len(tasks))`` tasks in order (``seed`` is unused: the
    tasks are fixed); ``sample`` picks one of them uniformly (with the source's own generator by default).
    ``shots`` / ``queries`` are the largest support / query set of the tasks.
    """

    def __init__(self, tasks: Sequence[Seq2SeqTask], seed: int = 0) -> None:
        if not tasks:
            raise ValueError("an evaluation source needs at least one task")
        self.tasks = list(tasks)
        self.shots = max(t.shots for t in self.tasks)
        self.queries = max(t.queries for t in self.tasks)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __repr__(self) -> str:
        names = ", ".join(t.name for t in self.tasks[:5])
        return f"{type(self).__name__}({len(self.tasks)} tasks: {names}...)"

    def sample(self, generator: torch.Generator | None = None) -> Seq2SeqTask:
        g = self.generator if generator is None else generator
        return self.tasks[int(torch.randint(len(self.tasks), (), generator=g))]

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> Seq2SeqBatch:
        return Seq2SeqBatch([self.sample(generator) for _ in range(_positive("meta_batch", meta_batch))])

    def fixed_tasks(self, n: int = 100, seed: int = 0) -> list[Seq2SeqTask]:
        """The first ``min(n, len(tasks))`` tasks (``seed`` unused: these tasks are fixed)."""
        return self.tasks[: _positive("n", n)]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "tasks": [t.name for t in self.tasks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [t.name for t in self.tasks]
        if state.get("tasks") != names:
            raise ValueError("state was saved by an evaluation source with other tasks; load it into a "
                             "source built the same way")
        self.generator.set_state(state["generator"])


def _split_names(names: list[str], val: Sequence[str] | None, test: Sequence[str] | None,
                 seed: int) -> dict[str, list[str]]:
    """Task names of train / val / test: the given lists (train = the rest), or a seeded split."""
    if (val is None) != (test is None):
        raise ValueError("give both val_tasks and test_tasks, or neither (for a seeded split)")
    if val is None or test is None:
        if len(names) < 3:
            raise ValueError(f"the data has {len(names)} task(s) ({', '.join(names)}); a benchmark needs at "
                             "least 3 (one each for train, val and test): add a task column / key")
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(int(seed))).tolist()
        shuffled = [sorted(names)[i] for i in order]
        n_test, n_val = max(1, len(names) // 5), max(1, len(names) // 10)
        val, test = shuffled[:n_val], shuffled[n_val: n_val + n_test]
    for part, chosen in (("val_tasks", val), ("test_tasks", test)):
        unknown = [t for t in chosen if t not in names]
        if isinstance(chosen, str) or not chosen or unknown:
            raise ValueError(f"{part} must be a non-empty list of task names of the data; unknown: "
                             f"{unknown}; "
                             f"the data has {', '.join(names)}")
    if set(val) & set(test):
        raise ValueError(f"tasks {sorted(set(val) & set(test))} are in both val_tasks and test_tasks")
    train = [n for n in names if n not in set(val) | set(test)]
    if not train:
        raise ValueError("no task is left for training; leave at least one task out of val_tasks/test_tasks")
    return {"train": train, "val": list(val), "test": list(test)}


def _held_out(pairs: dict[str, list[Pair]], names: list[str], shots: int, split: str) -> list[Seq2SeqTask]:
    tasks = []
    for name in names:
        p = pairs[name]
        if len(p) < shots + 1:
            raise ValueError(f"{split} task {name!r} has {len(p)} pairs, fewer than shots + 1 = {shots + 1} "
                             "(shots support pairs and at least one query); use fewer shots or another task")
        support, query = p[:shots], p[shots:]
        tasks.append(Seq2SeqTask([s for s, _ in support], [t for _, t in support], [s for s, _ in query],
                                 [t for _, t in query], name=name, info={"split": split}))
    return tasks


def vocabulary_of(pairs: Iterable[Pair], spare: int = 96) -> Vocabulary:
    """The sorted symbols of the sources and targets of ``pairs``, plus ``spare`` ids."""
    symbols: set[str] = set()
    for source, target in pairs:
        symbols.update(source)
        symbols.update(target)
    return Vocabulary(sorted(symbols), spare)


def make_parallel_benchmark(path: str | Path, *, shots: int, queries: int, seed: int = 0,
                            val_tasks: Sequence[str] | None = None, test_tasks: Sequence[str] | None = None,
                            tokenize: str = "chars", spare: int = 96) -> Seq2SeqBenchmark:
    """Few-shot tasks from one parallel-data file, split by task name.

    ``val_tasks`` / ``test_tasks``: explicit task names (train = the others), or both ``None`` for a seeded
    split (about 10% val, 20% test, at least one each; 3 tasks or more needed). The train source samples
    ``shots`` + ``queries`` pairs a task (seed ``seed``); each val / test task is fixed: its first ``shots``
    pairs are the support, all others the queries. The vocabulary holds the train tasks' symbols only.
    """
    _positive("shots", shots)
    pairs = group_by_task(read_parallel(path, tokenize))
    parts = _split_names(list(pairs), val_tasks, test_tasks, seed)
    train = ParallelTasks({n: pairs[n] for n in parts["train"]}, shots, queries, seed)
    val = FixedTasks(_held_out(pairs, parts["val"], shots, "val"), seed + 1)
    test = FixedTasks(_held_out(pairs, parts["test"], shots, "test"), seed + 2)
    vocabulary = vocabulary_of((p for n in parts["train"] for p in pairs[n]), spare)
    return Seq2SeqBenchmark(train, val, test, vocabulary, Path(path).stem, parts)
