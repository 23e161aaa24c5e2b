"""``DataLoader`` path for task sources: an ``IterableDataset`` of tasks or meta-batches, seeded per item.

Item ``i`` of epoch ``e`` is drawn with its own generator seeded by ``derive_seed(seed, e, i)``,
and worker ``w`` of ``W`` produces the items ``i = w, w + W, w + 2W, ...``. So every worker has a
distinct, deterministic stream, no two workers produce the same item, and (since ``DataLoader`` reads
workers round-robin) the sequence of items is the same for any number of workers, even ``num_workers=0``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Any, Literal, overload

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["TaskStream", "collate_tasks", "derive_seed", "task_loader"]

_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> int:
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from ``seed`` and integer ``keys`` (SplitMix64); other keys, unrelated seeds."""
    state = _splitmix64(int(seed) & _MASK64)
    for key in keys:
        state = _splitmix64(state ^ (int(key) & _MASK64))
    return state >> 1


@overload
def _non_negative(name: str, value: Any, allow_none: Literal[False] = False) -> int: ...
@overload
def _non_negative(name: str, value: Any, allow_none: bool) -> int | None: ...
def _non_negative(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class TaskStream(IterableDataset):
    """Tasks (``meta_batch=None``) or ``TaskBatch`` meta-batches of any task source, for ``DataLoader``.

    Args:
        source: a task source (``sample(generator)``, ``sample_batch(T, generator)``), e.g. EpisodeSampler.
        meta_batch: tasks per item (items are ``TaskBatch``), or ``None`` for single ``Task`` items.
        num_items: items per epoch, ``None`` for an endless stream.
        seed: base seed; item ``i`` of epoch ``e`` uses ``derive_seed(seed, e, i)``.
        rank, world_size: for data-parallel training, rank ``r`` of ``world_size`` takes the items ``i`` with
            ``i % world_size == r`` (disjoint across ranks).
    """

    def __init__(
        self,
        source: Any,
        meta_batch: int | None = None,
        *,
        num_items: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not hasattr(source, "sample") or not hasattr(source, "sample_batch"):
            raise TypeError(
                f"source must be a task source with sample() and sample_batch() (e.g. EpisodeSampler, "
                f"Sinusoid), got {type(source).__name__}"
            )
        if meta_batch is not None and _non_negative("meta_batch", meta_batch) == 0:
            raise ValueError("meta_batch must be >= 1 (or None for single tasks), got 0")
        world = _non_negative("world_size", world_size)
        if world == 0:
            raise ValueError("world_size must be >= 1, got 0")
        rank = _non_negative("rank", rank)
        if rank >= world:
            raise ValueError(f"rank must be in 0..world_size-1 = 0..{world - 1}, got {rank}")
        self.source, self.meta_batch = source, meta_batch
        self.num_items = _non_negative("num_items", num_items, allow_none=True)
        self.seed, self.rank, self.world_size = int(seed), rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the items of ``epoch`` next (call before each epoch; without ``persistent_workers``)."""
        self.epoch = _non_negative("epoch", epoch)

    def item(self, index: int) -> Task | TaskBatch:
        """Item ``index`` of the current epoch (what a worker yields for it)."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index))
        if self.meta_batch is None:
            return self.source.sample(generator)
        return self.source.sample_batch(self.meta_batch, generator)

    def __len__(self) -> int:
        if self.num_items is None:
            raise TypeError("an endless TaskStream (num_items=None) has no length")
        return len(range(self.rank, self.num_items, self.world_size))

    def __iter__(self) -> Iterator[Task | TaskBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        step = workers * self.world_size
        index = self.rank + worker * self.world_size
        while self.num_items is None or index < self.num_items:
            yield self.item(index)
            index += step


def collate_tasks(tasks: Sequence[Task]) -> TaskBatch:
    """``collate_fn`` for ``DataLoader(TaskStream(source), batch_size=T)``: stacks ``T`` tasks."""
    return TaskBatch.stack(list(tasks))


def task_loader(
    source: Any,
    meta_batch: int,
    *,
    num_batches: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    **loader_kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` of ``TaskBatch`` meta-batches, each sampled whole inside a worker.

    The batches are the same for every ``num_workers``. Extra keyword arguments go to ``DataLoader``
    (e.g. ``pin_memory``, ``prefetch_factor``, ``persistent_workers``).
    """
    stream = TaskStream(
        source, meta_batch, num_items=num_batches, seed=seed, rank=rank, world_size=world_size
    )
    for key in ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn"):
        if key in loader_kwargs:
            raise ValueError(
                f"task_loader sets {key} itself (meta-batches are formed by the stream); remove it"
            )
    return DataLoader(stream, batch_size=None, num_workers=num_workers, **loader_kwargs)
