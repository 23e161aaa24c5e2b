"""Few-shot sequence-to-sequence benchmarks by name, as the trainer builds them.

``sigmorphon2018``: the CoNLL-SIGMORPHON 2018 inflection task, one task per language
(``attnmeta.data.sigmorphon``; ``root`` holds ``task1/all``). ``parallel``: any
``source<TAB>target[<TAB>task]`` TSV or JSONL file (``attnmeta.data.parallel``; ``root`` is the file).
``options`` are the ``benchmark_options`` of a config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attnmeta.data.parallel import Seq2SeqBenchmark
from attnmeta.errors import UserError

#: How each benchmark's sources are written (the predictor and ``attnmeta predict`` read them so).
SOURCE_FORMATS = {"sigmorphon2018": "inflection", "parallel": "chars"}


def make_seq2seq_benchmark(name: str, *, root: str | None, shots: int, queries: int, seed: int = 0,
                           splits: Sequence[str] = ("train", "val", "test"),
                           **options: Any) -> Seq2SeqBenchmark:
    """The task sources and vocabulary of benchmark ``name``."""
    if name == "sigmorphon2018":
        from attnmeta.data.sigmorphon import make_sigmorphon_benchmark

        if root is None:
            raise UserError("benchmark sigmorphon2018 needs its data: --root FOLDER (the folder holding "
                            "task1/all of the CoNLL-SIGMORPHON 2018 data), or set ATTNMETA_DATA")
        return make_sigmorphon_benchmark(root, shots=shots, queries=queries, seed=seed, splits=splits,
                                         **_options(name, options, ("val_queries", "languages")))
    if name == "parallel":
        from attnmeta.data.parallel import make_parallel_benchmark

        if root is None:
            raise UserError("benchmark parallel needs --root FILE: a source<TAB>target<TAB>task .tsv file or "
                            "a .jsonl file of {\"source\", \"target\", \"task\"} objects")
        return make_parallel_benchmark(root, shots=shots, queries=queries, seed=seed,
                                       **_options(name, options, ("val_tasks", "test_tasks", "tokenize")))
    raise ValueError(f"unknown sequence benchmark {name!r}; choose sigmorphon2018 or parallel")


def source_format(name: str, options: dict[str, Any]) -> str:
    """``"inflection"``, ``"chars"`` or ``"words"``: how the benchmark's sources are split into symbols."""
    if name == "parallel":
        return str(options.get("tokenize", "chars"))
    return SOURCE_FORMATS[name]


def _options(name: str, options: dict[str, Any], valid: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"config key 'benchmark_options': {name} takes no option {unknown[0]!r}; valid: "
                        f"{', '.join(valid)}")
    return options
