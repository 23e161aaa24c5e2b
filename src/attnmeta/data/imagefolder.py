"""Your own images as a few-shot benchmark: a folder of class folders (``ROOT/<class>/<image files>``).

Every subfolder of ``ROOT`` (hidden ones skipped) is a class named after the folder; its ``.png``, ``.jpg``,
``.jpeg``, ``.bmp``, ``.gif`` and ``.webp`` files (hidden files skipped; other files, nested folders and
files directly in ``ROOT``, e.g. a split file, ignored) are its images. Each image is decoded with Pillow
(the first frame of an animation), converted to ``L`` (``channels=1``) or ``RGB`` (``channels=3``, default),
resized to ``image_size`` x ``image_size`` (bilinear, aspect ratio not kept) and stored in one uint8 tensor
in memory; models see ``images.float() / 255``. Nothing is cached, executed or unpickled.

Class split (which classes train, validate and test):

- ``split_file``: a JSON file ``{"train": [...], "val": [...], "test": [...]}`` of class (folder) names.
  Each split needs at least one class, no class may appear twice, and every name must be a class folder;
  folders the file does not name are not used.
- without one: a seeded random 64% / 16% / 20% of the sorted class names (``round`` for train and val,
  the rest for test; at least one class each, so at least 3 classes), drawn with ``torch.randperm`` seeded
  by the benchmark's ``seed``. It is written nowhere: the same folder and seed give the same split.

Problems (a missing or empty folder, a class folder without images, an unreadable image, a bad split file,
a class with fewer images than ``shots + queries`` of the split that uses it, a split with fewer classes
than ``ways``) raise a one-line ``DataError`` / ``UserError`` naming the file or class and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from attnmeta.data.safe_io import MAX_MEMBER_BYTES, MissingDataError, decode_image, read_split_json
from attnmeta.errors import DataError, UserError

__all__ = ["ImageFolder", "IMAGEFOLDER_SUFFIXES", "SPLITS", "DEFAULT_FRACTIONS", "class_split",
           "default_split", "read_split_file", "check_episode_shapes"]

IMAGEFOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test")
#: Shares of the classes in train and val of the default split (test: the rest).
DEFAULT_FRACTIONS = (0.64, 0.16)
_ROOT_FIX = "point --root (root=) at a folder holding one subfolder of images per class"


class ImageFolder:
    """The images of ``root/<class>/<file>`` in memory.

    Attributes:
        images: uint8 ``[n, channels, image_size, image_size]``.
        labels: int64 ``[n]``, index into ``classes``.
        classes: class folder names, sorted.
        files: the image file of each row.
    """

    def __init__(self, root: str | Path, image_size: int = 84, channels: int = 3) -> None:
        if not isinstance(image_size, int) or isinstance(image_size, bool) or not 4 <= image_size <= 1024:
            raise UserError(f"image_size must be an int in [4, 1024] pixels, got {image_size!r}; 84 is usual")
        if channels not in (1, 3) or isinstance(channels, bool):
            raise UserError(f"imagefolder option channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            state = "is not a folder" if self.root.exists() else "does not exist"
            raise MissingDataError(f"imagefolder root {str(self.root)!r} {state}; {_ROOT_FIX}")
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataError(f"imagefolder root {str(self.root)!r} holds no class folders; {_ROOT_FIX}")
        mode = "L" if channels == 1 else "RGB"
        self.classes = [p.name for p in class_dirs]
        self.files: list[Path] = []
        labels: list[int] = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGEFOLDER_SUFFIXES)
            if not files:
                raise DataError(f"class folder {str(class_dir)!r} holds no images "
                                f"({', '.join(IMAGEFOLDER_SUFFIXES)}); add images or remove the folder")
            self.files += files
            labels += [label] * len(files)
        images = np.empty((len(self.files), channels, image_size, image_size), dtype=np.uint8)
        for i, path in enumerate(self.files):
            pixels = decode_image(_read_bytes(path), f"image file {str(path)!r}", mode, image_size,
                                  Image.Resampling.BILINEAR, "replace or remove the file")
            images[i] = pixels[None] if channels == 1 else np.moveaxis(pixels, -1, 0)
        self.images = torch.from_numpy(images)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __repr__(self) -> str:
        return (f"ImageFolder({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes, "
                f"{self.channels}x{self.image_size}x{self.image_size})")

    def counts(self) -> list[int]:
        """Images per class, in ``classes`` order."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def _read_bytes(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_MEMBER_BYTES:
        raise DataError(f"image file {str(path)!r} has {size} bytes, more than the {MAX_MEMBER_BYTES} "
                        "accepted for one image; shrink it or remove it")
    return path.read_bytes()


