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

import csv
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from attnmeta.data.omniglot import _atomic_save, default_cache_dir

__all__ = ["MiniImageNet", "MINIIMAGENET_MEAN", "MINIIMAGENET_STD", "normalize", "safe_load_pickle"]

#: Per-channel (RGB) mean and standard deviation of miniImageNet pixels in [0, 1] (MetaOptNet / FEAT).
MINIIMAGENET_MEAN = (120.39586422 / 255.0, 115.59361427 / 255.0, 104.54012653 / 255.0)
MINIIMAGENET_STD = (70.68188272 / 255.0, 68.27635443 / 255.0, 72.54505529 / 255.0)
SPLITS = ("train", "val", "test")


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


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle of numpy arrays / dicts / lists without executing arbitrary code.

    Raises ``ValueError`` naming the file when it references anything else (e.g. ``os.system``).
    """
    with open(path, "rb") as handle:
        try:
            return _RestrictedUnpickler(handle, encoding="latin1").load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: {error}; only pickles of numpy arrays, dicts and lists are accepted. "
                             "Convert the file to .npz (image_data, labels) if it is trustworthy") from None


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
            with np.load(npz, allow_pickle=False) as stored:
                missing = {"image_data", "labels"} - set(stored.files)
                if missing:
                    raise ValueError(f"{npz} lacks arrays {sorted(missing)}; expected image_data "
                                     "[n, 84, 84, 3] and labels [n]")
                images, names = stored["image_data"], [str(v) for v in stored["labels"].tolist()]
            self._set_from_hwc(images, names, npz)
            self.cache_file = None
        elif pkl.is_file():
            stored = safe_load_pickle(pkl)
            if not isinstance(stored, dict) or "image_data" not in stored or "class_dict" not in stored:
                raise ValueError(f"{pkl} must hold a dict with 'image_data' and 'class_dict'")
            names = [""] * len(stored["image_data"])
            for wnid, indices in stored["class_dict"].items():
                for i in indices:
                    names[int(i)] = str(wnid)
            if "" in names:
                raise ValueError(f"{pkl}: image {names.index('')} belongs to no class of class_dict")
            self._set_from_hwc(np.asarray(stored["image_data"]), names, pkl)
            self.cache_file = None
        elif csv_path.is_file():
            self._load_csv(csv_path, root / "images", cache_dir)
        else:
            raise FileNotFoundError(
                f"miniImageNet {split} split not found in {root}: expected {csv_path} with an images/ "
                f"folder, or {npz.name} / {pkl.name}. The Ravi & Larochelle CSVs come with "
                "github.com/twitter/meta-learning-lstm (data/miniImagenet); the images must be made from "
                "ImageNet by you")

    def _set_from_hwc(self, images: np.ndarray, names: list[str], source: Path) -> None:
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{source}: image_data must be uint8 [n, H, W, 3], got {images.dtype} "
                             f"{images.shape}")
        if len(names) != images.shape[0]:
            raise ValueError(f"{source}: {images.shape[0]} images but {len(names)} labels")
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
        with open(csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"filename", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{csv_path}: expected a header 'filename,label', got {reader.fieldnames}")
            rows = [(row["filename"], row["label"]) for row in reader]
        if not rows:
            raise ValueError(f"{csv_path} lists no images")
        digest = hashlib.sha256(csv_path.read_bytes())
        digest.update(str(image_dir.resolve()).encode())
        for name, _ in rows[:: max(1, len(rows) // 64)]:  # a sample of sizes: cheap but content-sensitive
            path = image_dir / name
            digest.update(f"{name}:{path.stat().st_size if path.exists() else -1};".encode())
        cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "miniimagenet"
        cache_file = cache_root / f"{self.split}_{self.image_size}px_{digest.hexdigest()[:16]}.pt"
        if cache_file.exists():
            stored = torch.load(cache_file, weights_only=True)
            self.images, self.labels = stored["images"], stored["labels"]
            self.classes = list(stored["classes"])
            self.cache_file = cache_file
            return
        images = torch.empty(len(rows), 3, self.image_size, self.image_size, dtype=torch.uint8)
        for i, (name, _) in enumerate(rows):
            path = image_dir / name
            if not path.is_file():
                raise FileNotFoundError(f"{csv_path} lists {name} but {path} does not exist; put the "
                                        f"84x84 images of the split in {image_dir}")
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                rgb = image.convert("RGB")
                if rgb.size != (self.image_size, self.image_size):
                    rgb = rgb.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                images[i] = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
        self._set(images, [label for _, label in rows])
        _atomic_save({"images": self.images, "labels": self.labels, "classes": self.classes}, cache_file)
        self.cache_file = cache_file

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __repr__(self) -> str:
        return (f"MiniImageNet({self.split}, {len(self)} images, {len(self.classes)} classes, "
                f"{self.image_size}px)")

    def float_images(self) -> Tensor:
        """Normalized float32 model inputs ``[n, 3, s, s]`` (see ``normalize``)."""
        return normalize(self.images)
