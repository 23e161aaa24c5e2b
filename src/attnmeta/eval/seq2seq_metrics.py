"""Metrics of the CoNLL-SIGMORPHON shared tasks: exact-match accuracy and mean Levenshtein distance.

Sequences are compared as strings (a tuple of symbols is joined first; a multi-character symbol then
counts one edit per character, as the official scorer sees the text). ``evalm_scores`` reproduces task 1 of
the official scorer ``evalm.py`` (``eval_form``): gold keyed by ``(lemma, tags)`` with the last form of a
repeated key, a missing guess scored as the empty string. Edit distances come from ``rapidfuzz``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from attnmeta.errors import UserError

__all__ = ["exact_match", "mean_levenshtein", "evalm_scores"]

Text = str | Sequence[str]


def _distance() -> Callable[[str, str], int]:
    """``rapidfuzz``'s Levenshtein distance (a maintained implementation), or a one-line install hint."""
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError:
        raise UserError("sequence-to-sequence metrics need rapidfuzz: "
                        "pip install 'attnmeta[seq2seq]'") from None
    return Levenshtein.distance


def _text(value: Text) -> str:
    return value if isinstance(value, str) else "".join(value)


def _checked(references: Sequence[Text], predictions: Sequence[Text]) -> list[tuple[str, str]]:
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions; give one "
                         "prediction per reference")
    if not references:
        raise ValueError("no references to score; give at least one (reference, prediction) pair")
    return [(_text(r), _text(p)) for r, p in zip(references, predictions)]


def exact_match(references: Sequence[Text], predictions: Sequence[Text]) -> float:
    """Percentage of predictions equal to their reference."""
    pairs = _checked(references, predictions)
    return 100.0 * sum(r == p for r, p in pairs) / len(pairs)


def mean_levenshtein(references: Sequence[Text], predictions: Sequence[Text]) -> float:
    """Mean (unit-cost) Levenshtein distance between the predictions and their references, in characters."""
    pairs = _checked(references, predictions)
    distance = _distance()
    return sum(distance(r, p) for r, p in pairs) / len(pairs)


def evalm_scores(gold: Sequence[tuple[str, str, str]],
                 guesses: Mapping[tuple[str, str], str]) -> tuple[float, float]:
    """``(accuracy %, mean distance)`` of ``evalm.py --task 1`` (its ``eval_form``).

    Args:
        gold: ``(lemma, form, tags)`` lines of the gold file; a repeated ``(lemma, tags)`` counts once, with
            its last form, as ``evalm.py`` reads it into nested dicts.
        guesses: ``(lemma, tags) -> predicted form``; a missing key is scored as the empty string.

    Returns the unrounded values (``evalm.py`` prints them rounded to 2 decimals).
    """
    keyed: dict[tuple[str, str], str] = {}
    for lemma, form, tags in gold:
        keyed[(lemma, tags)] = form
    if not keyed:
        raise ValueError("the gold set is empty; give at least one (lemma, form, tags) line")
    correct, dist, total, distance = 0.0, 0.0, 0.0, _distance()
    for key, form in keyed.items():
        guess = guesses.get(key, "")
        correct += form == guess
        dist += distance(form, guess)
        total += 1
    return correct / total * 100, dist / total
