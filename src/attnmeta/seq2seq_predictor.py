"""Use a trained few-shot sequence-to-sequence run: ``attnmeta.load``, ``fit`` (pairs), ``generate``.

```python
m = attnmeta.load("runs/sigmorphon2018-maml")
m.fit([("schielen", "V;PTCP;PST"), ...], ["geschielt", ...])   # a new language's ~100 pairs
m.generate([("lachen", "V;PTCP;PST")], beam=5)                  # ["gelacht"]
```

Sources follow the run's data: ``(lemma, tags)`` pairs for SIGMORPHON inflection runs (tags ``;``-separated),
strings for runs on parallel data (split into characters, or into words for word-level runs). Symbols never
seen in training get the model's spare ids when they occur in the ``fit`` pairs; a query symbol seen neither
in training nor in the ``fit`` pairs becomes the unknown symbol: ``unknown_`` counts them and
``unknown_symbols_`` lists them after each ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from attnmeta.errors import UserError
from attnmeta.learners.seq2seq.base import Params, Seq2SeqLearner
from attnmeta.tasks.seq2seq import Seq2SeqTask, Sequence_

SOURCE_FORMATS = ("inflection", "chars", "words")


class FewShotSeq2Seq:
    """A trained sequence learner adapted to one task's pairs (``fit``), generating targets (``generate``).

    Args:
        learner: the run's learner with its weights.
        source_format: ``"inflection"`` (sources are ``(lemma, tags)``), ``"chars"`` or ``"words"``.
        beam: default beam size of ``generate`` (``None``: the learner's).
    """

    def __init__(self, learner: Seq2SeqLearner, source_format: str = "chars",
                 beam: int | None = None) -> None:
        if source_format not in SOURCE_FORMATS:
            raise ValueError(f"source_format must be one of {SOURCE_FORMATS}, got {source_format!r}")
        self.learner, self.source_format, self.beam = learner.eval(), source_format, beam
        self._params: list[Params] | None = None
        self._mapping: dict[str, int] = {}
        self.unknown_, self.unknown_symbols_ = 0, []  # type: ignore[var-annotated]

    def source_symbols(self, source: Any, where: str) -> Sequence_:
        """The symbol sequence of one source (``where`` names it in error messages)."""
        if self.source_format == "inflection":
            from attnmeta.data.sigmorphon import inflection_source

            if (not isinstance(source, (tuple, list)) or len(source) != 2
                    or not all(isinstance(s, str) for s in source)):
                raise UserError(f"{where} must be a (lemma, tags) pair of strings for this inflection run, "
                                f"e.g. ('schielen', 'V;PTCP;PST'); got {source!r}")
            lemma, tags = source
            if not lemma or not tags:
                raise UserError(f"{where} has an empty lemma or tags: {source!r}")
            return inflection_source(lemma, tags)
        if not isinstance(source, str) or not source.strip():
            raise UserError(f"{where} must be a non-empty string, got {source!r}")
        return tuple(source.split()) if self.source_format == "words" else tuple(source)

    def target_symbols(self, target: Any, where: str) -> Sequence_:
        if not isinstance(target, str) or not target.strip():
            raise UserError(f"{where} must be a non-empty string, got {target!r}")
        return tuple(target.split()) if self.source_format == "words" else tuple(target)

    def fit(self, sources: Sequence[Any], targets: Sequence[str],
            ensemble: int | None = None) -> FewShotSeq2Seq:
        """Adapt to a task's pairs (``sources[i] -> targets[i]``, at least one); ``ensemble``: copies of the
        model fine-tuned on them, decoded together (default: the run's, 1)."""
        if ensemble is not None and (isinstance(ensemble, bool) or not isinstance(ensemble, int)
                                     or ensemble < 1):
            raise UserError(f"ensemble must be an int >= 1, got {ensemble!r}")
        if isinstance(sources, (str, bytes)) or isinstance(targets, (str, bytes)):
            raise UserError("fit() takes lists of sources and targets, not one string")
        if len(sources) != len(targets) or len(sources) == 0:
            raise UserError(f"fit() needs as many targets as sources (at least one pair); got {len(sources)} "
                            f"sources and {len(targets)} targets")
        src = [self.source_symbols(s, f"fit(): source {i}") for i, s in enumerate(sources)]
        tgt = [self.target_symbols(t, f"fit(): target {i}") for i, t in enumerate(targets)]
        task = Seq2SeqTask(src, tgt, [], [], name="fit")
        try:
            encoded = self.learner.encode_task(task)
        except ValueError as err:
            raise UserError(f"fit(): {err}") from None
        self._mapping = encoded.mapping
        self._params = self.learner.adapt_ensemble(encoded, ensemble)
        return self

    def generate(self, sources: Sequence[Any], beam: int | None = None) -> list[str]:
        """Generated targets of ``sources`` (greedy with ``beam=1``)."""
        if self._params is None:
            raise UserError("call fit(sources, targets) with the task's pairs before generate()")
        if isinstance(sources, (str, bytes)):
            raise UserError("generate() takes a list of sources, not one string")
        beam = beam if beam is not None else self.beam
        if beam is not None and (isinstance(beam, bool) or not isinstance(beam, int) or beam < 1):
            raise UserError(f"beam must be an int >= 1, got {beam!r}")
        symbols = [self.source_symbols(s, f"generate(): source {i}") for i, s in enumerate(sources)]
        try:
            encoded = self.learner.encode_sources(symbols, self._mapping)
        except ValueError as err:
            raise UserError(f"generate(): {err}") from None
        self.unknown_ = encoded.unknown
        self.unknown_symbols_ = sorted({s for seq in symbols for s in seq if s not in self._mapping})
        if not symbols:
            return []
        with torch.no_grad():
            ids = self.learner.generate_ids(self._params, encoded.ids, beam)
        joiner = " " if self.source_format == "words" else ""
        return [joiner.join(self.learner.decode_output(row, source, self._mapping))
                for row, source in zip(ids, symbols)]
