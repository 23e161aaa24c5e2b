"""Data hallucination for few-shot inflection (Anastasopoulos & Neubig, EMNLP 2019, "Pushing the limits of
low-resource morphological inflection"): new support pairs made from real ones by replacing the *stem*, the
longest run of characters shared by source and target, with random characters of the task's alphabet in
both. A model adapted on them learns to copy whatever stands in the stem, which 100 real pairs do not teach
(least of all for a script no training language uses), while the affixes around the stem stay real.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import torch

from attnmeta.tasks.seq2seq import Seq2SeqTask, Sequence_


def common_stem(source: Sequence_, target: Sequence_) -> tuple[int, int, int]:
    """The longest run of single-character symbols found in both ``source`` and ``target``:
    ``(start in source, start in target, length)`` (length 0 when they share no character)."""
    best = (0, 0, 0)
    previous = [0] * (len(target) + 1)
    for i, s in enumerate(source, 1):
        current = [0] * (len(target) + 1)
        if len(s) == 1:
            for j, t in enumerate(target, 1):
                if s == t:
                    current[j] = previous[j - 1] + 1
                    if current[j] > best[2]:
                        best = (i - current[j], j - current[j], current[j])
        previous = current
    return best


def task_alphabet(sources: Sequence[Sequence_], targets: Sequence[Sequence_]) -> list[str]:
    """The letters of a task's pairs (single-character alphabetic symbols; every single-character symbol
    when there is no letter), sorted so that a draw from them is repeatable."""
    chars = {s for seq in list(sources) + list(targets) for s in seq if len(s) == 1}
    letters = sorted(c for c in chars if c.isalpha())
    return letters or sorted(chars)


def hallucinate_pairs(sources: Sequence[Sequence_], targets: Sequence[Sequence_], count: int,
                      generator: torch.Generator, *, min_stem: int = 3
                      ) -> tuple[list[Sequence_], list[Sequence_]]:
    """``count`` new pairs (fewer when no pair shares a stem of ``min_stem`` characters): pair ``i``, drawn
    at random among those that do, with its stem replaced in source and target by as many characters drawn
    uniformly from ``task_alphabet``."""
    if count < 0 or min_stem < 1:
        raise ValueError(f"count must be >= 0 and min_stem >= 1, got {count} and {min_stem}")
    stems = [(i, common_stem(s, t)) for i, (s, t) in enumerate(zip(sources, targets))]
    usable = [(i, stem) for i, stem in stems if stem[2] >= min_stem]
    alphabet = task_alphabet(sources, targets)
    if not usable or count == 0 or not alphabet:
        return [], []
    picks = torch.randint(len(usable), (count,), generator=generator).tolist()
    new_sources: list[Sequence_] = []
    new_targets: list[Sequence_] = []
    for pick in picks:
        i, (at_source, at_target, length) = usable[pick]
        draws = torch.randint(len(alphabet), (length,), generator=generator).tolist()
        stem = tuple(alphabet[d] for d in draws)
        source, target = sources[i], targets[i]
        new_sources.append(tuple(source[:at_source]) + stem + tuple(source[at_source + length:]))
        new_targets.append(tuple(target[:at_target]) + stem + tuple(target[at_target + length:]))
    return new_sources, new_targets


def hallucinate_task(task: Seq2SeqTask, count: int, *, seed: int = 0, min_stem: int = 3) -> Seq2SeqTask:
    """``task`` with ``count`` hallucinated pairs appended to its support set (queries unchanged); the draw is
    seeded by ``seed`` and the support pairs, so the same task always gets the same pairs."""
    text = "\n".join("".join(s) + "\t" + "".join(t) for s, t in zip(task.support_source, task.support_target))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(text.encode("utf-8")))
    sources, targets = hallucinate_pairs(task.support_source, task.support_target, count, generator,
                                         min_stem=min_stem)
    return dataclasses.replace(task, support_source=list(task.support_source) + sources,
                               support_target=list(task.support_target) + targets)
