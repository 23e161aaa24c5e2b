"""Small few-shot sequence-to-sequence problems the tests write: affix tasks (each task wraps a word in its
own prefix and suffix, as a language's inflection would), as a parallel-data TSV file."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from attnmeta.nn.seq2seq import Seq2SeqTransformer
from attnmeta.nn.seq2seq_decoding import _IncrementalDecoder

ALPHABET = "abcdefgh"
AFFIXES = "xyzqrstuvw"
#: Model options small enough for tests.
TINY = {"dim": 32, "heads": 2, "layers": 1, "ff_dim": 64, "dropout": 0.0, "max_length": 16,
        "label_smoothing": 0.0}


def affix_rule(task: int) -> tuple[str, str]:
    """Task ``task``'s (prefix, suffix)."""
    rng = random.Random(task)
    return rng.choice(AFFIXES), "".join(rng.choice(AFFIXES) for _ in range(2))


def affix_pairs(task: int, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (word, prefix + word + suffix) pairs of task ``task``; words of 3-5 letters."""
    rng = random.Random(1000 * seed + task)
    prefix, suffix = affix_rule(task)
    words = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 5))) for _ in range(n)]
    return [(w, prefix + w + suffix) for w in words]


def write_affix_tsv(path: Path, tasks: int = 12, pairs: int = 40) -> Path:
    """``source<TAB>target<TAB>task`` lines of ``tasks`` affix tasks (named ``t0`` ...)."""
    lines = [f"{s}\t{t}\tt{k}\n" for k in range(tasks) for s, t in affix_pairs(k, pairs)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def check_incremental_decoding(model: Seq2SeqTransformer, src: torch.Tensor, target_in: torch.Tensor,
                               prefix: int = 3) -> torch.Tensor:
    """Assert that the decoders' cached one-token-at-a-time path gives teacher forcing's next-token
    log-probabilities, also after ``reorder`` (beam search: the 6 hypotheses of one source take over each
    other's cached prefixes of ``prefix`` tokens); returns teacher forcing's outputs ``[B, T, V]``."""
    memory, mask = model.encode(src)
    full = model.decode(memory, mask, target_in, src)
    with torch.no_grad():
        incremental = _IncrementalDecoder(model, memory, mask, src)
        for t in range(target_in.shape[1]):
            torch.testing.assert_close(incremental.step(target_in[:, t]), torch.log_softmax(full[:, t], -1),
                                       rtol=0, atol=1e-10)
        rows = torch.tensor([3, 0, 0, 5, 1, 2])
        one = (memory[:1].expand(6, -1, -1), mask[:1].expand(6, -1, -1), src[:1].expand(6, -1))
        incremental = _IncrementalDecoder(model, *one)
        for t in range(prefix):
            incremental.step(target_in[:6, t])
        incremental.reorder(rows)
        swapped = torch.cat([target_in[rows, :prefix], target_in[:6, prefix:prefix + 1]], 1)
        expected = torch.log_softmax(model.decode(one[0], one[1], swapped, one[2])[:, -1], -1)
        torch.testing.assert_close(incremental.step(target_in[:6, prefix]), expected, rtol=0, atol=1e-10)
    return full
