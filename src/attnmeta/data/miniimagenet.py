"""miniImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (2017): 64/16/20 classes.

Two accepted layouts in ``root``:

1. CSV split files ``{split}.csv`` (rows ``filename,label``; in ``root`` or ``csv_dir``) and the images in one
   folder ``root/images/`` (84x84 RGB JPEGs, as produced by the usual conversion scripts). Images are decoded
   once, resized to ``image_size`` if needed (bilinear, antialiased) and cached as a uint8 tensor.
2. Single-file caches: ``mini-imagenet-cache-{split}.npz`` (arrays ``image_data`` uint8 ``[n, 84, 84, 3]`` and
   ``labels`` with integer or string class labels), or the common pickle
   ``mini-imagenet-cache-{split}.pkl`` (``{"image_data": [n, 84, 84, 3], "class_dict": {wnid: [indices]}}``).
   Pickles are read with a restricted unpickler that only rebuilds numpy arrays, dicts, lists and strings: any
   other object in the file is refused, so a malicious pickle cannot execute code.

``images`` are uint8 ``[n, 3, s, s]``; model inputs are
``(images / 255 - MINIIMAGENET_MEAN) / MINIIMAGENET_STD`` per channel (``normalize``), with the statistics
used by MetaOptNet and FEAT.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from attnmeta.data.omniglot import default_cache_dir
from attnmeta.data.safe_io import MissingDataError, decode_image, load_cache, save_cache
from attnmeta.data.textfiles import csv_records
from attnmeta.errors import ENVIRONMENT_ERRNOS, DataError

__all__ = ["MiniImageNet", "MINIIMAGENET_MEAN", "MINIIMAGENET_STD", "normalize", "safe_load_pickle"]

#: Per-channel (RGB) mean and standard deviation of miniImageNet pixels in [0, 1] (MetaOptNet / FEAT).
MINIIMAGENET_MEAN = (120.39586422 / 255.0, 115.59361427 / 255.0, 104.54012653 / 255.0)
MINIIMAGENET_STD = (70.68188272 / 255.0, 68.27635443 / 255.0, 72.54505529 / 255.0)
SPLITS = ("train", "val", "test")
_NPZ_FIX = "recreate it with numpy.savez(path, image_data=uint8 [n, 84, 84, 3], labels=[n] ints or strings)"
_PICKLE_FIX = ("recreate it as a dict {'image_data': uint8 [n, 84, 84, 3], 'class_dict': {wnid: [indices]}}, "
               "or convert it to .npz")


def normalize(images: Tensor, mean: tuple[float, ...] = MINIIMAGENET_MEAN,
              std: tuple[float, ...] = MINIIMAGENET_STD) -> Tensor:
    """uint8 ``[n, 3, s, s]`` -> float32 ``(x / 255 - mean) / std`` per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


class _RestrictedUnpickler(pickle.Unpickler):
    """Only the globals needed to rebuild numpy arrays (and plain containers) may be loaded."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unreadable(path: Path, kind: str, error: Exception, fix: str) -> DataError:
    """``DataError`` for a file that ``np.load`` / the unpickler could not read (environment errors are
    re-raised as they are)."""
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        raise error
    truncated = isinstance(error, EOFError) or "truncated" in str(error)
    reason = "truncated" if truncated else "damaged or wrong format"
    return DataError(f"{path} is not a readable {kind} ({reason}); {fix}")


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle of numpy arrays / dicts / lists without executing arbitrary code.

    Raises ``DataError`` naming the file when it references anything else (e.g. ``os.system``) or is damaged.
    """
    with open(path, "rb") as handle:
        try:
            return _RestrictedUnpickler(handle, encoding="latin1").load()
        except pickle.UnpicklingError as error:
            if "refusing" not in str(error):
                raise _unreadable(Path(path), "pickle", error, _PICKLE_FIX) from None
            raise DataError(f"{path}: {error}; only pickles of numpy arrays, dicts and lists are accepted. "
                            "Convert the file to .npz (image_data, labels) if it is trustworthy") from None
        except Exception as error:  # whatever a damaged pickle makes the unpickler raise
            raise _unreadable(Path(path), "pickle", error, _PICKLE_FIX) from None


