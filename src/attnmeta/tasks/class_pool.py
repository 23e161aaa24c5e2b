"""The class pool (split) of :class:`~attnmeta.tasks.sampler.EpisodeSampler` and its per-class index tables.

Built once per sampler: the pool is checked against the labels, and each base class the pool uses gets a
row of example indices (padded to the largest class), so drawing the examples of a task is one gather.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from attnmeta.tasks.sampler_inputs import _as_int_tensor, _short


class ClassTables(NamedTuple):
    """Index tables over the ``R`` base classes the pool of ``C`` (augmented) classes uses."""

    pool: Tensor  #: ``[C]`` the (augmented) class ids of the pool
    table: Tensor  #: ``[R, width]`` example indices of each row's class, padded
    valid: Tensor  #: ``[R, width]`` bool, False on padding
    pool_row: Tensor  #: ``[C]`` row of each pool class
    pool_variant: Tensor  #: ``[C]`` augmentation variant of each pool class


def check_pool(classes: Any, base_ids: Tensor, variants: int) -> Tensor:
    """``classes`` as int64 ids, each listed once, each with examples (``base_ids``: sorted label values)."""
    space = f"augmented ids label * {variants} + variant" if variants > 1 else "label values"
    fix = f"classes are integer class ids ({space}); map class names to ids first"
    pool = _as_int_tensor(classes, "classes", fix)
    if pool.numel() == 0:
        raise ValueError(
            "the class pool (classes) is empty; pass the class ids of the split, or None for all classes"
        )
    unique, counts = torch.unique(pool, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"classes lists some ids more than once: {_short(unique[counts > 1].tolist())}; list "
            "each class of the split once"
        )
    base = torch.div(pool, variants, rounding_mode="floor")
    where = torch.searchsorted(base_ids, base).clamp(max=base_ids.numel() - 1)
    unknown = pool[(pool < 0) | (base_ids[where] != base)]
    if unknown.numel() > 0:
        raise ValueError(
            f"classes {_short(unknown.tolist())} have no examples in labels ({space}); check "
            "the split against the data"
        )
    return pool


def class_tables(labels: Tensor, classes: Any, variants: int, ways: int, shots: int, queries: int
                 ) -> ClassTables:
    """The checked pool (default: every variant of every label) and its index tables; every pool class
    needs ``shots + queries`` examples and the pool at least ``ways`` classes."""
    n = labels.numel()
    base_ids, base_counts = torch.unique(labels, sorted=True, return_counts=True)
    if classes is None:
        pool = (base_ids[:, None] * variants + torch.arange(variants)).reshape(-1)
    else:
        pool = check_pool(classes, base_ids, variants)
    if ways > pool.numel():
        raise ValueError(
            f"ways={ways} but the class pool (split) has only {pool.numel()} classes; lower "
            "ways or use a split with more classes"
        )

    # Per-class index tables over the base classes the pool uses (rows), padded to the largest class.
    pool_base = torch.div(pool, variants, rounding_mode="floor")
    rows_base, pool_row = torch.unique(pool_base, sorted=True, return_inverse=True)
    row_count = base_counts[torch.searchsorted(base_ids, rows_base)]
    need = shots + queries
    too_small = pool[row_count[pool_row] < need]
    if too_small.numel() > 0:
        details = [
            f"class {int(c)} (label {int(c) // variants}) has {int(row_count[pool_row[pool == c]][0])}"
            if variants > 1
            else f"class {int(c)} has {int(row_count[pool_row[pool == c]][0])}"
            for c in too_small[:5]
        ]
        more = f" and {too_small.numel() - 5} more classes" if too_small.numel() > 5 else ""
        raise ValueError(
            f"shots + queries = {shots} + {queries} = {need} examples per class are "
            f"needed, but {', '.join(details)} examples{more}; lower shots/queries or drop these "
            "classes from the split"
        )
    order = torch.argsort(labels, stable=True)
    starts = torch.searchsorted(labels[order], rows_base)
    width = int(row_count.max())
    offsets = torch.arange(width)
    valid = offsets < row_count[:, None]  # [R, width]
    table = order[(starts[:, None] + offsets).clamp(max=n - 1)]  # [R, width] example indices
    return ClassTables(pool, table, valid, pool_row, pool - pool_base * variants)
