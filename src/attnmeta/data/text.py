"""Text classification data: CLINC150 intents and any (text, label) CSV/JSON file.

CLINC150 (Larson et al., 2019, CC BY 3.0) has 150 intents in 10 domains, 150 utterances per intent in
``data_full.json`` (``train`` 100 + ``val`` 20 + ``test`` 30 each) plus out-of-scope utterances (``oos_*``).
For few-shot intent detection the intents are the classes: the utterances of all three official splits are
pooled per intent and the *classes* are split, either by domain (meta-train on some domains, test on domains
never seen, :func:`clinc150_domain_split`) or at random (:func:`random_class_split`).

Texts stay strings here; :class:`attnmeta.nn.text.TextTokenizer` turns them into one padded int64 tensor
that :class:`attnmeta.tasks.EpisodeSampler` samples from (its in-memory fast path).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from attnmeta.data.download import file_digest
from attnmeta.data.safe_io import MissingDataError, download_verified
from attnmeta.data.textfiles import csv_records, json_document, json_lines
from attnmeta.errors import DataError

__all__ = ["TextDataset", "CLINC150_DOMAINS_DEFAULT_SPLIT", "CLINC150_FILES", "load_clinc150",
           "clinc150_domain_split", "random_class_split", "load_text_pairs", "text_dataset_from_pairs"]

#: Official files (github.com/clinc/oos-eval, ``data/``) with their sha256.
CLINC150_FILES: dict[str, tuple[str, str]] = {
    "data_full.json": ("https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_full.json",
                       "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"),
    "domains.json": ("https://raw.githubusercontent.com/clinc/oos-eval/master/data/domains.json",
                     "b947b579d3b8e74b06f93b01083d8efaff2888b43a3e362533bd88a6e1211b3a"),
}

#: Default domain split (6 / 1 / 3 domains = 90 / 15 / 45 intents): test domains are never seen in training.
CLINC150_DOMAINS_DEFAULT_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("banking", "credit_cards", "kitchen_and_dining", "home", "auto_and_commute", "small_talk"),
    "val": ("meta",),
    "test": ("travel", "utility", "work"),
}


@dataclass
class TextDataset:
    """Labelled utterances.

    Attributes:
        texts: ``n`` strings.
        labels: int64 ``[n]`` class ids in ``0..len(class_names)-1``.
        class_names: name of each class id.
        class_domains: domain name of each class id (empty when the data has no domains).
    """

    texts: list[str]
    labels: Tensor
    class_names: list[str]
    class_domains: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != int(self.labels.numel()):
            raise ValueError(f"{len(self.texts)} texts but {self.labels.numel()} labels; give one label per "
                             "text")
        if self.labels.dtype != torch.long or self.labels.dim() != 1:
            raise TypeError(f"labels must be a 1-d int64 tensor, got {self.labels.dtype} "
                            f"{tuple(self.labels.shape)}")
        n_classes = len(self.class_names)
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= n_classes):
            raise ValueError(f"labels must be in 0..{len(self.class_names) - 1} (one per class name)")
        if self.class_domains and len(self.class_domains) != len(self.class_names):
            raise ValueError("class_domains must name one domain per class (or be empty)")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def classes_in_domains(self, domains: Iterable[str]) -> list[int]:
        """Class ids (sorted) whose domain is in ``domains``; unknown domain names raise ``ValueError``."""
        domains = list(domains)
        known = set(self.class_domains)
        unknown = [d for d in domains if d not in known]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; this data set has domains {sorted(known)}")
        return [c for c, d in enumerate(self.class_domains) if d in set(domains)]

    def subset(self, classes: Sequence[int]) -> TextDataset:
        """The utterances of ``classes`` only, relabelled ``0..len(classes)-1`` in the given order."""
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct ids in 0..{self.num_classes - 1}, got {classes}")
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
        new = remap[self.labels]
        keep = (new >= 0).nonzero().flatten().tolist()
        return TextDataset([self.texts[i] for i in keep], new[keep], [self.class_names[c] for c in classes],
                           [self.class_domains[c] for c in classes] if self.class_domains else [])


def _clinc_file(root: Path, name: str, download: bool) -> Path:
    url, sha256 = CLINC150_FILES[name]
    path = root / name
    if path.exists():
        actual = file_digest(path, "sha256")
        if actual != sha256:
            raise DataError(f"checksum mismatch for {path}: sha256 is {actual}, expected {sha256}; it is not "
                            f"the official CLINC150 file: delete it and run again with download=True, or put "
                            f"the official file from {url} there")
        return path
    if not download:
        raise MissingDataError(
            f"CLINC150 file {path} not found; pass download=True to fetch it from {url}, or put the official "
            "data_full.json and domains.json of github.com/clinc/oos-eval (data/) in that folder")
    return download_verified(url, path, {"sha256": sha256}, f"put the official file from {url} there")


def load_clinc150(root: str | Path, *, splits: Sequence[str] = ("train", "val", "test"),
                  include_oos: bool = False, download: bool = False) -> TextDataset:
    """Load CLINC150 ``data_full.json`` (and ``domains.json``) from ``root``.

    Args:
        root: folder holding the two official files (checked against their sha256).
        splits: official splits to pool (any of ``train``, ``val``, ``test``); few-shot use pools all three,
            giving 150 utterances per intent.
        include_oos: add the out-of-scope utterances of the same splits as one extra class ``oos``
            (domain ``oos``).
        download: fetch missing files from the official repository (checksum verified).

    Returns:
        a :class:`TextDataset` whose class ids follow ``domains.json`` order (15 consecutive ids per domain).
    """
    root = Path(root)
    allowed = ("train", "val", "test")
    if isinstance(splits, str) or not splits or any(s not in allowed for s in splits):
        raise ValueError(f"splits must be a non-empty list drawn from {allowed}, got {splits!r}")
    data = json_document(_clinc_file(root, "data_full.json", download))
    domains = json_document(_clinc_file(root, "domains.json", download))
    class_names = [intent for intents in domains.values() for intent in intents]
    class_domains = [domain for domain, intents in domains.items() for _ in intents]
    if include_oos:
        class_names.append("oos")
        class_domains.append("oos")
    index = {name: i for i, name in enumerate(class_names)}
    texts: list[str] = []
    labels: list[int] = []
    for split in splits:
        rows = list(data[split]) + (list(data[f"oos_{split}"]) if include_oos else [])
        for text, intent in rows:
            texts.append(text)
            labels.append(index[intent])
    return TextDataset(texts, torch.tensor(labels, dtype=torch.long), class_names, class_domains)


def clinc150_domain_split(dataset: TextDataset, split: dict[str, Sequence[str]] | None = None
                          ) -> dict[str, list[int]]:
    """Class ids of each part of a domain split, e.g. ``{"train": [...], "val": [...], "test": [...]}``.

    ``split`` maps part name to domain names (default :data:`CLINC150_DOMAINS_DEFAULT_SPLIT`). A domain may
    appear in one part only, so test intents come from domains never seen in meta-training.
    """
    split = dict(CLINC150_DOMAINS_DEFAULT_SPLIT if split is None else split)
    if not dataset.class_domains:
        raise ValueError("this data set has no domains; use random_class_split instead")
    seen: dict[str, str] = {}
    for part, domains in split.items():
        if isinstance(domains, str):
            raise TypeError(f"split[{part!r}] must be a list of domain names, got the string {domains!r}")
        for domain in domains:
            if domain in seen:
                raise ValueError(f"domain {domain!r} is in both {seen[domain]!r} and {part!r}; "
                                 "each domain may be in one part only")
            seen[domain] = part
    return {part: dataset.classes_in_domains(domains) for part, domains in split.items()}


def random_class_split(num_classes: int, sizes: dict[str, int], *, seed: int = 0) -> dict[str, list[int]]:
    """Split class ids ``0..num_classes-1`` at random into disjoint parts of the given sizes.

    Example: ``random_class_split(150, {"train": 90, "val": 15, "test": 45})``. Deterministic in ``seed``;
    each part's ids are sorted.
    """
    if any(int(v) < 0 for v in sizes.values()) or sum(sizes.values()) > num_classes:
        raise ValueError(f"part sizes {sizes} must be >= 0 and sum to at most num_classes={num_classes}")
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    out, start = {}, 0
    for part, size in sizes.items():
        out[part] = sorted(order[start:start + int(size)])
        start += int(size)
    return out


def _class_name(where: str, text: object, label: object) -> tuple[str, type]:
    """Class name and label type (``str`` or ``int``) of one ``(text, label)`` item; ``DataError`` naming
    ``where`` when either is bad."""
    if not isinstance(text, str):
        raise DataError(f"{where}: the text is {text!r} of type {type(text).__name__}; texts must be strings")
    if not text.strip():
        raise DataError(f"{where}: the text is empty or only whitespace; remove the item or give it a text")
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{where}: empty label (missing, null or blank) for text {text[:40]!r}; give every "
                        "text a label")
    if isinstance(label, bool) or not isinstance(label, (str, numbers.Integral)):
        raise DataError(f"{where}: the label {label!r} is a {type(label).__name__}; labels must be strings "
                        "or integers")
    return (label, str) if isinstance(label, str) else (str(int(label)), int)


def _dataset(items: Iterable[tuple[str, object]], source: str) -> TextDataset:
    """``TextDataset`` of ``(where, item)`` pairs; each item must be a ``(text, label)`` pair."""
    texts: list[str] = []
    raw: list[str] = []
    label_type: type | None = None
    for where, pair in items:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DataError(f"{where}: got {pair!r}; each item must be a (text, label) pair")
        text, label = pair
        name, kind = _class_name(where, text, label)
        label_type = label_type or kind
        if kind is not label_type:
            kinds = {str: ("a string", "strings"), int: ("an integer", "integers")}
            raise DataError(f"{where}: the label {label!r} is {kinds[kind][0]} but earlier labels are "
                            f"{kinds[label_type][1]}; give every label the same type")
        raw.append(name)
        texts.append(text)
    if not texts:
        raise DataError(f"{source}: no (text, label) pairs found")
    class_names = sorted(set(raw))
    index = {name: i for i, name in enumerate(class_names)}
    return TextDataset(texts, torch.tensor([index[r] for r in raw], dtype=torch.long), class_names)


def text_dataset_from_pairs(pairs: Iterable[tuple[str, object]], *, source: str = "pairs") -> TextDataset:
    """Build a :class:`TextDataset` from ``(text, label)`` pairs; labels (strings or ints, one type) map to
    sorted ids. Empty or whitespace-only texts and empty labels are rejected (``DataError`` naming the item).
    """
    return _dataset(((f"{source}: item {i}", pair) for i, pair in enumerate(pairs)), source)


def _records(path: Path, suffix: str, text_field: str, label_field: str) -> list[tuple[str, object]]:
    """``(where, record)`` for every record of a CSV/TSV, JSON or JSON-lines file."""
    if suffix in (".csv", ".tsv"):
        hint = "pass text_field=/label_field= naming the text and label columns"
        rows = csv_records(path, (text_field, label_field), hint, "\t" if suffix == ".tsv" else ",")
        return [(f"{path}:{line}", row) for line, row in rows]
    if suffix in (".jsonl", ".ndjson"):
        return [(f"{path}:{line}", value) for line, value in json_lines(path)]
    if suffix == ".json":
        content = json_document(path)
        if isinstance(content, list):
            return [(f"{path}: item {i}", r) for i, r in enumerate(content)]
        if isinstance(content, dict):
            return [(f"{path}: item {i} of {key!r}", r) for key, value in content.items()
                    if isinstance(value, list) for i, r in enumerate(value)]
        raise DataError(f"{path}: JSON must be a list of pairs/objects or an object of such lists, got a "
                        f"{type(content).__name__}")
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl")


def load_text_pairs(path: str | Path, *, text_field: str = "text", label_field: str = "label") -> TextDataset:
    """Load ``(text, label)`` pairs from a CSV/TSV (with a header), JSON or JSON-lines file (UTF-8).

    Accepted layouts: CSV/TSV with columns ``text_field`` and ``label_field``; JSON as a list of
    ``[text, label]`` pairs or of ``{text_field: ..., label_field: ...}`` objects, or an object of such lists
    (e.g. CLINC150's ``{"train": [...], "test": [...]}``, all lists pooled); JSON lines with one object each.
    Class ids are the sorted distinct labels. Any problem (invalid UTF-8, broken JSON, unterminated CSV
    quote, empty text, missing or non-string/int label) raises ``DataError`` naming the file and line/item.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"text data file {path} not found")

    def pair(where: str, record: object) -> tuple[str, object]:
        if isinstance(record, dict):
            missing = [k for k in (text_field, label_field) if k not in record]
            if missing:
                raise DataError(f"{where}: record lacks field(s) {missing} (has {sorted(record)}); pass "
                                "text_field=/label_field= naming the text and label fields")
            return where, (record[text_field], record[label_field])
        return where, record

    records = _records(path, path.suffix.lower(), text_field, label_field)
    return _dataset((pair(where, record) for where, record in records), str(path))