class MiniImageNet:
    """One split of miniImageNet as in-memory tensors.

    Args:
        root: folder with ``{split}.csv`` + ``images/``, or ``mini-imagenet-cache-{split}.npz`` / ``.pkl``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the output images (84 is standard).
        csv_dir: folder of the CSV files if not ``root``.
        cache_dir: where decoded CSV+JPEG splits are cached (default ``default_cache_dir()/miniimagenet``).

    Attributes:
        images: uint8 ``[n, 3, image_size, image_size]``. labels: int64 ``[n]``, index into ``classes``.
        classes: class names (ImageNet wnids), sorted.
    """

    cache_file: Path | None  # None when read from the .npz / .pkl caches

    def __init__(self, root: str | Path, split: str = "train", *, image_size: int = 84,
                 csv_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8 pixels, got {image_size!r}; 84 is standard")
        root = Path(root)
        self.split, self.image_size = split, image_size
        npz, pkl = root / f"mini-imagenet-cache-{split}.npz", root / f"mini-imagenet-cache-{split}.pkl"
        csv_path = Path(csv_dir or root) / f"{split}.csv"
        if npz.is_file():
            self._set_from_hwc(*_read_npz(npz), npz)
            self.cache_file = None
        elif pkl.is_file():
            self._set_from_hwc(*_read_pickle(pkl), pkl)
            self.cache_file = None
        elif csv_path.is_file():
            self._load_csv(csv_path, root / "images", cache_dir)
        else:
            raise MissingDataError(
                f"miniImageNet {split} split not found in {root}: expected {csv_path} with an images/ "
                f"folder, or {npz.name} / {pkl.name}. The Ravi & Larochelle CSVs come with "
                "github.com/twitter/meta-learning-lstm (data/miniImagenet); the images must be made from "
                "ImageNet by you")

    def _set_from_hwc(self, images: np.ndarray, names: list[str], source: Path) -> None:
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or images.shape[0] == 0:
            raise DataError(f"{source}: image_data must be uint8 [n, H, W, 3] with n >= 1, got "
                            f"{images.dtype} {images.shape}")
        if len(names) != images.shape[0]:
            raise DataError(f"{source}: {images.shape[0]} images but {len(names)} labels; give one label per "
                            "image")
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        if tensor.shape[-1] != self.image_size or tensor.shape[-2] != self.image_size:
            tensor = torch.nn.functional.interpolate(tensor.float(), size=(self.image_size, self.image_size),
                                                     mode="bilinear", antialias=True, align_corners=False)
            tensor = tensor.round().clamp(0, 255).to(torch.uint8)
        self._set(tensor, names)

    def _set(self, images: Tensor, names: list[str]) -> None:
        self.classes = sorted(set(names))
        index = {c: i for i, c in enumerate(self.classes)}
        self.images = images
        self.labels = torch.tensor([index[n] for n in names], dtype=torch.long)

    def _load_csv(self, csv_path: Path, image_dir: Path, cache_dir: str | Path | None) -> None:
        rows = _read_csv(csv_path, image_dir)
        digest = hashlib.sha256(csv_path.read_bytes())
        digest.update(str(image_dir.resolve()).encode())
        for _, name, _ in rows[:: max(1, len(rows) // 64)]:  # a sample of sizes: cheap but content-sensitive
            path = image_dir / name
            digest.update(f"{name}:{path.stat().st_size if path.exists() else -1};".encode())
        cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "miniimagenet"
        cache_file = cache_root / f"{self.split}_{self.image_size}px_{digest.hexdigest()[:16]}.pt"
        self.cache_file = cache_file
        if cache_file.exists():
            stored = load_cache(cache_file, lambda stored: _cache_problem(stored, len(rows), self.image_size))
            self.images, self.labels = stored["images"], stored["labels"]
            self.classes = list(stored["classes"])
            return
        images = torch.empty(len(rows), 3, self.image_size, self.image_size, dtype=torch.uint8)
        fix = "replace it with a valid image, or remove its row from the CSV"
        for i, (line, name, _) in enumerate(rows):
            path = image_dir / name
            if not path.is_file():
                raise MissingDataError(f"{csv_path}:{line} lists {name} but {path} does not exist; put the "
                                       f"84x84 images of the split in {image_dir}")
            pixels = decode_image(path.read_bytes(), f"{path} (listed on {csv_path}:{line})", "RGB",
                                  self.image_size, Image.Resampling.BILINEAR, fix)
            images[i] = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        self._set(images, [label for _, _, label in rows])
        save_cache({"images": self.images, "labels": self.labels, "classes": self.classes}, cache_file)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __repr__(self) -> str:
        return (f"MiniImageNet({self.split}, {len(self)} images, {len(self.classes)} classes, "
                f"{self.image_size}px)")

    def float_images(self) -> Tensor:
        """Normalized float32 model inputs ``[n, 3, s, s]`` (see ``normalize``)."""
        return normalize(self.images)


def _read_npz(npz: Path) -> tuple[np.ndarray, list[str]]:
    """``image_data`` and string labels of an ``.npz`` cache (never unpickles)."""
    try:
        with np.load(npz, allow_pickle=False) as stored:
            missing = {"image_data", "labels"} - set(stored.files)
            if missing:
                raise DataError(f"{npz} lacks arrays {sorted(missing)}; expected image_data [n, 84, 84, 3] "
                                "and labels [n]")
            images, labels = stored["image_data"], stored["labels"]
    except DataError:
        raise
    except Exception as error:  # whatever np.load raises on a damaged file
        raise _unreadable(npz, ".npz file", error, _NPZ_FIX) from None
    if labels.ndim != 1 or labels.dtype.kind not in "iuUS":
        raise DataError(f"{npz}: labels must be a 1-d array of integers or strings, got {labels.dtype} "
                        f"{labels.shape}; {_NPZ_FIX}")
    return images, [v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
                    for v in labels.tolist()]


def _read_pickle(pkl: Path) -> tuple[np.ndarray, list[str]]:
    """``image_data`` and class names of the common ``{"image_data", "class_dict"}`` pickle."""
    stored = safe_load_pickle(pkl)
    class_dict = stored.get("class_dict") if isinstance(stored, dict) else None
    if not isinstance(class_dict, dict) or "image_data" not in stored:
        raise DataError(f"{pkl} must hold a dict with 'image_data' and a 'class_dict' dict; {_PICKLE_FIX}")
    try:
        images = np.asarray(stored["image_data"])
        members = {wnid: np.asarray(indices).reshape(-1).tolist() for wnid, indices in class_dict.items()}
    except (ValueError, TypeError):
        raise DataError(f"{pkl}: image_data or a class_dict entry is not a regular array; "
                        f"{_PICKLE_FIX}") from None
    names = [""] * (len(images) if images.ndim else 0)
    for wnid, indices in members.items():
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(names) or names[i]:
                twice = isinstance(i, int) and 0 <= i < len(names)
                problem = "is listed twice" if twice else "is no image index"
                raise DataError(f"{pkl}: class_dict[{wnid!r}] entry {i!r} {problem}; each of the "
                                f"{len(names)} images must be in exactly one class")
            names[i] = str(wnid)
    if "" in names:
        raise DataError(f"{pkl}: image {names.index('')} belongs to no class of class_dict")
    return images, names


def _read_csv(csv_path: Path, image_dir: Path) -> list[tuple[int, str, str]]:
    """``(line, filename, label)`` of a split CSV; bad rows raise ``DataError`` naming the line."""
    rows: list[tuple[int, str, str]] = []
    first: dict[str, int] = {}
    for line, row in csv_records(csv_path, ("filename", "label"), "expected a header 'filename,label'"):
        name, label = row["filename"].strip(), row["label"].strip()
        where = f"{csv_path}:{line}"
        if not name or not label:
            raise DataError(f"{where}: empty {'filename' if not name else 'label'}; every row needs "
                            "'filename,label'")
        parts = PurePosixPath(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or "\\" in name or ":" in name:
            raise DataError(f"{where}: filename {name!r} must be a file name inside {image_dir} (no absolute "
                            "path, '..' or backslash)")
        if name in first:
            raise DataError(f"{where}: {name} is listed twice (first on line {first[name]}); list each image "
                            "once")
        first[name] = line
        rows.append((line, name, label))
    if not rows:
        raise DataError(f"{csv_path} lists no images")
    return rows


def _cache_problem(stored: dict, count: int, size: int) -> str | None:
    """What is wrong with a loaded CSV-split cache (``None`` when it matches the CSV's ``count`` rows)."""
    images, labels, classes = stored.get("images"), stored.get("labels"), stored.get("classes")
    shape = (count, 3, size, size)
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or tuple(images.shape) != shape:
        return f"images are not uint8 [{count}, 3, {size}, {size}]"
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes is not a list of class names"
    if (not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (count,)
            or int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
        return f"labels are not int64 [{count}] class ids"
    return None
