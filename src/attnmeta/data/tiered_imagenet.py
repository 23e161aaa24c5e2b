"""tieredImageNet (Ren et al. 2018) built from the ImageNet ILSVRC-2012 training images.

608 ILSVRC-2012 classes grouped by 34 high-level categories of the ImageNet hierarchy: 20 categories (351
classes) train, 6 (97) val, 8 (160) test, so that no category is shared between splits. The split is the
original repository's ``tiered_imagenet_split/{train,val,test}.csv``
(github.com/renmengye/few-shot-ssl-public), packaged as ``splits/tiered_imagenet.json`` (split -> category
wnid -> class wnids, ``tiered_split``); ``split_file=`` takes another JSON file of the same form.

Data: ``root/train/<wnid>/*.JPEG`` (``root`` may also be that ``train`` folder itself), the layout of
``ILSVRC2012_img_train.tar`` once it and its per-class tars are extracted. ImageNet needs an account, so
nothing is downloaded: get the archive from ``IMAGENET_URL``.

Each split is built when its ``images`` are first used: ``max_per_class`` images per class (default 600,
ImageNet classes hold about 1,300) chosen at random with a generator seeded by ``select_seed`` and the wnid
(sorted file names; the same folder gives the same choice on every machine), decoded with Pillow, converted
to RGB and resized to ``image_size`` x ``image_size`` (84, bilinear, aspect ratio not kept, as the original
tieredImageNet). The uint8 tensors are cached as ``tiered-imagenet-<split>-<s>px-<hash>.safetensors``
(``cache_dir``, default ``$ATTNMETA_CACHE/tiered-imagenet``; tensors and strings only, never pickle); the
hash covers the folder, the chosen file names, the size and the split, so another choice makes another
file. A file replaced under the same name is not noticed: delete the cache then. A damaged cache is rebuilt
with a warning. Model inputs are normalized with miniImageNet's statistics (``MINIIMAGENET_MEAN`` / ``_STD``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from attnmeta.data.benchmarks import Benchmark, NormalizedSource
from attnmeta.data.fixed_split import (
    SPLIT_DIR,
    SPLITS,
    check_episode_shapes,
    check_split_names,
    read_split_object,
)
from attnmeta.data.imagefolder import _read_bytes
from attnmeta.data.safe_io import MissingDataError, decode_image
from attnmeta.data.tensor_cache import load_tensor_cache, save_tensor_cache
from attnmeta.errors import DataError, UserError
from attnmeta.tasks.sampler import EpisodeSampler

__all__ = ["TieredImageNet", "TIERED_SPLIT_FILE", "IMAGENET_URL", "tiered_split", "tiered_classes",
           "find_train_dir", "tiered_benchmark"]

TIERED_SPLIT_FILE = SPLIT_DIR / "tiered_imagenet.json"
IMAGENET_URL = "https://image-net.org/download-images.php"
JPEG_SUFFIXES = (".jpeg", ".jpg")
DEFAULT_MAX_PER_CLASS = 600
_CACHE_FORMAT = "attnmeta-tiered-imagenet-v1"
_WNID = re.compile(r"n\d{8}")
_LAYOUT = (f"expected ILSVRC-2012 training images as ROOT/train/<wnid>/*.JPEG: get ILSVRC2012_img_train.tar "
           f"(ImageNet account needed, {IMAGENET_URL}), extract it and each <wnid>.tar in it into ROOT/train/"
           "<wnid>/, and pass ROOT as --root (root=)")
_SPLIT_FIX = ('give {"train": {category wnid: [class wnids]}, "val": {...}, "test": {...}} with wnids like '
              "'n01530575'")


def tiered_split(split_file: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """Per split, category wnid -> class wnids: the packaged tieredImageNet split, or ``split_file``'s."""
    path = Path(split_file) if split_file is not None else TIERED_SPLIT_FILE
    where = f"split file {str(path)!r}"
    parts = read_split_object(path, _SPLIT_FIX)
    for part in SPLITS:
        groups = parts[part]
        if not isinstance(groups, dict) or not groups:
            raise DataError(f"{where}: {part!r} must map category wnids to lists of class wnids; "
                            f"{_SPLIT_FIX}")
        bad = next((c for c, members in groups.items()
                    if not _WNID.fullmatch(c) or not isinstance(members, list) or not members), None)
        if bad is not None:
            raise DataError(f"{where}: {part!r} category {bad!r} is not a wnid with a non-empty list of "
                            f"class wnids; {_SPLIT_FIX}")
    categories = [c for part in SPLITS for c in parts[part]]
    shared = next((c for c in categories if categories.count(c) > 1), None)
    if shared is not None:
        raise DataError(f"{where}: category {shared!r} is in more than one split; keep it in one split only")
    flat = {part: [w for members in parts[part].values() for w in members] for part in SPLITS}
    check_split_names(flat, where, _SPLIT_FIX, lambda name: bool(_WNID.fullmatch(name)))
    return {part: {c: list(members) for c, members in parts[part].items()} for part in SPLITS}


