"""Edit actions: a target written as a left-to-right edit of its source, for hard monotonic attention.

A transducer with edit actions (Aharoni & Goldberg, ACL 2017; Makarov & Clematide, EMNLP 2018, the
strongest low-resource systems of the CoNLL-SIGMORPHON 2018 shared task) reads its source with a pointer
that only moves forward and writes its target with three kinds of action: ``COPY`` (write the symbol under
the pointer, move on), ``DELETE`` (move on without writing) and *insert* ``c`` (write ``c``, stay). Copying
needs no knowledge of the symbol copied, so a stem in a script never seen in training is written out
unchanged, and most of an inflected form is its lemma's characters.

The *edited* part of a source is its symbols that are not tags: ``split_tags(("<V>", "<PST>", "g", "o"))``
is ``(("g", "o"), ("<V>", "<PST>"))``; a tag is a symbol of three or more characters between ``<`` and
``>`` (the tags ``attnmeta.data.sigmorphon`` writes). ``edit_actions`` is the static oracle: an alignment
with the fewest inserts and deletes (copies cost nothing, there is no substitution), deletes before inserts
where the order is free; ``apply_actions`` inverts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from attnmeta.tasks.seq2seq import Sequence_

__all__ = ["COPY", "DELETE", "is_tag", "split_tags", "edit_actions", "apply_actions", "suffix_costs"]

# Not symbols any data set writes (they start with NUL), so an insert can never be mistaken for them.
COPY = "\x00copy"
DELETE = "\x00delete"


def is_tag(symbol: str) -> bool:
    """A tag symbol (``"<V>"``, ``"<PST>"``): at least three characters, between ``<`` and ``>``."""
    return len(symbol) >= 3 and symbol[0] == "<" and symbol[-1] == ">"


def split_tags(source: Sequence_) -> tuple[Sequence_, Sequence_]:
    """``(the symbols to edit, the tags)``, each in its order in ``source``."""
    return (tuple(s for s in source if not is_tag(s)), tuple(s for s in source if is_tag(s)))


def suffix_costs(source: Sequence[object], target: Sequence[object]) -> list[list[int]]:
    """``cost[i][j]``: the fewest inserts and deletes that turn ``source[i:]`` into ``target[j:]``
    (``[len(source) + 1][len(target) + 1]``)."""
    n, m = len(source), len(target)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n or j == m:
                cost[i][j] = (n - i) + (m - j)
            elif source[i] == target[j]:
                cost[i][j] = min(cost[i + 1][j + 1], 1 + min(cost[i + 1][j], cost[i][j + 1]))
            else:
                cost[i][j] = 1 + min(cost[i + 1][j], cost[i][j + 1])
    return cost


@lru_cache(maxsize=200_000)
def edit_actions(source: Sequence_, target: Sequence_) -> Sequence_:
    """The oracle's actions that turn ``source`` (the symbols to edit) into ``target``.

    Fewest inserts plus deletes (``len(source) + len(target) - 2 * LCS``); ties broken so that at one pointer
    position the deletes come first, then the inserts. ``apply_actions(source, edit_actions(source, target))``
    is ``target``; there are ``len(source)`` copies and deletes in all.
    """
    n, m = len(source), len(target)
    cost = suffix_costs(source, target)
    actions: list[str] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and source[i] == target[j] and cost[i][j] == cost[i + 1][j + 1]:
            actions.append(COPY)
            i, j = i + 1, j + 1
        elif i < n and cost[i][j] == 1 + cost[i + 1][j]:
            actions.append(DELETE)
            i += 1
        else:
            actions.append(target[j])
            j += 1
    return tuple(actions)


def apply_actions(source: Sequence[Any], actions: Sequence[Any], *, copy: Any = COPY,
                  delete: Any = DELETE) -> tuple[Any, ...]:
    """The target written by ``actions`` over ``source`` (symbols, or token ids with ``copy`` and ``delete``
    given as ids). A ``COPY`` or ``DELETE`` past the source's end does nothing (a decoder never emits one
    there, but a hand-made list may)."""
    out: list[Any] = []
    pointer = 0
    for action in actions:
        if action == copy:
            if pointer < len(source):
                out.append(source[pointer])
            pointer += 1
        elif action == delete:
            pointer += 1
        else:
            out.append(action)
    return tuple(out)
