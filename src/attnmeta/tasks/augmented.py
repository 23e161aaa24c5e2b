"""Training-time augmentation of any classification task source (``RandomShift``, ``RandomAffine``).

``Augmented(source, [RandomShift(2, seed=0)])`` is a task source like ``source`` whose sampled tasks have
every support and query example transformed. The transforms' random generators are part of its
``state_dict``, so a resumed run draws the same augmentations. Fixed (validation / test) tasks are never
augmented: ``fixed_tasks`` is the wrapped source's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from attnmeta.tasks.episode import Task, TaskBatch


class BatchTransform(Protocol):
    """A batch transform ``[m, ...] -> [m, ...]`` that draws from its own ``generator``."""

    generator: torch.Generator

    def __call__(self, x: Tensor) -> Tensor: ...


class Augmented:
    """Wrap a task source; apply ``transforms`` (each ``[m, ...] -> [m, ...]``, in order) to sampled tasks.

    Args:
        source: a task source (``sample``, ``sample_batch``, ``fixed_tasks``, ``state_dict``).
        transforms: batch transforms with a ``generator`` attribute (``torch.Generator``) for exact resume.
    """

    def __init__(self, source: Any, transforms: Sequence[BatchTransform]) -> None:
        self.source = source
        self.transforms = list(transforms)

    def __getattr__(self, name: str) -> Any:  # ways, shots, num_classes, ... of the wrapped source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def _apply(self, x: Tensor) -> Tensor:
        lead = x.shape[: x.dim() - 3]  # [T, n] or [n] before [C, H, W]
        flat = x.reshape(-1, *x.shape[-3:])
        for transform in self.transforms:
            flat = transform(flat)
        return flat.reshape(*lead, *x.shape[-3:])

    def sample(self, generator: torch.Generator | None = None) -> Task:
        t = self.source.sample(generator)
        return Task(self._apply(t.support_x), t.support_y, self._apply(t.query_x), t.query_y, t.classes,
                    t.info)

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> TaskBatch:
        b = self.source.sample_batch(meta_batch, generator)
        return TaskBatch(self._apply(b.support_x), b.support_y, self._apply(b.query_x), b.query_y, b.classes,
                         b.infos)

    def fixed_tasks(self, n: int = 600, seed: int = 0) -> list[Task]:
        return self.source.fixed_tasks(n, seed=seed)

    def state_dict(self) -> dict[str, Any]:
        return {"source": self.source.state_dict(),
                "transforms": [t.generator.get_state() for t in self.transforms]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or len(state.get("transforms", ())) != len(self.transforms):
            raise ValueError("augmentation state does not match this run's augmentation; resume with the "
                             "run's own config")
        self.source.load_state_dict(state["source"])
        for transform, generator_state in zip(self.transforms, state["transforms"]):
            transform.generator.set_state(generator_state)