def tiered_classes(split_file: str | Path | None = None) -> dict[str, list[str]]:
    """Sorted class wnids per split (``tiered_split`` without the categories)."""
    return {part: sorted(w for members in groups.values() for w in members)
            for part, groups in tiered_split(split_file).items()}


def find_train_dir(root: str | Path) -> Path:
    """``root/train`` when it is a folder, else ``root`` itself when it holds wnid folders."""
    root = Path(root)
    if (root / "train").is_dir():
        return root / "train"
    if root.is_dir() and any(_WNID.fullmatch(p.name) and p.is_dir() for p in root.iterdir()):
        return root
    state = "holds neither train/ nor wnid folders" if root.is_dir() else (
        "is not a folder" if root.exists() else "does not exist")
    raise MissingDataError(f"ImageNet folder {str(root)!r} {state}; {_LAYOUT}")


def _select(folder: Path, cap: int, seed: int) -> tuple[list[str], int]:
    """Sorted names of up to ``cap`` JPEG files of a class folder (seeded by ``seed`` and the wnid), and how
    many it holds."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file()
                       and os.path.splitext(e.name)[1].lower() in JPEG_SUFFIXES)
    if not names:
        raise DataError(f"class folder {str(folder)!r} holds no .JPEG images; extract its <wnid>.tar from "
                        "ILSVRC2012_img_train.tar there, or remove the class from the split")
    if len(names) <= cap:
        return names, len(names)
    keep = np.random.default_rng([seed, int(folder.name[1:])]).choice(len(names), cap, replace=False)
    return [names[i] for i in sorted(keep.tolist())], len(names)


class TieredImageNet:
    """One split of tieredImageNet: files chosen when made, images decoded (or read from the cache) on first
    use of ``images`` / ``labels`` (``load``).

    Args:
        root: folder holding ``train/<wnid>/*.JPEG`` (or that ``train`` folder).
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the images (84 is standard).
        max_per_class: images per class at most (600). select_seed: seeds their choice (0).
        cache: cache decoded images as safetensors. cache_dir: its folder
            (``$ATTNMETA_CACHE/tiered-imagenet``).
        split_file: another split file (``tiered_split``).

    Attributes:
        classes: the split's wnids, sorted. files: chosen file names per wnid. counts: images per wnid.
        images: uint8 ``[n, 3, s, s]``. labels: int64 ``[n]``, index into ``classes``.
        cache_file: the cache used or written (``None``: none).
    """

    def __init__(self, root: str | Path, split: str = "train", *, image_size: int = 84,
                 max_per_class: int = DEFAULT_MAX_PER_CLASS, select_seed: int = 0, cache: bool = True,
                 cache_dir: str | Path | None = None, split_file: str | Path | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for key, value, low in (("image_size", image_size, 8), ("max_per_class", max_per_class, 1),
                                ("select_seed", select_seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"tiered-imagenet {key} must be an int >= {low}, got {value!r}")
        self.split, self.image_size = split, image_size
        self.train_dir = find_train_dir(root)
        self.classes = tiered_classes(split_file)[split]
        missing = [w for w in self.classes if not (self.train_dir / w).is_dir()]
        if missing:
            raise MissingDataError(f"{len(missing)} of the {len(self.classes)} tieredImageNet {split} "
                                   f"classes have no folder in {self.train_dir} (e.g. {missing[0]}); "
                                   f"{_LAYOUT}")
        self.files: dict[str, list[str]] = {}
        self.available: dict[str, int] = {}
        for wnid in self.classes:
            chosen = _select(self.train_dir / wnid, max_per_class, select_seed)
            self.files[wnid], self.available[wnid] = chosen
        self.counts = {w: len(names) for w, names in self.files.items()}
        digest = hashlib.sha256(f"{_CACHE_FORMAT};{split};{image_size};{self.train_dir.resolve()}".encode())
        for wnid, names in self.files.items():
            digest.update(("\n" + wnid + ":" + "/".join(names)).encode())
        self.stamp = digest.hexdigest()
        folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        name = f"tiered-imagenet-{split}-{image_size}px-{self.stamp[:16]}.safetensors"
        self.cache_file: Path | None = folder / name if cache else None
        self._images: Tensor | None = None
        self._labels: Tensor | None = None

    @property
    def images(self) -> Tensor:
        self.load()
        assert self._images is not None
        return self._images

    @property
    def labels(self) -> Tensor:
        self.load()
        assert self._labels is not None
        return self._labels

    def load(self) -> None:
        """Decode the chosen images (or read them from a valid cache, or write it)."""
        if self._images is not None:
            return
        if self.cache_file is not None:
            loaded = load_tensor_cache(self.cache_file, _CACHE_FORMAT, self.stamp, "tieredImageNet",
                                       str(self.train_dir), self._cache_problem)
            if loaded is not None:
                self._images, self._labels = loaded[0]["images"], loaded[0]["labels"].long()
                return
        images = torch.empty(len(self), 3, self.image_size, self.image_size, dtype=torch.uint8)
        labels = torch.empty(len(self), dtype=torch.long)
        row = 0
        for label, wnid in enumerate(self.classes):
            for name in self.files[wnid]:
                path = self.train_dir / wnid / name
                pixels = decode_image(_read_bytes(path), f"image file {str(path)!r}", "RGB", self.image_size,
                                      Image.Resampling.BILINEAR, "replace or remove the file")
                images[row] = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
                labels[row] = label
                row += 1
        self._images, self._labels = images, labels
        if self.cache_file is not None:
            meta = {"format": _CACHE_FORMAT, "source": self.stamp, "classes": json.dumps(self.classes)}
            if not save_tensor_cache(self.cache_file, {"images": images, "labels": labels.to(torch.int16)},
                                     meta, "tieredImageNet"):
                self.cache_file = None

    def _cache_problem(self, stored: dict[str, Tensor], meta: dict[str, str]) -> str | None:
        images, labels, n, s = stored.get("images"), stored.get("labels"), len(self), self.image_size
        if images is None or images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, s, s):
            return f"images are not uint8 [{n}, 3, {s}, {s}]"
        if labels is None or labels.dtype != torch.int16 or tuple(labels.shape) != (n,):
            return f"labels are not int16 [{n}]"
        expected = [self.counts[w] for w in self.classes]
        if meta.get("classes") != json.dumps(self.classes) or int(labels.min()) < 0 or torch.bincount(
                labels.long(), minlength=len(self.classes)).tolist() != expected:
            return "labels do not match the classes and their image counts"
        return None

    def __len__(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        return (f"TieredImageNet({self.split}, {len(self.classes)} classes, {len(self)} images, "
                f"{self.image_size}px)")


def _default_cache_dir() -> Path:
    from attnmeta.data.omniglot import default_cache_dir

    return default_cache_dir() / "tiered-imagenet"


def tiered_benchmark(root: str | Path | None, shapes: tuple[tuple[int, int, int], ...], split: str, seed: int,
                     image_size: int, options: dict[str, Any]) -> Benchmark:
    """``make_benchmark("tiered-imagenet", ...)``: normalized episodes of the tieredImageNet split.

    Options: ``max_per_class`` (600), ``select_seed`` (0), ``cache`` (True), ``cache_dir``, ``split_file``,
    ``download`` (refused when true: ImageNet needs an account)."""
    from attnmeta.data.miniimagenet import MINIIMAGENET_MEAN, MINIIMAGENET_STD

    keys = ("max_per_class", "select_seed", "cache", "cache_dir", "split_file")
    kwargs = {key: options.pop(key) for key in keys if key in options}
    download = options.pop("download", False)
    if options:
        raise TypeError(f"unknown tiered-imagenet options {sorted(options)}; accepted: {', '.join(keys)}, "
                        "download")
    if split != "default":
        raise ValueError(f"unknown tiered-imagenet split {split!r}; it has only 'default' (Ren et al.'s), or "
                         "pass split_file=")
    if download:
        raise UserError(f"tiered-imagenet cannot --download: ImageNet needs an account; {_LAYOUT}")
    if root is None:
        raise ValueError(f"tiered-imagenet needs root= (--root); {_LAYOUT}")
    data = [TieredImageNet(root, part, image_size=image_size, **kwargs) for part in SPLITS]
    counts = {w: n for d in data for w, n in d.counts.items()}
    check_episode_shapes("tiered-imagenet", {d.split: d.classes for d in data}, counts, shapes,
                         str(data[0].train_dir), "add images to its folder (or raise max_per_class)")
    sources = [NormalizedSource(EpisodeSampler(d.images, d.labels, *shapes[i], seed=seed + i),
                                MINIIMAGENET_MEAN, MINIIMAGENET_STD) for i, d in enumerate(data)]
    preprocessing = {"image_size": image_size, "channels": 3, "grayscale": False, "resize": "bilinear",
                     "invert": False, "scale": 1 / 255, "mean": list(MINIIMAGENET_MEAN),
                     "std": list(MINIIMAGENET_STD)}
    info = {"split": "file" if kwargs.get("split_file") is not None else "ren",
            "source": str(data[0].train_dir), **{f"{d.split}_classes": len(d.classes) for d in data},
            **{f"{d.split}_images": len(d) for d in data}}
    train, val, test = sources
    return Benchmark("tiered-imagenet", "classification", train, val, test, (3, image_size, image_size),
                     preprocessing, {"name": "conv4", "options": {"hidden": 64}}, info)
