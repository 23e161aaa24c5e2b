"""CoNLL-SIGMORPHON 2018 task 1 (morphological inflection) as few-shot sequence-to-sequence tasks.

Each language is a task: map ``lemma + tags`` to the inflected form. A source is the tag symbols then the
lemma's characters (``("<V>", "<PST>", "w", "a", "l", "k")``), a target the form's characters.

The language split is fixed in ``splits/sigmorphon2018.json`` (``read_language_split``): meta-training
samples episodes from the train languages' ``train-high`` files (else ``train-medium``,
``InflectionEpisodes``); each val / test language is one fixed task (``LanguageTasks``) adapting on its 100
``train-low`` pairs and scored on its ``dev`` (val) or official ``test`` file. Query sets follow the
official scorer ``evalm.py``, which keys the gold forms by ``(lemma, tags)``: a repeated key would count
once with its last form (``evalm_items``). The 2018 dev and test files have no repeated key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from attnmeta.data.parallel import FixedTasks, Pair, ParallelTasks, Seq2SeqBenchmark
from attnmeta.data.safe_io import MissingDataError, read_text
from attnmeta.errors import DataError
from attnmeta.tasks.seq2seq import Seq2SeqTask, Sequence_, Vocabulary

__all__ = ["Inflection", "SPLIT_FILE", "read_inflections", "inflection_source", "inflection_target",
           "inflection_pair", "evalm_items", "read_language_split", "InflectionEpisodes", "LanguageTasks",
           "make_sigmorphon_benchmark"]

Inflection = tuple[str, str, str]  # (lemma, form, tags)
SPLIT_FILE = Path(__file__).resolve().parent / "splits" / "sigmorphon2018.json"
PARTS = ("train", "val", "test")
SPARE = 96
_FIX = ("the data is expected in <root>/task1/all/<language>-<part> (root: text/sigmorphon2018 of "
        "../shared/data)")
_SYMBOL_CACHE: dict[tuple[str, tuple[str, ...], tuple[int, ...]], list[str]] = {}


def read_inflections(path: str | Path) -> list[Inflection]:
    """``(lemma, form, tags)`` of every non-blank line ``lemma<TAB>form<TAB>tags`` of a UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"inflection file {path} not found; {_FIX}")
    out = []
    for number, line in enumerate(read_text(path, "the inflection file").split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() and "\t" not in line:
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"{path}:{number}: {len(fields)} tab-separated fields, expected 3 "
                            "(lemma<TAB>form<TAB>tags)")
        if not fields[0] or not fields[1]:
            raise DataError(f"{path}:{number}: empty {'lemma' if not fields[0] else 'form'}; every line "
                            "needs a lemma, a form and tags")
        out.append((fields[0], fields[1], fields[2]))
    return out


def inflection_source(lemma: str, tags: str) -> Sequence_:
    """Tag symbols (``"V;PST"`` -> ``"<V>", "<PST>"``) followed by the lemma's characters (spaces kept)."""
    return tuple(f"<{t}>" for t in tags.split(";")) + tuple(lemma)


def inflection_target(form: str) -> Sequence_:
    """The form's characters."""
    return tuple(form)


def inflection_pair(item: Inflection) -> Pair:
    lemma, form, tags = item
    return inflection_source(lemma, tags), inflection_target(form)


def evalm_items(items: Iterable[Inflection]) -> list[Inflection]:
    """``items`` as ``evalm.py`` scores them: one per ``(lemma, tags)``, with the *last* form given for it,
    in order of the key's first appearance."""
    keyed: dict[tuple[str, str], Inflection] = {}
    for lemma, form, tags in items:
        keyed[(lemma, tags)] = (lemma, form, tags)  # an existing key keeps its position, takes the new form
    return list(keyed.values())


