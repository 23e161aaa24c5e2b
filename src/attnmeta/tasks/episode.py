"""Episode values: one few-shot task (`Task`) and a stacked meta-batch of them (`TaskBatch`).

These two dataclasses are the contract between samplers (``attnmeta.tasks``) and learners
(``attnmeta.learners``). They hold plain tensors and plain metadata; nothing is attached to tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Task:
    """One episode.

    Attributes:
        support_x: support inputs, ``[n_support, *input_shape]`` (``N*K`` rows for classification).
        support_y: support targets: int64 labels ``[n_support]`` in ``0..N-1`` for classification,
            float ``[n_support, out_dim]`` for regression.
        query_x: query inputs, ``[n_query, *input_shape]``.
        query_y: query targets, same kind as ``support_y``.
        classes: int64 ``[N]``: ``classes[i]`` is the original (data set) class id of task label ``i``.
            Empty for regression tasks.
        info: free metadata (e.g. ``{"kind": "sinusoid", "amplitude": 2.1, "corrupted": False}``).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ways(self) -> int:
        """Number of classes (0 for regression tasks)."""
        return int(self.classes.numel())

    @property
    def is_classification(self) -> bool:
        return self.support_y.dtype == torch.long

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Task:
        """Move tensors to ``device``; ``dtype`` (if given) applies to floating inputs/targets only."""

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device)

        return Task(move(self.support_x), move(self.support_y), move(self.query_x), move(self.query_y),
                    self.classes, dict(self.info))

    def pin_memory(self) -> Task:
        """Copy into page-locked memory (called by ``DataLoader(pin_memory=True)``; needs CUDA)."""
        return Task(self.support_x.pin_memory(), self.support_y.pin_memory(), self.query_x.pin_memory(),
                    self.query_y.pin_memory(), self.classes, dict(self.info))


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch of ``T`` tasks with equal shapes, stacked along a leading task axis.

    Attributes:
        support_x: ``[T, n_support, *input_shape]``.
        support_y: ``[T, n_support]`` (labels) or ``[T, n_support, out_dim]`` (regression).
        query_x: ``[T, n_query, *input_shape]``.
        query_y: ``[T, n_query]`` or ``[T, n_query, out_dim]``.
        classes: ``[T, N]`` original class ids (``[T, 0]`` for regression).
        infos: one metadata dict per task.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor
    infos: tuple[dict[str, Any], ...] = ()

    def __len__(self) -> int:
        return int(self.support_x.shape[0])

    @property
    def ways(self) -> int:
        return int(self.classes.shape[1])

    @property
    def is_classification(self) -> bool:
        return self.support_y.dtype == torch.long

    def __getitem__(self, index: int) -> Task:
        info = self.infos[index] if self.infos else {}
        return Task(self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index],
                    self.classes[index], dict(info))

    def __iter__(self) -> Iterator[Task]:
        for i in range(len(self)):
            yield self[i]

    def split(self, parts: int) -> list[TaskBatch]:
        """Split into ``parts`` contiguous sub-batches (sizes differ by at most one)."""
        if parts < 1 or parts > len(self):
            raise ValueError(f"cannot split a meta-batch of {len(self)} tasks into {parts} parts")
        sizes = [len(self) // parts + (1 if i < len(self) % parts else 0) for i in range(parts)]
        out, start = [], 0
        for size in sizes:
            sl = slice(start, start + size)
            infos = self.infos[sl] if self.infos else ()
            out.append(TaskBatch(self.support_x[sl], self.support_y[sl], self.query_x[sl], self.query_y[sl],
                                 self.classes[sl], tuple(infos)))
            start += size
        return out

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskBatch:
        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device)

        return TaskBatch(move(self.support_x), move(self.support_y), move(self.query_x), move(self.query_y),
                         self.classes, self.infos)

    def pin_memory(self) -> TaskBatch:
        """Copy into page-locked memory (called by ``DataLoader(pin_memory=True)``; needs CUDA)."""
        return TaskBatch(self.support_x.pin_memory(), self.support_y.pin_memory(), self.query_x.pin_memory(),
                         self.query_y.pin_memory(), self.classes, self.infos)

    @staticmethod
    def stack(tasks: Sequence[Task]) -> TaskBatch:
        """Stack tasks of identical shapes into one meta-batch."""
        if len(tasks) == 0:
            raise ValueError("cannot stack an empty list of tasks; sample at least one task")
        shapes = {(t.support_x.shape, t.query_x.shape, t.support_y.shape, t.query_y.shape) for t in tasks}
        if len(shapes) != 1:
            raise ValueError(
                f"tasks in one meta-batch must have identical shapes, got {sorted(map(str, shapes))}; "
                "sample them with the same ways/shots/queries")
        return TaskBatch(
            torch.stack([t.support_x for t in tasks]),
            torch.stack([t.support_y for t in tasks]),
            torch.stack([t.query_x for t in tasks]),
            torch.stack([t.query_y for t in tasks]),
            torch.stack([t.classes for t in tasks]),
            tuple(dict(t.info) for t in tasks),
        )
