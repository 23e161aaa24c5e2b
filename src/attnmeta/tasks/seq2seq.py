"""Few-shot sequence-to-sequence tasks: learn a new transduction (a language's inflection, a transliteration,
a translation direction) from a handful of ``(source, target)`` pairs.

A sequence is a tuple of *symbols* (strings): characters, plus multi-character symbols such as the
morphological tags ``"<V>"`` of SIGMORPHON sources. ``Seq2SeqTask`` is the contract between task sources
(``attnmeta.data.sigmorphon``, ``attnmeta.data.parallel``) and sequence learners
(``attnmeta.learners.seq2seq``). ``Vocabulary`` maps symbols to token ids; its *spare* ids are given, per
task, to the symbols the vocabulary has never seen (a new script's characters), in order of first
appearance in the task's support set, so that adaptation can learn them; a symbol neither in the vocabulary
nor in the support set becomes ``UNK`` and is counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

Sequence_ = tuple[str, ...]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


@dataclass(frozen=True)
class Seq2SeqTask:
    """One task (a language, a domain): support pairs to adapt on and query pairs to score.

    Attributes:
        support_source / support_target: ``K`` symbol sequences each (pair ``i`` is
            ``support_source[i] -> support_target[i]``).
        query_source / query_target: ``Q`` symbol sequences each.
        name: the task's name (e.g. the language).
        info: free metadata (e.g. ``{"split": "test"}``).
    """

    support_source: list[Sequence_]
    support_target: list[Sequence_]
    query_source: list[Sequence_]
    query_target: list[Sequence_]
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.support_source) != len(self.support_target):
            raise ValueError(f"task {self.name!r}: {len(self.support_source)} support sources but "
                             f"{len(self.support_target)} targets")
        if len(self.query_source) != len(self.query_target):
            raise ValueError(f"task {self.name!r}: {len(self.query_source)} query sources but "
                             f"{len(self.query_target)} targets")

    @property
    def shots(self) -> int:
        return len(self.support_source)

    @property
    def queries(self) -> int:
        return len(self.query_source)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Seq2SeqTask:
        """The same task (symbols carry no device; the learner encodes them where it runs)."""
        return self


@dataclass(frozen=True)
class Seq2SeqBatch:
    """A meta-batch of tasks (their lengths differ, so they are not stacked)."""

    tasks: list[Seq2SeqTask]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Seq2SeqTask]:
        return iter(self.tasks)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Seq2SeqBatch:
        return self


class Seq2SeqTaskSource(Protocol):
    """What the trainer needs of a sequence task family (the protocol of the classification sources)."""

    shots: int
    queries: int

    def sample(self, generator: torch.Generator | None = None) -> Seq2SeqTask: ...

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> Seq2SeqBatch: ...

    def fixed_tasks(self, n: int = 100, seed: int = 0) -> list[Seq2SeqTask]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Encoded:
    """Token ids of a list of sequences: ``ids`` int64 ``[B, L]`` padded with ``PAD``, ``lengths`` ``[B]``
    (without padding; targets end with ``EOS``, counted), ``unknown`` (how many symbols became ``UNK``)."""

    ids: Tensor
    lengths: Tensor
    unknown: int = 0


class Vocabulary:
    """Symbols <-> token ids: ``PAD, BOS, EOS, UNK``, the known symbols, then ``spare`` ids for new symbols.

    Args:
        symbols: the known symbols, in a fixed order (duplicates are refused).
        spare: ids reserved for symbols first seen in a task's support set.
    """

    def __init__(self, symbols: Sequence[str], spare: int = 64) -> None:
        symbols = list(symbols)
        if len(set(symbols)) != len(symbols):
            raise ValueError("vocabulary symbols must be unique")
        if any(s in SPECIALS for s in symbols) or any(not isinstance(s, str) or not s for s in symbols):
            raise ValueError(f"vocabulary symbols must be non-empty strings other than {', '.join(SPECIALS)}")
        if spare < 0:
            raise ValueError(f"spare must be >= 0, got {spare}")
        self.symbols, self.spare = symbols, int(spare)
        self.index = {s: i + len(SPECIALS) for i, s in enumerate(symbols)}

    @property
    def size(self) -> int:
        """Number of token ids (the embedding and output size)."""
        return len(SPECIALS) + len(self.symbols) + self.spare

    @property
    def first_spare(self) -> int:
        return len(SPECIALS) + len(self.symbols)

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence_], spare: int = 64) -> Vocabulary:
        """The symbols of ``sequences`` in order of first appearance."""
        seen: dict[str, None] = {}
        for seq in sequences:
            for s in seq:
                seen.setdefault(s, None)
        return cls(list(seen), spare)

    def to_dict(self) -> dict[str, Any]:
        return {"symbols": list(self.symbols), "spare": self.spare}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(data["symbols"], data["spare"])

    def task_mapping(self, sequences: Iterable[Sequence_], hidden: Iterable[str] = ()) -> dict[str, int]:
        """``symbol -> id`` for one task: the known symbols, plus spare ids for the new symbols of
        ``sequences`` (a task's support sources and targets) in order of first appearance; new symbols
        beyond the spare ids stay unmapped (they become ``UNK``). ``hidden``: known symbols treated as new
        (meta-training with them teaches the model to learn a new script from the support set)."""
        hidden = set(hidden)
        mapping = {s: i for s, i in self.index.items() if s not in hidden}
        next_id = self.first_spare
        for seq in sequences:
            for s in seq:
                if s not in mapping and next_id < self.size:
                    mapping[s] = next_id
                    next_id += 1
        return mapping

    def encode(self, sequences: Sequence[Sequence_], mapping: dict[str, int] | None = None, *,
               eos: bool = False, max_length: int | None = None) -> Encoded:
        """``Encoded`` ids of ``sequences`` (``eos``: append ``EOS``). A sequence longer than ``max_length``
        tokens (``EOS`` included) is refused with ``ValueError``."""
        mapping = self.index if mapping is None else mapping
        rows, unknown = [], 0
        for seq in sequences:
            ids = [mapping.get(s, UNK) for s in seq]
            unknown += sum(1 for s in seq if s not in mapping)
            if eos:
                ids.append(EOS)
            if max_length is not None and len(ids) > max_length:
                raise ValueError(f"a sequence of {len(ids)} tokens is longer than the model's limit of "
                                 f"{max_length}: {''.join(seq)[:40]!r}")
            rows.append(ids)
        width = max((len(r) for r in rows), default=0)
        ids_t = torch.full((len(rows), max(width, 1)), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids_t[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        return Encoded(ids_t, lengths, unknown)

    def decode(self, ids: Sequence[int] | Tensor, mapping: dict[str, int] | None = None) -> Sequence_:
        """Symbols of one row of ids up to the first ``EOS`` (``PAD``/``BOS`` skipped, ``UNK`` kept as
        ``"<unk>"``; an unassigned spare id decodes to ``"<unk>"``)."""
        inverse = {i: s for s, i in (self.index if mapping is None else mapping).items()}
        out: list[str] = []
        for i in (ids.tolist() if isinstance(ids, Tensor) else ids):
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(inverse.get(i, SPECIALS[UNK]))
        return tuple(out)
