"""Quick, Draw! (Jongejan et al. 2016) as a few-shot benchmark: 345 classes of 28x28 grayscale drawings.

Data: Google's *numpy bitmaps*, one ``<class name>.npy`` per class in ``root`` (e.g. ``root/cat.npy``,
``root/The Eiffel Tower.npy``), each a uint8 array ``[N, 784]`` of 28x28 drawings (row major, white strokes
on black; N is about 100,000-150,000), from ``QUICKDRAW_URL`` (``gs://quickdraw_dataset/full/numpy_bitmap``).
No checksums are published for these files: their header (format, dtype, shape) is checked, nothing else.

Class split: Meta-Dataset's (Triantafillou et al. 2020), 241 train / 52 val / 52 test classes, packaged as
``splits/quickdraw.json`` (``quickdraw_split``); ``split_file=`` takes another JSON file of the same form
(``{"train": [...], "val": [...], "test": [...]}``, names without ``.npy``). Only the listed classes are read.

Safety and memory: files are opened with ``numpy.load(..., mmap_mode="r", allow_pickle=False)`` after their
header has been read and checked (an object or pickled array is refused, code in a file is never run); only
the first ``max_per_class`` drawings of each class (default 1000, file order) are copied into memory, so
memory stays bounded (345 x 1000 drawings: 270 MB) however large the files are. Nothing is cached: reading
the first rows of a memory-mapped file is as fast as a cache.

``download=True`` is refused: the 345 files are about 37 GB and have no checksums; the error says how to
fetch them (``gsutil``, or one URL per class).

Model inputs are ``images / 255`` (strokes 1, background 0) in ``[1, s, s]`` (``image_size`` 28; another
size resizes with antialiased bilinear interpolation). A predictor inverts new images (``invert``): draw dark
strokes on a light background, as on paper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from attnmeta.data.benchmarks import Benchmark, uint8_to_unit
from attnmeta.data.fixed_split import (
    SPLIT_DIR,
    SPLITS,
    check_episode_shapes,
    check_split_names,
    read_split_object,
)
from attnmeta.data.safe_io import MissingDataError
from attnmeta.errors import ENVIRONMENT_ERRNOS, DataError, UserError
from attnmeta.tasks.sampler import EpisodeSampler

__all__ = ["QuickDraw", "QUICKDRAW_URL", "QUICKDRAW_SPLIT_FILE", "BITMAP_PIXELS", "quickdraw_split",
           "read_header", "read_bitmaps", "quickdraw_benchmark"]

#: Folder of the official numpy bitmaps (``<class name>.npy``, names URL-quoted).
QUICKDRAW_URL = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/"
#: The packaged Meta-Dataset split.
QUICKDRAW_SPLIT_FILE = SPLIT_DIR / "quickdraw.json"
#: Pixels of one drawing (28 x 28).
BITMAP_PIXELS = 28 * 28
DEFAULT_MAX_PER_CLASS = 1000
_GSUTIL = "gsutil -m cp 'gs://quickdraw_dataset/full/numpy_bitmap/*.npy' ROOT"
_GET = (f"get the numpy bitmaps from {QUICKDRAW_URL}<name>.npy (all 345: {_GSUTIL}, about 37 GB) into "
        "--root (root=)")
_REFETCH = f"delete it and download it again from {QUICKDRAW_URL}"
_SPLIT_FIX = ('give {"train": [...], "val": [...], "test": [...]} of class names (the .npy file names '
              "without .npy)")


def class_url(name: str) -> str:
    """The official address of one class file."""
    return QUICKDRAW_URL + quote(f"{name}.npy")


def quickdraw_split(split_file: str | Path | None = None) -> dict[str, list[str]]:
    """Class names per split: Meta-Dataset's (the packaged file), or ``split_file``'s."""
    path = Path(split_file) if split_file is not None else QUICKDRAW_SPLIT_FILE
    parts = read_split_object(path, _SPLIT_FIX)
    return check_split_names(parts, f"split file {str(path)!r}", _SPLIT_FIX,
                             lambda name: bool(name.strip()) and "/" not in name and "\\" not in name)


def read_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, read from its header only (nothing is unpickled or run).

    A file that is not ``.npy`` raises ``DataError``; an object dtype (a pickled array) is refused."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as handle:
            version = fmt.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(handle)
            else:
                raise DataError(f"{path} is a .npy file of format version {version}, not 1.0 or 2.0 (not an "
                                f"official Quick, Draw! numpy bitmap); {_REFETCH}")
    except DataError:
        raise
    except OSError as error:
        if error.errno in ENVIRONMENT_ERRNOS:
            raise
        raise DataError(f"{path} is not a readable .npy file; {_REFETCH}") from None
    except (ValueError, SyntaxError, EOFError):
        raise DataError(f"{path} is not a .npy file (no valid numpy header; truncated or another format); "
                        f"{_REFETCH}") from None
    if dtype.hasobject:
        raise DataError(f"{path} holds a pickled object array ({dtype}), which is refused: numpy bitmaps are "
                        f"uint8 [N, {BITMAP_PIXELS}]; {_REFETCH}")
    if dtype != np.uint8 or len(shape) != 2 or shape[1] != BITMAP_PIXELS or shape[0] < 1:
        raise DataError(f"{path} holds a {dtype} array of shape {list(shape)}, not uint8 [N, "
                        f"{BITMAP_PIXELS}] with N >= 1 (28x28 drawings); {_REFETCH}")
    return tuple(shape), dtype


def read_bitmaps(path: Path, limit: int) -> np.ndarray:
    """The first ``limit`` drawings of a class file as uint8 ``[k, 28, 28]`` (memory-mapped, then copied)."""
    read_header(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        rows = np.array(array[:limit], dtype=np.uint8)
    except OSError as error:
        if error.errno in ENVIRONMENT_ERRNOS:
            raise
        raise DataError(f"{path} is not a readable .npy file; {_REFETCH}") from None
    except ValueError:  # mmap length is greater than file size, ...
        raise DataError(f"{path} is truncated (shorter than its header's shape); {_REFETCH}") from None
    return rows.reshape(-1, 28, 28)


class QuickDraw:
    """The first ``max_per_class`` drawings of each class of ``classes`` in ``root``.

    Headers are read (and checked) when the object is made; the pixels only by ``load`` (``images``).

    Attributes:
        classes: class names, sorted. counts: drawings used per class (``min(N, max_per_class)``).
        images (after ``load``): uint8 ``[n, 1, image_size, image_size]``. labels: int64 ``[n]``.
    """

    def __init__(self, root: str | Path, classes: list[str], *, max_per_class: int = DEFAULT_MAX_PER_CLASS,
                 image_size: int = 28) -> None:
        for key, value, low in (("max_per_class", max_per_class, 1), ("image_size", image_size, 8)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"quickdraw {key} must be an int >= {low}, got {value!r}")
        self.root, self.max_per_class, self.image_size = Path(root), max_per_class, image_size
        if not self.root.is_dir():
            state = "is not a folder" if self.root.exists() else "does not exist"
            raise MissingDataError(f"Quick, Draw! folder {str(self.root)!r} {state}; {_GET}")
        self.classes = sorted(classes)
        missing = [name for name in self.classes if not (self.root / f"{name}.npy").is_file()]
        if missing:
            raise MissingDataError(
                f"{len(missing)} of the {len(self.classes)} Quick, Draw! class files of the split are "
                f"missing in {self.root} (e.g. {missing[0]!r}.npy, from {class_url(missing[0])}); {_GET}")
        self.counts = {name: min(read_header(self.path(name))[0][0], max_per_class) for name in self.classes}

    def path(self, name: str) -> Path:
        return self.root / f"{name}.npy"

    def load(self) -> None:
        """Copy the drawings into ``images`` / ``labels`` (resized when ``image_size`` is not 28)."""
        total = sum(self.counts.values())
        images = np.empty((total, 1, 28, 28), dtype=np.uint8)
        labels = np.empty(total, dtype=np.int64)
        start = 0
        for label, name in enumerate(self.classes):
            rows = read_bitmaps(self.path(name), self.max_per_class)
            images[start:start + len(rows), 0] = rows
            labels[start:start + len(rows)] = label
            start += len(rows)
        tensor = torch.from_numpy(images[:start])
        if self.image_size != 28:
            from attnmeta.data.cifar import _resize

            tensor = _resize(tensor, self.image_size)
        self.images, self.labels = tensor, torch.from_numpy(labels[:start])

    def __len__(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        return f"QuickDraw({str(self.root)!r}, {len(self.classes)} classes, {len(self)} drawings)"


def quickdraw_benchmark(root: str | Path | None, shapes: tuple[tuple[int, int, int], ...], split: str,
                        seed: int, image_size: int, options: dict[str, Any]) -> Benchmark:
    """``make_benchmark("quickdraw", ...)``: episodes of the Meta-Dataset class split (or ``split_file``).

    ``shapes``: ``(ways, shots, queries)`` of the train, val and test sources. Options: ``max_per_class``
    (1000), ``split_file``, ``download`` (refused when true)."""
    max_per_class = options.pop("max_per_class", DEFAULT_MAX_PER_CLASS)
    split_file, download = options.pop("split_file", None), options.pop("download", False)
    if options:
        raise TypeError(f"unknown quickdraw options {sorted(options)}; accepted: max_per_class, split_file, "
                        "download")
    if split != "default":
        raise ValueError(f"unknown quickdraw split {split!r}; quickdraw has only 'default' (Meta-Dataset's), "
                         "or pass split_file=")
    if download:
        raise UserError(f"quickdraw cannot --download: the 345 class files are about 37 GB and have no "
                        f"checksums; fetch them yourself ({_GSUTIL}, or {QUICKDRAW_URL}<name>.npy each)")
    if root is None:
        raise ValueError(f"quickdraw needs root= (--root): the folder of the <class name>.npy numpy bitmaps "
                         f"({QUICKDRAW_URL})")
    parts = quickdraw_split(split_file)
    data = QuickDraw(root, [name for part in SPLITS for name in parts[part]], max_per_class=max_per_class,
                     image_size=image_size)
    check_episode_shapes("quickdraw", parts, data.counts, shapes, str(data.root),
                         "raise max_per_class (--set benchmark_options.max_per_class=N) if the class "
                         "file holds more drawings")
    data.load()
    index = {name: i for i, name in enumerate(data.classes)}
    train, val, test = (EpisodeSampler(data.images, data.labels, *shapes[i],
                                       classes=torch.tensor(sorted(index[c] for c in parts[part])),
                                       seed=seed + i, batch_transform=uint8_to_unit)
                        for i, part in enumerate(SPLITS))
    preprocessing = {"image_size": image_size, "channels": 1, "grayscale": True, "resize": "bilinear",
                     "invert": True, "scale": 1 / 255, "mean": [0.0], "std": [1.0]}
    info = {"split": "file" if split_file is not None else "meta-dataset", "images": len(data),
            "max_per_class": max_per_class, **{f"{part}_classes": len(parts[part]) for part in SPLITS}}
    return Benchmark("quickdraw", "classification", train, val, test, (1, image_size, image_size),
                     preprocessing, {"name": "conv4", "options": {"hidden": 64}}, info)
