"""Few-shot sequence-to-sequence learners by name, built from a config's ``algo_options``.

``maml`` (``Seq2SeqMAML``: the inner loop on the support pairs, first order by default), ``reptile``
(``Seq2SeqReptile``), ``context`` (``Seq2SeqTaskContext``: a task vector read from the support pairs),
``transfer`` (``MultilingualTransfer``: pooled pre-training, then fine-tuning) and
``scratch`` (``Scratch``: fine-tuning from the initialisation, nothing meta-trained).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from attnmeta.learners.seq2seq.base import Seq2SeqLearner
from attnmeta.tasks.seq2seq import Vocabulary


@dataclass(frozen=True)
class Seq2SeqSpec:
    module: str
    cls: str
    description: str

    def load(self) -> type[Seq2SeqLearner]:
        return getattr(importlib.import_module(f"attnmeta.learners.seq2seq.{self.module}"), self.cls)


SEQ2SEQ_LEARNERS: dict[str, Seq2SeqSpec] = {
    "maml": Seq2SeqSpec("maml", "Seq2SeqMAML", "MAML through the one inner loop (first order by default)"),
    "reptile": Seq2SeqSpec("maml", "Seq2SeqReptile", "Reptile: Adam inner loop, towards adapted weights"),
    "context": Seq2SeqSpec("context", "Seq2SeqTaskContext",
                           "a task vector read from the support pairs by set attention, then fine-tuning"),
    "transfer": Seq2SeqSpec("transfer", "MultilingualTransfer",
                            "pooled multilingual pre-training, then fine-tuning (baseline)"),
    "scratch": Seq2SeqSpec("transfer", "Scratch", "the network trained on the support pairs only (baseline)"),
}


def valid_seq2seq_options(algo: str) -> list[str]:
    """The ``algo_options`` keys ``algo`` takes (its own and the model's)."""
    cls = _spec(algo).load()
    names = set(inspect.signature(cls.__init__).parameters) | set(
        inspect.signature(Seq2SeqLearner.__init__).parameters)
    names -= {"self", "vocabulary", "model_options"}
    return sorted(names)


def check_seq2seq_options(algo: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming an option ``algo`` does not take (with the valid ones)."""
    valid = valid_seq2seq_options(algo)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"config key 'algo_options': {algo} takes no option {unknown[0]!r}; valid: {', '.join(valid)}")


def build_seq2seq(algo: str, vocabulary: Vocabulary, options: dict[str, Any]) -> Seq2SeqLearner:
    """``algo`` over ``vocabulary``; weights initialised from the global torch RNG."""
    check_seq2seq_options(algo, options)
    return _spec(algo).load()(vocabulary, **options)


def _spec(algo: str) -> Seq2SeqSpec:
    if algo not in SEQ2SEQ_LEARNERS:
        raise ValueError(f"unknown sequence learner {algo!r}; choose one of: {', '.join(SEQ2SEQ_LEARNERS)}")
    return SEQ2SEQ_LEARNERS[algo]