def default_split(classes: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """The seeded 64/16/20% split of ``sorted(classes)`` (module docstring); names sorted per split."""
    names = sorted(classes)
    n = len(names)
    if n < 3:
        raise DataError(f"the default imagefolder split needs at least 3 class folders (train, val, test), "
                        f"found {n}; add classes or pass split_file=")
    n_train = min(max(1, round(DEFAULT_FRACTIONS[0] * n)), n - 2)
    n_val = min(max(1, round(DEFAULT_FRACTIONS[1] * n)), n - n_train - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    picked = [order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]]
    return {part: sorted(names[i] for i in ids) for part, ids in zip(SPLITS, picked)}


def read_split_file(path: str | Path, classes: Sequence[str]) -> dict[str, list[str]]:
    """Class names per split from a JSON file ``{"train": [...], "val": [...], "test": [...]}``, checked
    against the folder's ``classes`` (known, each in one split only, every split non-empty)."""
    path = Path(path)
    fix = 'it must be a JSON object {"train": [...], "val": [...], "test": [...]} of class folder names'
    stored = read_split_json(path, fix, 'pass a JSON file {"train": [...], "val": [...], "test": [...]} '
                                        "of class folder names")
    known = set(classes)
    seen: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for part in SPLITS:
        names = stored[part]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"split file {str(path)!r}: {part!r} must be a non-empty list of class folder "
                            "names")
        for name in names:
            if name not in known:
                raise DataError(f"split file {str(path)!r}: class {name!r} ({part}) is not a class folder of "
                                "the root; fix the name or add the folder")
            if name in seen:
                where = f"both {seen[name]!r} and {part!r}" if seen[name] != part else f"{part!r} twice"
                raise DataError(f"split file {str(path)!r}: class {name!r} is listed in {where}; keep it in "
                                "one split only")
            seen[name] = part
        out[part] = list(names)
    return out


def class_split(classes: Sequence[str], split_file: str | Path | None, seed: int) -> dict[str, list[str]]:
    """``read_split_file`` when a split file is given, else ``default_split``."""
    return default_split(classes, seed) if split_file is None else read_split_file(split_file, classes)


def check_episode_shapes(data: ImageFolder, parts: dict[str, list[str]],
                         shapes: Sequence[tuple[int, int, int]]) -> dict[str, Tensor]:
    """Class ids per split, after checking that each split has ``ways`` classes with ``shots + queries``
    images each (``shapes``: ``(ways, shots, queries)`` of train, val, test)."""
    index = {name: i for i, name in enumerate(data.classes)}
    counts = data.counts()
    out = {}
    for part, (ways, shots, queries) in zip(SPLITS, shapes):
        names = parts[part]
        if len(names) < ways:
            raise UserError(f"the imagefolder {part} split has {len(names)} classes, fewer than ways = "
                            f"{ways}; lower --ways or give that split more classes (split_file=)")
        for name in names:
            have = counts[index[name]]
            if have < shots + queries:
                raise DataError(f"class {name!r} ({part} split) has {have} images, fewer than shots + "
                                f"queries = {shots + queries}; add images to {str(data.root / name)!r} or "
                                "lower --shots/--queries")
        out[part] = torch.tensor([index[name] for name in names], dtype=torch.long)
    return out
