"""Task-source helpers: fixed evaluation episodes of any task source, and the check that class splits are
disjoint."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnmeta.tasks.episode import Task
from attnmeta.tasks.sampler_inputs import _check_count, _short

__all__ = ["fixed_episodes", "check_disjoint_splits"]


def fixed_episodes(source: Any, n: int = 600, seed: int = 0) -> list[Task]:
    """``n`` evaluation tasks of any task source, determined by ``seed`` alone (same for every run/algorithm).

    Uses ``source.fixed_tasks(n, seed)`` when present, else ``source.sample(generator)`` with a fresh
    generator seeded with ``seed``. The source's own generator is not advanced.
    """
    count = _check_count("n", n, "ask for at least one episode")
    if hasattr(source, "fixed_tasks"):
        return source.fixed_tasks(count, seed)
    if not hasattr(source, "sample"):
        raise TypeError(
            f"source must be a task source with sample(generator) (e.g. EpisodeSampler, Sinusoid), "
            f"got {type(source).__name__}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    return [source.sample(generator) for _ in range(count)]


def check_disjoint_splits(**splits: Any) -> None:
    """Raise ``ValueError`` naming the shared classes if any two named class lists overlap.

    Example: ``check_disjoint_splits(train=train_ids, val=val_ids, test=test_ids)``. Lists may hold ints,
    strings or any hashable ids (tensors and arrays are converted with ``tolist``).
    """
    sets: dict[str, set[Hashable]] = {}
    for name, values in splits.items():
        if isinstance(values, (Tensor, np.ndarray)):
            values = values.tolist()
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise TypeError(f"split {name!r} must be a list of class ids, got {type(values).__name__}")
        sets[name] = set(values)
    names = list(sets)
    problems = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sets[a] & sets[b]
            if shared:
                problems.append(
                    f"{a!r} and {b!r} share {len(shared)} classes {_short(sorted(shared, key=str))}"
                )
    if problems:
        raise ValueError(
            "class splits must be disjoint, but "
            + "; ".join(problems)
            + "; remove each shared class from all but one split"
        )
