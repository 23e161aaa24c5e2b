"""N-way K-shot episodes over labelled data (``EpisodeSampler``); ``fixed_episodes`` and
``check_disjoint_splits`` (defined in :mod:`attnmeta.tasks.splits`) are re-exported here.

Randomness: every draw comes from one ``torch.Generator`` (the sampler's own, or one passed to
``sample``), one call per task, so ``sample_batch(T, g)`` gives exactly the tasks of ``T`` successive
``sample(g)`` calls, and the tensor path and the ``Dataset`` path give identical tasks for the same
data, labels and seed.

Input checks and the Dataset item path live in :mod:`attnmeta.tasks.sampler_inputs`, the class pool and
its index tables in :mod:`attnmeta.tasks.class_pool`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from attnmeta.tasks.augment import ClassAugmentation
from attnmeta.tasks.class_pool import class_tables
from attnmeta.tasks.episode import Task, TaskBatch
from attnmeta.tasks.sampler_inputs import (
    _check_augmentation,
    _check_count,
    _check_data,
    _check_generator,
    _check_labels,
    _stack_items,
)
from attnmeta.tasks.splits import check_disjoint_splits, fixed_episodes

__all__ = ["EpisodeSampler", "fixed_episodes", "check_disjoint_splits"]

#: Up to this many ways, classes are drawn by sequential sampling without replacement (``N`` uniforms per
#: task); above it, by the ``N`` smallest of one uniform key per pool class.
_SEQUENTIAL_MAX_WAYS = 16


class EpisodeSampler:
    """N-way K-shot Q-query classification episodes from labelled data.

    A task draws ``ways`` distinct classes from the class pool (``classes``), then ``shots + queries``
    distinct examples of each (support and query never share an example). Task label ``i`` is the ``i``-th
    drawn class, so the class-to-label assignment is a fresh random permutation in every task;
    ``task.classes[i]`` is the (augmented) class id of label ``i``. Layout: ``support_y`` is
    ``[0]*K + [1]*K + ... + [N-1]*K`` and ``query_y`` likewise with ``Q``, unless ``shuffle_examples=True``
    randomly permutes the examples inside support and inside query of each task.

    Two data paths:

    - **tensor** ``[n, *input_shape]`` (fast path): per-class index tables are built once; a meta-batch is
      two index gathers (support, query), with no Python per example (unless ``transform`` is given).
      Indices are drawn on the CPU; the gather runs where ``data`` lives (e.g. a CUDA tensor).
    - **Dataset** (anything with ``__len__`` and ``__getitem__``; an item is ``x`` or ``(x, y, ...)``):
      the same indices, then one ``dataset[i]`` per example. For identical data, labels and seed the two paths
      give identical tasks. If an item carries its label ``y``, it is checked against ``labels[i]``.

    Class augmentation: ``rotations=(0, 90, 180, 270)`` (or any ``ClassAugmentation`` as ``augmentation``)
    makes ``V = len(rotations)`` classes out of each base class: augmented id ``base_label * V + v``.
    ``classes`` is then given in that augmented id space (default: every variant of every label).

    Args:
        data: ``[n, ...]`` tensor (or numpy array) or a ``Dataset`` of ``n`` items.
        labels: ``[n]`` integer class ids ``>= 0`` (any values, need not be contiguous).
        ways: classes per task (N). shots: support examples per class (K).
        queries: query examples per class (Q), ``>= 1``: every learner and evaluation measures the query set,
            so an episode without queries is rejected.
        classes: the class pool (a split), a sequence/tensor of (augmented) class ids; default all classes.
        rotations: degrees of the rotation classes, e.g. ``(0, 90, 180, 270)``.
        augmentation: a general ``ClassAugmentation`` (exclusive with ``rotations``).
        transform: per-example function ``x -> x`` applied after the class augmentation (a Python call per
            example). Random transforms draw from torch's global RNG, outside the sampler's seed.
        batch_transform: vectorised function ``[m, ...] -> [m, ...]`` applied last to all examples of a
            support (or query) set at once, e.g. ``lambda x: x.float().div_(255)`` to keep ``uint8`` data
            (4x less memory, cheaper gathers and rotations) and hand float inputs to the model.
        shuffle_examples: permute examples inside support and query of each task.
        precompute_augmentation: (tensor path) store every variant of every example once, so sampling is a
            plain gather; costs ``V`` times the memory of ``data`` (100 MB for uint8 Omniglot, 4 rotations).
        seed: seed of the sampler's own generator (used when ``sample`` gets no generator).

    Cost per task: one uniform per pool class only when ``ways > 16`` (else ``ways`` uniforms), plus one per
    example of each chosen class (random keys pick the examples), so very large classes cost proportionally.
    """

    def __init__(
        self,
        data: Any,
        labels: Any,
        ways: int,
        shots: int,
        queries: int,
        *,
        classes: Any = None,
        rotations: Sequence[int] | None = None,
        augmentation: ClassAugmentation | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        batch_transform: Callable[[Tensor], Tensor] | None = None,
        shuffle_examples: bool = False,
        precompute_augmentation: bool = False,
        seed: int = 0,
    ) -> None:
        self.ways = _check_count("ways", ways, "a task needs at least one class")
        self.shots = _check_count("shots", shots, "each class needs at least one support example")
        self.queries = _check_count("queries", queries, "episodes without query examples cannot be evaluated")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable (x -> x) or None, got {type(transform).__name__}")
        self.transform = transform
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError(
                f"batch_transform must be callable ([m, ...] -> [m, ...]) or None, got "
                f"{type(batch_transform).__name__}"
            )
        self.batch_transform = batch_transform
        self.shuffle_examples = bool(shuffle_examples)

        self.data, self.dataset, example_shape = _check_data(data)
        self.labels = _check_labels(labels, len(data))
        n = self.labels.numel()
        self._label_list = self.labels.tolist() if self.dataset is not None else []

        augmentation = _check_augmentation(rotations, augmentation, example_shape)
        self.augmentation = augmentation
        variants = len(augmentation) if augmentation is not None else 1
        self.num_variants = variants
        self._augmented: Tensor | None = None
        if precompute_augmentation:
            if self.data is None or augmentation is None:
                raise ValueError(
                    "precompute_augmentation needs tensor data and a class augmentation (rotations=...); "
                    "remove it for a Dataset or without augmentation"
                )
            # Every variant of every example, stacked variant-major: [V * n, ...] (V times the memory).
            device = self.data.device
            self._augmented = torch.cat(
                [
                    augmentation(self.data, torch.full((n,), v, dtype=torch.long, device=device))
                    for v in range(variants)
                ]
            )

        tables = class_tables(self.labels, classes, variants, self.ways, self.shots, self.queries)
        self.classes = tables.pool
        self._table = tables.table  # [R, width] example indices of the R base classes the pool uses
        self._valid = tables.valid  # [R, width] False on padding
        self._pool_row = tables.pool_row  # [C] row of each pool class
        self._pool_variant = tables.pool_variant  # [C]
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def num_classes(self) -> int:
        """Size of the class pool."""
        return int(self.classes.numel())

    def class_examples(self, pool_classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For pool class positions ``[...]``: their example indices ``[..., width]`` (padded), a mask
        ``[..., width]`` (False on padding) and their variants ``[...]`` (e.g. rotations), for samplers of
        other episode shapes built on this one (``attnmeta.data.multi_domain``); ``examples`` loads them."""
        rows = self._pool_row[pool_classes]
        return self._table[rows], self._valid[rows], self._pool_variant[pool_classes]

    def examples(self, index: Tensor, variant: Tensor) -> Tensor:
        """Examples ``[T, m, ...]`` (augmented, as in episodes) for data indices and variants ``[T, m]``."""
        return self._examples(index, variant)

    def __repr__(self) -> str:
        path = f"tensor {tuple(self.data.shape)}" if self.data is not None else type(self.dataset).__name__
        return (
            f"EpisodeSampler({self.ways}-way {self.shots}-shot {self.queries}-query, "
            f"{self.num_classes} classes, {path}, augmentation={self.augmentation!r})"
        )

    def _random_count(self) -> int:
        """Uniforms one task consumes: class choice, example keys, optional example permutations."""
        n = self.ways
        count = (n if n <= _SEQUENTIAL_MAX_WAYS else self.num_classes) + n * self._table.shape[1]
        return count + (n * (self.shots + self.queries) if self.shuffle_examples else 0)

    def _choose(self, uniforms: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Turn ``[T, _random_count()]`` float64 uniforms into pool positions ``[T, N]``, example indices
        ``[T, N, K+Q]`` and (with ``shuffle_examples``) support/query permutations ``[T, N*K]``, ``[T, N*Q]``.
        """
        tasks, n, classes = uniforms.shape[0], self.ways, self.num_classes
        if n <= _SEQUENTIAL_MAX_WAYS:
            # Sequential sampling without replacement: the j-th pick is uniform over the classes not yet
            # picked; u_j in [0, C - j) maps to the u_j-th unpicked class (ascending scan of earlier picks).
            remaining = classes - torch.arange(n)
            ranks = (uniforms[:, :n] * remaining).long().minimum(remaining - 1)
            chosen = ranks.clone()
            for j in range(1, n):
                earlier = chosen[:, :j].sort(dim=1).values
                pick = ranks[:, j]
                for i in range(j):
                    pick = pick + (earlier[:, i] <= pick)
                chosen[:, j] = pick
            used = n
        else:
            chosen = uniforms[:, :classes].topk(n, dim=1, largest=False).indices
            used = classes
        rows = self._pool_row[chosen]  # [T, N]
        width = self._table.shape[1]
        keys = uniforms[:, used : used + n * width].reshape(tasks, n, width)
        keys = keys.masked_fill(~self._valid[rows], 2.0)
        picks = keys.topk(self.shots + self.queries, dim=2, largest=False).indices
        indices = self._table[rows[:, :, None], picks]
        if not self.shuffle_examples:
            return chosen, indices, None, None
        used += n * width
        support_perm = uniforms[:, used : used + n * self.shots].argsort(dim=1)
        used += n * self.shots
        query_perm = uniforms[:, used : used + n * self.queries].argsort(dim=1)
        return chosen, indices, support_perm, query_perm

    def _examples(self, index: Tensor, variant: Tensor) -> Tensor:
        """Examples ``[T, m, ...]`` for data indices ``[T, m]`` and their class variants ``[T, m]``."""
        fast_gather = getattr(self.augmentation, "gather", None)
        if self._augmented is not None:
            assert self.data is not None  # rotations are precomputed only for tensor data
            device = self._augmented.device
            flat = (variant * self.data.shape[0] + index).reshape(-1).to(device)
            x = self._augmented.index_select(0, flat)
        elif self.data is not None and fast_gather is not None:
            device = self.data.device
            x = fast_gather(self.data, index.reshape(-1).to(device), variant.reshape(-1).to(device))
        else:
            x = self._gather(index.reshape(-1))
            if self.augmentation is not None:
                x = self.augmentation(x, variant.reshape(-1).to(x.device))
        if self.transform is not None:
            x = torch.stack([self.transform(example) for example in x])
        if self.batch_transform is not None:
            count = x.shape[0]
            x = self.batch_transform(x)
            if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] != count:
                raise TypeError(
                    f"batch_transform must return a tensor [m, ...] with m = {count} examples, got "
                    f"{type(x).__name__} {tuple(x.shape) if isinstance(x, Tensor) else ''}"
                )
        return x.reshape(*index.shape, *x.shape[1:])

    def _gather(self, flat: Tensor) -> Tensor:
        if self.data is not None:
            return self.data.index_select(0, flat.to(self.data.device))
        return _stack_items(self.dataset, flat, self._label_list, self.augmentation)

    def sample(self, generator: torch.Generator | None = None) -> Task:
        """One task; draws from ``generator`` (default: the sampler's own)."""
        return self.sample_batch(1, generator)[0]

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> TaskBatch:
        """``meta_batch`` tasks stacked: ``support_x`` ``[T, N*K, ...]``, ``query_x`` ``[T, N*Q, ...]``.

        Identical to ``TaskBatch.stack([self.sample(g) for _ in range(T)])`` for the same generator state.
        """
        tasks = _check_count("meta_batch", meta_batch, "sample at least one task")
        _check_generator(generator)
        g = self.generator if generator is None else generator
        count = self._random_count()
        # One generator call per task keeps batches equal to successive single samples.
        uniforms = torch.stack([torch.rand(count, generator=g, dtype=torch.float64) for _ in range(tasks)])
        chosen, indices, support_perm, query_perm = self._choose(uniforms)
        n, k, q = self.ways, self.shots, self.queries
        # Final layout by index arithmetic (no data copies): class-major, optionally permuted per task.
        support_index = indices[:, :, :k].reshape(tasks, n * k)
        query_index = indices[:, :, k:].reshape(tasks, n * q)
        label = torch.arange(n)
        support_y = label.repeat_interleave(k).expand(tasks, n * k)
        query_y = label.repeat_interleave(q).expand(tasks, n * q)
        if self.shuffle_examples:
            assert support_perm is not None and query_perm is not None  # drawn with shuffle_examples
            support_index, support_y = (t.gather(1, support_perm) for t in (support_index, support_y))
            query_index, query_y = (t.gather(1, query_perm) for t in (query_index, query_y))
        variant = self._pool_variant[chosen]  # [T, N]
        support_x = self._examples(support_index, variant.gather(1, support_y))
        query_x = self._examples(query_index, variant.gather(1, query_y))
        device = support_x.device
        return TaskBatch(
            support_x,
            support_y.contiguous().to(device),
            query_x,
            query_y.contiguous().to(device),
            self.classes[chosen],
            tuple({} for _ in range(tasks)),
        )

    def fixed_tasks(self, n: int = 600, seed: int = 0) -> list[Task]:
        """``n`` evaluation tasks that depend on ``seed`` (and the sampler's data/config) only.

        Every run and every algorithm gets the same episodes; the sampler's own generator is not touched.
        """
        count = _check_count("n", n, "ask for at least one episode")
        generator = torch.Generator().manual_seed(int(seed))
        return [self.sample(generator) for _ in range(count)]

    def state_dict(self) -> dict[str, Any]:
        """The generator state and the episode shape (checked on load), for exact resume."""
        return {
            "generator": self.generator.get_state(),
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "num_classes": self.num_classes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; the next tasks are then exactly those that followed the saved state."""
        if not isinstance(state, dict) or "generator" not in state:
            raise TypeError(
                "state must be a dict from EpisodeSampler.state_dict() (with a 'generator' entry)"
            )
        for key in ("ways", "shots", "queries", "num_classes"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"state was saved by a sampler with {key}={state[key]}, this one has "
                    f"{key}={getattr(self, key)}; load it into a sampler built the same way"
                )
        self.generator.set_state(state["generator"])