def read_language_split(path: str | Path | None = None) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` from the packaged split (or ``path``); keys other
    than those and ``"note"``, non-string names, repeats and overlaps raise ``DataError``."""
    path = SPLIT_FILE if path is None else Path(path)
    try:
        data = json.loads(read_text(path, "the split file"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); restore the split "
                        "file") from None
    if not isinstance(data, dict) or set(data) - {"note"} != set(PARTS):
        raise DataError(f"{path}: expected a JSON object with keys {', '.join(PARTS)} (and optionally note)")
    seen: dict[str, str] = {}
    for part in PARTS:
        names = data[part]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise DataError(f"{path}: {part!r} must be a non-empty list of language names")
        for name in names:
            if name in seen:
                raise DataError(f"{path}: language {name!r} is listed in {seen[name]!r} and {part!r}; each "
                                "language belongs to one part")
            seen[name] = part
    return {part: list(data[part]) for part in PARTS}


def _language_file(root: Path, language: str, part: str) -> Path:
    return root / "task1" / "all" / f"{language}-{part}"


def _training_file(root: Path, language: str) -> Path:
    """The language's ``train-high`` file, else its ``train-medium``."""
    high = _language_file(root, language, "train-high")
    if high.is_file():
        return high
    medium = _language_file(root, language, "train-medium")
    if not medium.is_file():
        raise MissingDataError(f"no training file for {language!r}: neither {high} nor {medium} exists; "
                               f"{_FIX}")
    return medium


class InflectionEpisodes(ParallelTasks[Inflection]):
    """Training episodes over languages (the ``Seq2SeqTaskSource`` protocol): a language uniformly, then
    ``shots`` support and ``queries`` query inflections, disjoint, uniformly without replacement;
    ``sample_batch`` draws distinct languages when it can. Inflections are stored as strings and turned into
    symbol sequences when sampled.

    Args:
        inflections: ``language -> [(lemma, form, tags), ...]``.
        shots / queries / seed: as ``ParallelTasks`` (the source's own generator, saved by ``state_dict``).
    """

    def __init__(self, inflections: Mapping[str, Sequence[Inflection]], *, shots: int, queries: int,
                 seed: int = 0) -> None:
        super().__init__(inflections, shots, queries, seed, split="train")

    @property
    def languages(self) -> list[str]:
        return self.names

    def _pair(self, item: Inflection) -> Pair:
        return inflection_pair(item)

    @classmethod
    def from_root(cls, root: str | Path, languages: Sequence[str], *, shots: int, queries: int,
                  seed: int = 0) -> InflectionEpisodes:
        """Episodes over ``languages``' training files (``train-high``, else ``train-medium``) in ``root``."""
        root = _checked_root(root)
        data = {lang: read_inflections(_training_file(root, lang)) for lang in languages}
        return cls(data, shots=shots, queries=queries, seed=seed)


class LanguageTasks(FixedTasks):
    """One fixed evaluation task per language (val: ``train-low`` -> ``dev``; test: ``train-low`` ->
    ``test``), in the given language order; ``fixed_tasks(n, seed)`` gives the first ``min(n, languages)``
    (``seed`` unused), ``sample`` picks a language uniformly (see ``FixedTasks``).

    Args:
        root: the folder holding ``task1/all``.
        languages: the languages, in order.
        split: ``"val"`` (queries from ``dev``) or ``"test"`` (queries from ``test``).
        shots: support = the first ``shots`` ``train-low`` pairs; ``None``: all of them (100).
        max_queries: keep the first ``max_queries`` query inflections (after ``evalm_items``); ``None``: all.
        seed: seed of the generator used by ``sample``.
    """

    def __init__(self, root: str | Path, languages: Sequence[str], *, split: str, shots: int | None = None,
                 max_queries: int | None = None, seed: int = 0) -> None:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        for name, value in (("shots", shots), ("max_queries", max_queries)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        root = _checked_root(root)
        self.languages = list(languages)
        self.split = split
        tasks = [self._task(root, lang, shots, max_queries) for lang in self.languages]
        super().__init__(tasks, seed)

    def _task(self, root: Path, language: str, shots: int | None, max_queries: int | None) -> Seq2SeqTask:
        low = read_inflections(_language_file(root, language, "train-low"))
        if shots is not None and shots > len(low):
            raise ValueError(f"shots={shots} but {language!r} has {len(low)} train-low pairs; use shots <= "
                             f"{len(low)} or None")
        queries = evalm_items(read_inflections(_language_file(root, language, "dev" if self.split == "val"
                                                               else "test")))
        if not queries:
            raise DataError(f"{language!r} has no {self.split} inflections; pick another language")
        support = [inflection_pair(i) for i in low[:shots]]
        query = [inflection_pair(i) for i in queries[:max_queries]]
        return Seq2SeqTask([s for s, _ in support], [t for _, t in support], [s for s, _ in query],
                           [t for _, t in query], name=language, info={"split": self.split})


def _checked_root(root: str | Path) -> Path:
    root = Path(root)
    if not (root / "task1" / "all").is_dir():
        raise MissingDataError(f"SIGMORPHON 2018 folder {root / 'task1' / 'all'} not found; {_FIX}")
    return root


def _symbols(data: Iterable[Sequence[Inflection]]) -> list[str]:
    chars: set[str] = set()
    tags: set[str] = set()
    for items in data:
        for lemma, form, tag_string in items:
            chars.update(lemma)
            chars.update(form)
            tags.add(tag_string)
    symbols = chars | {f"<{t}>" for tag_string in tags for t in tag_string.split(";")}
    return sorted(symbols)


def _vocabulary(root: Path, languages: Sequence[str],
                loaded: Mapping[str, Sequence[Inflection]]) -> Vocabulary:
    """Symbols of the languages' training files (sorted), cached per root, languages and file stamps."""
    files = [_training_file(root, lang) for lang in languages]
    stamps = tuple(f.stat().st_mtime_ns for f in files)
    key = (str(root.resolve()), tuple(languages), stamps)
    if key not in _SYMBOL_CACHE:
        _SYMBOL_CACHE[key] = _symbols(loaded[lang] if lang in loaded else read_inflections(f)
                                      for lang, f in zip(languages, files))
    return Vocabulary(_SYMBOL_CACHE[key], SPARE)


def _resolve_languages(languages: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    split = read_language_split()
    if languages is None:
        return split
    unknown = sorted(set(languages) - set(PARTS))
    if unknown:
        raise ValueError(f"languages: unknown part(s) {unknown}; use keys {', '.join(PARTS)}")
    for part, names in languages.items():
        if isinstance(names, str) or not names:
            raise ValueError(f"languages[{part!r}] must be a non-empty list of language names")
        split[part] = list(names)
    return split


def make_sigmorphon_benchmark(root: str | Path, *, shots: int, queries: int, seed: int = 0,
                              splits: Sequence[str] = PARTS, val_queries: int | None = None,
                              languages: Mapping[str, Sequence[str]] | None = None) -> Seq2SeqBenchmark:
    """The SIGMORPHON 2018 few-shot inflection benchmark.

    Args:
        root: folder holding ``task1/all`` (``text/sigmorphon2018`` of the shared data).
        shots / queries: pairs of a training episode (``InflectionEpisodes``, seed ``seed``). Val / test
            tasks adapt on all ``train-low`` pairs (100) and score every query.
        splits: parts to build (others are ``None``); the vocabulary is always built.
        val_queries: cap the val tasks' queries at the first ``val_queries`` (quick validation).
        languages: ``{part: [language, ...]}`` replacing parts of the packaged split (e.g. fewer languages
            for a quick run); ``None``: the packaged split.

    The vocabulary holds the sorted symbols (characters and tags) of the train languages' training files
    only, plus ``SPARE`` ids for new symbols. ``.tasks`` names each part's languages.
    """
    root = _checked_root(root)
    bad = [s for s in splits if s not in PARTS]
    if isinstance(splits, str) or bad:
        raise ValueError(f"splits must be a list drawn from {PARTS}, got {splits!r}")
    parts = _resolve_languages(languages)
    loaded: dict[str, list[Inflection]] = {}
    train = None
    if "train" in splits:
        loaded = {lang: read_inflections(_training_file(root, lang)) for lang in parts["train"]}
        train = InflectionEpisodes(loaded, shots=shots, queries=queries, seed=seed)
    vocabulary = _vocabulary(root, parts["train"], loaded)
    val = (LanguageTasks(root, parts["val"], split="val", max_queries=val_queries, seed=seed + 1)
           if "val" in splits else None)
    test = LanguageTasks(root, parts["test"], split="test", seed=seed + 2) if "test" in splits else None
    return Seq2SeqBenchmark(train, val, test, vocabulary, "sigmorphon2018", parts)

