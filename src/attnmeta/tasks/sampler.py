"""N-way K-shot episodes over labelled data (``EpisodeSampler``), fixed evaluation episodes, split checks.

Randomness: every draw comes from one ``torch.Generator`` (the sampler's own, or one passed to
``sample``), one call per task, so ``sample_batch(T, g)`` gives exactly the tasks of ``T`` successive
``sample(g)`` calls, and the tensor path and the ``Dataset`` path give identical tasks for the same
data, labels and seed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnmeta.errors import DataError
from attnmeta.tasks.augment import ClassAugmentation, Rotations
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["EpisodeSampler", "fixed_episodes", "check_disjoint_splits"]

#: Up to this many ways, classes are drawn by sequential sampling without replacement (``N`` uniforms per
#: task); above it, by the ``N`` smallest of one uniform key per pool class.
_SEQUENTIAL_MAX_WAYS = 16


def _check_count(name: str, value: Any, hint: str) -> int:
    """``value`` as a positive int, else a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}; {hint}")
    return value


def _check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "create one with torch.Generator().manual_seed(seed)"
        )
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"generator must be a CPU torch.Generator (sampling indices is CPU work), got one on "
            f"{generator.device}"
        )


def _as_int_tensor(values: Any, name: str, fix: str) -> Tensor:
    """1-D int64 tensor from a tensor, array or sequence of ints; clear errors otherwise."""
    if isinstance(values, Tensor):
        tensor = values.detach().cpu()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(values))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{name} must be integers (a tensor, array or list of ints), got "
                f"{type(values).__name__}; {fix}"
            ) from None
    if tensor.numel() == 0 and tensor.dim() == 1:
        return tensor.long()
    if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
        bad = ~torch.isfinite(tensor.reshape(-1))
        raise DataError(
            f"{name} hold {int(bad.sum())} NaN/inf values, the first at index {int(bad.nonzero()[0])}; "
            "every example needs an integer class id: drop the unlabelled examples"
        )
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{name} must be integers, got dtype {tensor.dtype}; {fix}")
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}; flatten it with .reshape(-1)")
    return tensor.long()


