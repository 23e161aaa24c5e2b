"""The dynamic oracle of edit actions against an exhaustive search, and its agreement with the static one."""

from __future__ import annotations

import random
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from attnmeta.tasks.seq2seq_edits import COPY, DELETE, apply_actions, edit_actions
from attnmeta.tasks.seq2seq_expert import END, EditExpert

ALPHABET = "abc"
words = st.text(alphabet=ALPHABET, max_size=4)


def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        new = [i]
        for j, y in enumerate(b, start=1):
            new.append(min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (x != y)))
        row = new
    return row[-1]


def exhaustive_optimal(source: str, target: str, position: int,
                       written: str) -> tuple[set[str], tuple[int, int]]:
    """Every action (inserts of any letter of the alphabet included) whose best completion, found by trying
    them all, is cheapest: (Levenshtein distance of the output to the target, inserts + deletes)."""

    @cache
    def value(i: int, w: str, inserts_left: int) -> tuple[int, int]:
        return min(action_values(i, w, inserts_left).values())

    def action_values(i: int, w: str, inserts_left: int) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        if i < len(source):
            out[COPY] = value(i + 1, w + source[i], inserts_left)
            p, s = value(i + 1, w, inserts_left)
            out[DELETE] = (p, s + 1)
        else:
            out[END] = (levenshtein(w, target), 0)
        if inserts_left:
            for c in ALPHABET:
                p, s = value(i, w + c, inserts_left - 1)
                out[c] = (p, s + 1)
        return out

    values = action_values(position, written, len(target) + 1)
    best = min(values.values())
    return {a for a, v in values.items() if v == best}, best


def random_state(expert: EditExpert, source: str, seed: int) -> tuple[tuple, int, str]:
    """A state reached by a few random (often wrong) actions: (state, pointer, output written)."""
    rng = random.Random(seed)
    state, i, written = expert.start(), 0, ""
    for _ in range(rng.randint(0, 5)):
        moves = [COPY, DELETE] if i < len(source) else []
        action = rng.choice(moves + list(ALPHABET))
        state = expert.step(state, action)
        if action == COPY:
            written, i = written + source[i], i + 1
        elif action == DELETE:
            i += 1
        else:
            written += action
    return state, i, written


@settings(max_examples=100, deadline=None)
@given(words, words, st.integers(0, 1000))
def test_the_expert_matches_an_exhaustive_search_from_any_state(source: str, target: str, seed: int) -> None:
    expert = EditExpert(source, target)
    state, i, written = random_state(expert, source, seed)
    assert state[0] == i
    optimal, best = exhaustive_optimal(source, target, i, written)
    assert set(expert.optimal(state)) == optimal
    # the state's own cost is its best action's (an insert or delete counted in the second term)
    assert expert.cost(state)[0] == best[0]


@settings(max_examples=200, deadline=None)
@given(words, words, st.integers(0, 1000))
def test_following_the_expert_writes_the_target_with_the_fewest_edits(source: str, target: str,
                                                                       seed: int) -> None:
    """Any path of optimal actions writes the target exactly, with the static oracle's number of inserts and
    deletes; the static oracle's action is optimal at each of its own states."""
    expert = EditExpert(source, target)
    rng = random.Random(seed)
    state, actions = expert.start(), []
    while True:
        options = expert.optimal(state)
        action = rng.choice(options)
        if action == END:
            break
        actions.append(action)
        state = expert.step(state, action)
    assert "".join(apply_actions(tuple(source), actions)) == target
    static = edit_actions(tuple(source), tuple(target))
    assert sum(a != COPY for a in actions) == sum(a != COPY for a in static)
    state = expert.start()
    for action in static:
        assert action in expert.optimal(state)
        state = expert.step(state, action)
    assert expert.optimal(state) == [END]


def test_the_expert_by_hand() -> None:
    expert = EditExpert("lacht", "gelacht")
    assert expert.optimal(expert.start()) == ["g"]  # copying 'l' now would cost a character
    # after a wrong insert ('x' for 'g') the best is to go on as if it were right: one edit, never undone
    state = expert.step(expert.start(), "x")
    assert expert.cost(state) == (1, 1) and expert.optimal(state) == ["e"]  # "x" stands for the "g"
    # ambiguous: 'aa' -> 'a' keeps either 'a'; copy the first and delete the second, or the other way round
    expert = EditExpert("aa", "a")
    assert set(expert.optimal(expert.start())) == {COPY, DELETE}
    # token ids work as symbols: copy, delete and end given as ids
    expert = EditExpert([5, 6], [5, 7], copy=100, delete=101, end=2)
    state = expert.step(expert.start(), 100)
    assert set(expert.optimal(state)) == {101, 7}  # delete the 6 then insert the 7, or the other way round
