"""Small few-shot sequence-to-sequence problems the tests write: affix tasks (each task wraps a word in its
own prefix and suffix, as a language's inflection would), as a parallel-data TSV file."""

from __future__ import annotations

import random
from pathlib import Path

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