def _check_finite(values: Any, name: str) -> None:
    """Reject a floating tensor/array ``[n, ...]`` holding NaN or inf: one ``isfinite`` pass, in chunks of
    examples so the temporary mask stays small. Memory-mapped arrays are not read (that would load them)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fc" and not isinstance(values, np.memmap):
        values = torch.from_numpy(values)
    if not isinstance(values, Tensor) or not (values.is_floating_point() or values.is_complex()):
        return
    if values.dim() == 0 or values.numel() == 0:
        return
    step = max(1, (1 << 24) // max(1, values[0].numel()))
    for start in range(0, values.shape[0], step):
        if not bool(torch.isfinite(values[start : start + step]).all()):
            bad = ~torch.isfinite(values).reshape(values.shape[0], -1)
            first = int(bad.any(dim=1).nonzero()[0])
            raise DataError(
                f"{name} holds {int(bad.sum())} non-finite values (NaN or inf), the first in example "
                f"{first}; remove those examples or replace the values (e.g. torch.nan_to_num) before "
                "sampling"
            )


def _check_item_label(index: int, y: Any, expected: int) -> None:
    """A label carried by a dataset item must be an integer equal to ``labels[index]``."""
    if isinstance(y, Tensor) and y.numel() == 1:
        y = y.item()
    if isinstance(y, (float, np.floating)):
        if not np.isfinite(y) or not float(y).is_integer():
            raise DataError(
                f"dataset item {index} has label {y}, not an integer class id; give every item an "
                "integer label"
            )
        y = int(y)
    if isinstance(y, (int, np.integer)) and not isinstance(y, bool) and y != expected:
        raise ValueError(
            f"dataset item {index} has label {y} but labels[{index}] = {expected}; labels must list the "
            "dataset's labels in order"
        )


def _short(values: Iterable[Any], limit: int = 10) -> str:
    values = list(values)
    text = ", ".join(map(repr, values[:limit]))
    return f"[{text}{', ...' if len(values) > limit else ''}]"


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

        if isinstance(data, np.ndarray):
            data = torch.from_numpy(data)
        if isinstance(data, Tensor):
            if data.dim() < 1:
                raise ValueError("data must have a leading example axis [n, ...], got a 0-d tensor")
            _check_finite(data, "data")
            self.data: Tensor | None = data
            self.dataset: Any = None
            example_shape: tuple[int, ...] | None = tuple(data.shape[1:])
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            # Only arrays the dataset already holds as attributes (TensorDataset.tensors, a torchvision-style
            # .data) are checked here; lazily loaded items are checked when sampled (_gather).
            held = getattr(data, "__dict__", {})
            for i, tensor in enumerate(held.get("tensors", ())):
                _check_finite(tensor, f"dataset.tensors[{i}]")
            _check_finite(held.get("data"), "dataset.data")
            self.data, self.dataset, example_shape = None, data, None
        else:
            raise TypeError(
                f"data must be a tensor [n, ...] or a Dataset with __len__ and __getitem__, got "
                f"{type(data).__name__}; wrap an iterable data set in a map-style Dataset first"
            )
        n = len(data)
        if n == 0:
            raise ValueError("data is empty (0 examples); pass the examples to sample tasks from")
        fix = (
            "class ids must be integers >= 0; map names or float labels to ids, e.g. torch.unique(y, "
            "return_inverse=True)[1]"
        )
        labels = _as_int_tensor(labels, "labels", fix)
        if labels.numel() != n:
            raise ValueError(
                f"data has {n} examples but labels has {labels.numel()}; give one label per example, "
                "in the same order"
            )
        if (labels < 0).any():
            where = int(torch.nonzero(labels < 0)[0])
            raise ValueError(f"labels must be >= 0, found {int(labels[where])} at index {where}; {fix}")
        self.labels = labels
        self._label_list = labels.tolist() if self.dataset is not None else []

        if rotations is not None and augmentation is not None:
            raise ValueError(
                "pass either rotations or augmentation, not both (rotations=(0, 90, ...) is "
                "shorthand for augmentation=Rotations((0, 90, ...)))"
            )
        if rotations is not None:
            augmentation = Rotations(rotations)
        if augmentation is not None:
            if not isinstance(augmentation, ClassAugmentation):
                raise TypeError(
                    f"augmentation must implement ClassAugmentation (__len__ and __call__(x, variant)), "
                    f"got {type(augmentation).__name__}"
                )
            if len(augmentation) < 1:
                raise ValueError("augmentation must make at least one variant per class")
            check = getattr(augmentation, "check_example_shape", None)
            if check is not None and example_shape is not None:
                check(example_shape)
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
            self._augmented = torch.cat(
                [
                    augmentation(data, torch.full((n,), v, dtype=torch.long, device=data.device))
                    for v in range(variants)
                ]
            )

        base_ids, base_counts = torch.unique(labels, sorted=True, return_counts=True)
        if classes is None:
            pool = (base_ids[:, None] * variants + torch.arange(variants)).reshape(-1)
        else:
            pool = self._check_pool(classes, base_ids, variants)
        self.classes = pool
        if self.ways > pool.numel():
            raise ValueError(
                f"ways={self.ways} but the class pool (split) has only {pool.numel()} classes; lower "
                "ways or use a split with more classes"
            )

        # Per-class index tables over the base classes the pool uses (rows), padded to the largest class.
        pool_base = torch.div(pool, variants, rounding_mode="floor")
        rows_base, pool_row = torch.unique(pool_base, sorted=True, return_inverse=True)
        row_count = base_counts[torch.searchsorted(base_ids, rows_base)]
        need = self.shots + self.queries
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
                f"shots + queries = {self.shots} + {self.queries} = {need} examples per class are "
                f"needed, but {', '.join(details)} examples{more}; lower shots/queries or drop these "
                "classes from the split"
            )
        order = torch.argsort(labels, stable=True)
        starts = torch.searchsorted(labels[order], rows_base)
        width = int(row_count.max())
        offsets = torch.arange(width)
        self._valid = offsets < row_count[:, None]  # [R, width]
        self._table = order[(starts[:, None] + offsets).clamp(max=n - 1)]  # [R, width] example indices
        self._pool_row = pool_row  # [C] row of each pool class
        self._pool_variant = pool - pool_base * variants  # [C]
        self.generator = torch.Generator().manual_seed(int(seed))

    @staticmethod
    def _check_pool(classes: Any, base_ids: Tensor, variants: int) -> Tensor:
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

    @property
    def num_classes(self) -> int:
        """Size of the class pool."""
        return int(self.classes.numel())

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
        items = [self._fetch(i) for i in flat.tolist()]
        shapes = {tuple(item.shape) for item in items}
        if len(shapes) > 1:
            raise ValueError(
                f"dataset items must all have one shape to be stacked, got {sorted(shapes)}; give "
                "the dataset a transform that resizes them"
            )
        x = torch.stack(items)
        if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
            first = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).nonzero()[0])
            raise DataError(
                f"dataset item {flat[first].item()} holds non-finite values (NaN or inf); fix or remove it "
                "(e.g. torch.nan_to_num in the dataset's transform)"
            )
        check = getattr(self.augmentation, "check_example_shape", None)
        if check is not None:
            check(tuple(x.shape[1:]))
        return x

    def _fetch(self, index: int) -> Tensor:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            if len(item) == 0:
                raise ValueError(f"dataset item {index} is empty; an item must be x or (x, y)")
            if len(item) > 1:
                _check_item_label(index, item[1], self._label_list[index])
            item = item[0]
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if not isinstance(item, Tensor):
            raise TypeError(
                f"dataset item {index} is a {type(item).__name__}, not a tensor; give the dataset a "
                "transform that returns tensors (e.g. torchvision's ToTensor)"
            )
        return item

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
