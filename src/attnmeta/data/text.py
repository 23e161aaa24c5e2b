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

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from attnmeta.data.download import download_file, verify_checksum

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
        verify_checksum(path, sha256=sha256, source=url)
        return path
    if not download:
        raise FileNotFoundError(
            f"CLINC150 file {path} not found; pass download=True to fetch it from {url}, or put the official "
            "data_full.json and domains.json of github.com/clinc/oos-eval (data/) in that folder")
    return download_file(url, path, sha256=sha256)


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
    data = json.loads(_clinc_file(root, "data_full.json", download).read_text(encoding="utf-8"))
    domains = json.loads(_clinc_file(root, "domains.json", download).read_text(encoding="utf-8"))
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


def text_dataset_from_pairs(pairs: Iterable[tuple[str, object]], *, source: str = "pairs") -> TextDataset:
    """Build a :class:`TextDataset` from ``(text, label)`` pairs; labels (any hashable) map to sorted ids."""
    texts: list[str] = []
    raw: list[str] = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{source}: item {i} is {pair!r}; each item must be a (text, label) pair")
        text, label = pair
        if not isinstance(text, str):
            raise TypeError(f"{source}: item {i} has text {text!r} of type {type(text).__name__}; texts must "
                            "be str")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise ValueError(f"{source}: item {i} ({text!r}) has an empty label; give every text a label")
        texts.append(text)
        raw.append(str(label))
    if not texts:
        raise ValueError(f"{source}: no (text, label) pairs found")
    class_names = sorted(set(raw))
    index = {name: i for i, name in enumerate(class_names)}
    return TextDataset(texts, torch.tensor([index[r] for r in raw], dtype=torch.long), class_names)


def load_text_pairs(path: str | Path, *, text_field: str = "text", label_field: str = "label") -> TextDataset:
    """Load ``(text, label)`` pairs from a CSV/TSV (with a header), JSON or JSON-lines file.

    Accepted layouts: CSV/TSV with columns ``text_field`` and ``label_field``; JSON as a list of
    ``[text, label]`` pairs or of ``{text_field: ..., label_field: ...}`` objects, or an object of such lists
    (e.g. CLINC150's ``{"train": [...], "test": [...]}``, all lists pooled); JSON lines with one object each.
    Class ids are the sorted distinct labels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text data file {path} not found")
    suffix = path.suffix.lower()

    def from_record(i: int, record: object) -> tuple[object, object]:
        if isinstance(record, dict):
            missing = [k for k in (text_field, label_field) if k not in record]
            if missing:
                raise ValueError(f"{path}: record {i} lacks field(s) {missing} (has {sorted(record)}); pass "
                                 "text_field=/label_field= naming the text and label fields")
            return record[text_field], record[label_field]
        return record  # type: ignore[return-value]

    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            columns = reader.fieldnames or []
            if text_field not in columns or label_field not in columns:
                raise ValueError(f"{path}: header {columns} lacks column {text_field!r} or {label_field!r}; "
                                 "pass text_field=/label_field= naming the text and label columns")
            pairs = [(row[text_field], row[label_field]) for row in reader]
    elif suffix in (".jsonl", ".ndjson"):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        pairs = [from_record(i, json.loads(line)) for i, line in enumerate(lines)]
    elif suffix == ".json":
        content = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(content, dict):
            records = [r for value in content.values() if isinstance(value, list) for r in value]
        elif isinstance(content, list):
            records = content
        else:
            raise ValueError(f"{path}: JSON must be a list of pairs/objects or an object of such lists")
        pairs = [from_record(i, r) for i, r in enumerate(records)]
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl")
    return text_dataset_from_pairs(pairs, source=str(path))
