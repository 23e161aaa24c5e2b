"""Input handling of :class:`~attnmeta.tasks.sampler.EpisodeSampler`: argument checks, the data / labels /
class-augmentation setup, and the Dataset item path (one ``dataset[i]`` per example, checked as it is read).

Every error names the argument and says how to fix it (see ``attnmeta.errors``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnmeta.errors import DataError
from attnmeta.tasks.augment import ClassAugmentation, Rotations


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


def _check_data(data: Any) -> tuple[Tensor | None, Any, tuple[int, ...] | None]:
    """``(tensor, dataset, example_shape)`` of ``data``: a tensor (or numpy array) ``[n, ...]`` or a Dataset
    with ``__len__`` and ``__getitem__`` (exactly one of ``tensor`` and ``dataset`` is not None)."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, Tensor):
        if data.dim() < 1:
            raise ValueError("data must have a leading example axis [n, ...], got a 0-d tensor")
        _check_finite(data, "data")
        return data, None, tuple(data.shape[1:])
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        # Only arrays the dataset already holds as attributes (TensorDataset.tensors, a torchvision-style
        # .data) are checked here; lazily loaded items are checked when sampled (_stack_items).
        held = getattr(data, "__dict__", {})
        for i, tensor in enumerate(held.get("tensors", ())):
            _check_finite(tensor, f"dataset.tensors[{i}]")
        _check_finite(held.get("data"), "dataset.data")
        return None, data, None
    raise TypeError(
        f"data must be a tensor [n, ...] or a Dataset with __len__ and __getitem__, got "
        f"{type(data).__name__}; wrap an iterable data set in a map-style Dataset first"
    )


def _check_labels(labels: Any, n: int) -> Tensor:
    """``labels`` as int64 ``[n]`` class ids ``>= 0`` (``n``: the number of examples, ``>= 1``)."""
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
    return labels


def _check_augmentation(
    rotations: Sequence[int] | None,
    augmentation: ClassAugmentation | None,
    example_shape: tuple[int, ...] | None,
) -> ClassAugmentation | None:
    """The class augmentation of ``rotations=`` / ``augmentation=`` (at most one), checked."""
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
    return augmentation


def _stack_items(dataset: Any, flat: Tensor, labels: list[int], augmentation: Any) -> Tensor:
    """Items ``dataset[i]`` for the indices ``flat`` stacked ``[m, ...]``, with their shapes, values and
    carried labels checked (``labels``: the sampler's labels as a list)."""
    items = [_fetch_item(dataset, i, labels) for i in flat.tolist()]
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
    check = getattr(augmentation, "check_example_shape", None)
    if check is not None:
        check(tuple(x.shape[1:]))
    return x


def _fetch_item(dataset: Any, index: int, labels: list[int]) -> Tensor:
    """The example tensor of ``dataset[index]`` (an item is ``x`` or ``(x, y, ...)``)."""
    item = dataset[index]
    if isinstance(item, (tuple, list)):
        if len(item) == 0:
            raise ValueError(f"dataset item {index} is empty; an item must be x or (x, y)")
        if len(item) > 1:
            _check_item_label(index, item[1], labels[index])
        item = item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, Tensor):
        raise TypeError(
            f"dataset item {index} is a {type(item).__name__}, not a tensor; give the dataset a "
            "transform that returns tensors (e.g. torchvision's ToTensor)"
        )
    return item
