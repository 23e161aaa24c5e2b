"""Few-shot sequence-to-sequence learners (MAML, Reptile, multilingual transfer, scratch) on a character
Transformer; see ``attnmeta.learners.seq2seq.registry``."""

from attnmeta.learners.seq2seq.base import EncodedTask, Seq2SeqLearner
from attnmeta.learners.seq2seq.registry import SEQ2SEQ_LEARNERS, build_seq2seq, check_seq2seq_options

__all__ = ["EncodedTask", "Seq2SeqLearner", "SEQ2SEQ_LEARNERS", "build_seq2seq", "check_seq2seq_options"]
