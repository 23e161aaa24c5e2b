"""The dynamic oracle of edit actions: the best next actions from any state, for imitation learning.

The static oracle (``attnmeta.tasks.seq2seq_edits.edit_actions``) gives one action sequence per pair, and a
transducer trained on it (teacher forcing) only ever sees states on that path. An *expert policy* (Makarov &
Clematide, EMNLP 2018) answers for any state, including those the model reaches by its own mistakes: which
actions still lead to the best output. A state is the pointer's position ``i`` in the source and the output
``w`` written so far. Its cost is, first, the fewest character edits (Levenshtein distance) between the
best output still reachable and the target, ``min_j lev(w, target[:j])`` (what follows ``w`` can be
anything: ``target[j:]`` is always reachable), then the fewest inserts and deletes that complete it from
``source[i:]`` (``suffix_costs``). ``EditExpert.optimal`` returns every action whose cost (plus one for an
insert or a delete) is the state's: several where the alignment is ambiguous.

A state keeps ``w`` as its row of Levenshtein distances ``lev(w, target[:j])``, ``j = 0..len(target)``, which
an appended symbol updates in ``O(len(target))``. Symbols may be anything hashable (characters, token ids);
``copy``, ``delete`` and ``end`` name the three non-insert actions.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from attnmeta.tasks.seq2seq_edits import COPY, DELETE, suffix_costs

__all__ = ["EditExpert", "END"]

#: The action that ends the output (only once the pointer has read the whole source).
END = "\x00end"

State = tuple[int, tuple[int, ...]]


class EditExpert:
    """The expert policy for turning ``source`` into ``target`` with ``COPY``/``DELETE``/insert actions."""

    def __init__(self, source: Sequence[Hashable], target: Sequence[Hashable], *, copy: Hashable = COPY,
                 delete: Hashable = DELETE, end: Hashable = END) -> None:
        self.source, self.target = tuple(source), tuple(target)
        self.copy, self.delete, self.end = copy, delete, end
        self.future = suffix_costs(self.source, self.target)

    def start(self) -> State:
        return 0, tuple(range(len(self.target) + 1))

    def _written(self, row: tuple[int, ...], symbol: Hashable) -> tuple[int, ...]:
        """The Levenshtein row after ``symbol`` is appended to the output."""
        new = [row[0] + 1]
        for j, wanted in enumerate(self.target, start=1):
            new.append(min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (wanted != symbol)))
        return tuple(new)

    def step(self, state: State, action: Hashable) -> State:
        """The state after ``action`` (``end`` leaves it unchanged)."""
        i, row = state
        if action == self.copy:
            return i + 1, self._written(row, self.source[i])
        if action == self.delete:
            return i + 1, row
        if action == self.end:
            return state
        return i, self._written(row, action)

    def cost(self, state: State) -> tuple[int, int]:
        """(edits between the best reachable output and the target, inserts + deletes to reach it)."""
        i, row = state
        best = min(row)
        return best, min(self.future[i][j] for j, d in enumerate(row) if d == best)

    def optimal(self, state: State) -> list[Hashable]:
        """Every action that keeps the state's cost (an insert or a delete spends one of its edits); only
        ``end`` ends the output, and only once the pointer is at the source's end."""
        i, row = state
        best = min(row)
        candidates: dict[Hashable, tuple[int, int]] = {}
        if i < len(self.source):
            candidates[self.copy] = self.cost(self.step(state, self.copy))
            p, s = self.cost(self.step(state, self.delete))
            candidates[self.delete] = (p, s + 1)
        else:
            candidates[self.end] = (row[-1], 0)
        # only a symbol that extends a closest target prefix can keep the distance (any other adds one)
        for symbol in {self.target[j] for j, d in enumerate(row[:-1]) if d == best}:
            p, s = self.cost(self.step(state, symbol))
            candidates[symbol] = (p, s + 1)
        lowest = min(candidates.values())
        return [action for action, c in candidates.items() if c == lowest]
