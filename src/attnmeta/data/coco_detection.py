"""Detection data in COCO format as few-shot detection episodes (``DetectionTask``).

Layout: ``root/annotations.json`` (``{"images": [...], "annotations": [...], "categories": [...]}``, read
with ``json`` only) and ``root/images/<file_name>``. Everything in the JSON file is checked when
``CocoDetection`` is built; each problem is a one-line ``DataError`` naming the file, the entry and the fix.
Annotations with ``iscrowd == 1`` are skipped entirely (a crowd box is not one object). COCO boxes are
``[x, y, width, height]``; a box may stick out of its image by up to 1 pixel (it is clipped), not more.
Images are decoded with Pillow when first used (a missing or corrupt file is reported then, naming it) and
kept in an LRU cache. Boxes are turned into the ``(x0, y0, x1, y1)`` pixel corners of ``DetectionTask``.

Episodes over it: ``attnmeta.data.coco_episodes`` (``CocoEpisodes``, ``coco_sources``).

Class split: ``read_category_split`` (a JSON file ``{"train": [...], "val": [...], "test": [...]}`` of
category ids or names) or ``default_category_split`` (seeded 60% / 20% / 20% of the categories).
"""

from __future__ import annotations

import io
import json
import math
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, TypeGuard

import torch
from PIL import Image

from attnmeta.data.safe_io import MAX_MEMBER_BYTES, MissingDataError, read_split_json, read_text
from attnmeta.errors import DataError
from attnmeta.tasks.sampler_inputs import _check_count

__all__ = ["CocoDetection", "Instance", "read_category_split", "default_category_split", "SPLITS"]

SPLITS = ("train", "val", "test")
#: Shares of the categories in train and val of the default split (test: the rest).
DEFAULT_FRACTIONS = (0.6, 0.2)
#: How far (pixels) a box may stick out of its image before it is an error; within it, it is clipped.
BOX_TOLERANCE = 1.0
_LAYOUT = '{"images": [...], "annotations": [...], "categories": [...]}'


class Instance(NamedTuple):
    """One object: its image, category and ``(x0, y0, x1, y1)`` box in pixels of the image."""

    image_id: int
    category_id: int
    box: tuple[float, float, float, float]
    annotation: int  # position in the file's "annotations" list


class _ImageInfo(NamedTuple):
    file_name: str
    width: int
    height: int


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) and abs(value) < 2**53) or (isinstance(value, float) and math.isfinite(value))


def _id_list(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown if len(ids) <= limit else f"{shown}, ... ({len(ids)} in all)"


class CocoDetection:
    """A COCO-format detection data set (annotations in memory, images decoded lazily and cached).

    Attributes:
        images: image id -> ``(file_name, width, height)``, in file order.
        categories: category id -> name, in file order.
        instances: every non-crowd annotation as an ``Instance``.
        by_category / by_image: instance indices (into ``instances``) per category id / image id.
        channels: 1 (``mode="L"``) or 3 (``mode="RGB"``).

    ``cache_size`` decoded images are kept (least recently used dropped first; about 1 MB per 640x480 RGB
    image).
    """

    def __init__(self, root: str | Path, annotations: str = "annotations.json", images: str = "images",
                 mode: str = "RGB", cache_size: int = 256) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' (grayscale) or 'RGB', got {mode!r}")
        self.root, self.mode, self.channels = Path(root), mode, 1 if mode == "L" else 3
        self.cache_size = _check_count("cache_size", cache_size, "cache at least one image")
        if not self.root.is_dir():
            state = "is not a folder" if self.root.exists() else "does not exist"
            raise MissingDataError(f"COCO root {str(self.root)!r} {state}; point root= at a folder holding "
                                   f"{annotations} and the {images}/ folder")
        self.annotation_file, self.image_dir = self.root / annotations, self.root / images
        if not self.annotation_file.is_file():
            raise MissingDataError(f"annotation file {str(self.annotation_file)!r} does not exist; pass "
                                   "annotations= the name of the COCO JSON file inside the root")
        if not self.image_dir.is_dir():
            raise MissingDataError(f"image folder {str(self.image_dir)!r} does not exist; pass images= the "
                                   "name of the folder of image files inside the root")
        stored = self._read_json()
        self.images = self._read_images(stored["images"])
        self.categories = self._read_categories(stored["categories"])
        self.instances = self._read_annotations(stored["annotations"])
        self.by_category: dict[int, list[int]] = {c: [] for c in self.categories}
        self.by_image: dict[int, list[int]] = {i: [] for i in self.images}
        for k, instance in enumerate(self.instances):
            self.by_category[instance.category_id].append(k)
            self.by_image[instance.image_id].append(k)
        self._cache: OrderedDict[int, Image.Image] = OrderedDict()

    def __repr__(self) -> str:
        return (f"CocoDetection({str(self.root)!r}, {len(self.images)} images, {len(self.categories)} "
                f"categories, {len(self.instances)} instances, mode={self.mode!r})")

    def _problem(self, message: str) -> DataError:
        return DataError(f"{self.annotation_file}: {message}")

    def _read_json(self) -> dict[str, list]:
        try:
            stored = json.loads(read_text(self.annotation_file, "the annotation file"))
        except json.JSONDecodeError as error:
            raise DataError(f"{self.annotation_file}:{error.lineno}: invalid JSON ({error.msg}); fix the "
                            f"file (COCO format: {_LAYOUT})") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(stored, dict) or not isinstance(stored.get(key), list):
                raise self._problem(f"no {key!r} list; a COCO annotation file is a JSON object {_LAYOUT}")
        return stored

    def _read_images(self, entries: list) -> dict[int, _ImageInfo]:
        out: dict[int, _ImageInfo] = {}
        index: dict[int, int] = {}
        for i, entry in enumerate(entries):
            fields: dict[str, Any] = entry if isinstance(entry, dict) else {}
            image_id, name, width, height = (fields.get(k) for k in ("id", "file_name", "width", "height"))
            if not (_is_int(image_id) and isinstance(name, str) and _is_int(width) and _is_int(height)
                    and width > 0 and height > 0):
                raise self._problem(f"image {i}: needs an int 'id', a str 'file_name' and positive int "
                                    f"'width' and 'height', got {entry!r}; fix the entry")
            path = PurePosixPath(name.replace("\\", "/"))
            if not name or path.is_absolute() or ".." in path.parts:
                raise self._problem(f"image {i} (id {image_id}): file_name {name!r} must be a relative path "
                                    f"inside {self.image_dir.name}/; fix the file_name")
            self._unique("image", i, image_id, index)
            out[image_id] = _ImageInfo(str(path), width, height)
        return out

    def _read_categories(self, entries: list) -> dict[int, str]:
        out: dict[int, str] = {}
        index: dict[int, int] = {}
        for i, entry in enumerate(entries):
            fields: dict[str, Any] = entry if isinstance(entry, dict) else {}
            category_id, name = fields.get("id"), fields.get("name")
            if not _is_int(category_id) or not isinstance(name, str):
                raise self._problem(f"category {i}: needs an int 'id' and a str 'name', got {entry!r}; "
                                    "fix the entry")
            self._unique("category", i, category_id, index)
            out[category_id] = name
        return out

    def _unique(self, kind: str, i: int, entry_id: int, index: dict[int, int]) -> None:
        """Record that entry ``i`` of ``kind`` has id ``entry_id``; a duplicate id is a ``DataError``."""
        if entry_id in index:
            raise self._problem(f"{kind} {i} (id {entry_id}): duplicate {kind} id (also {kind} "
                                f"{index[entry_id]}); give every {kind} its own id")
        index[entry_id] = i

    def _read_annotations(self, entries: list) -> list[Instance]:
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise self._problem(f"annotation {i}: must be a JSON object, got {entry!r}; fix the entry")
            if entry.get("iscrowd", 0) == 1:
                continue
            where = f"annotation {i} (id {entry['id']!r})" if "id" in entry else f"annotation {i} (no id)"
            image_id, category_id = entry.get("image_id"), entry.get("category_id")
            if not _is_int(image_id) or image_id not in self.images:
                raise self._problem(f"{where}: unknown image id {image_id!r}; use the id of an entry of "
                                    "'images' or add the image")
            if not _is_int(category_id) or category_id not in self.categories:
                raise self._problem(f"{where}: unknown category id {category_id!r}; categories: "
                                    f"{_id_list(list(self.categories))}")
            box = self._box(entry.get("bbox"), self.images[image_id], where, image_id)
            out.append(Instance(image_id, category_id, box, i))
        return out

    def _box(self, bbox: Any, info: _ImageInfo, where: str,
             image_id: int) -> tuple[float, float, float, float]:
        """COCO ``[x, y, w, h]`` -> clipped ``(x0, y0, x1, y1)``, or a ``DataError``."""
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise self._problem(f"{where}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}; "
                                "fix the bbox")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise self._problem(f"{where}: bbox {bbox} has width or height <= 0 (COCO bbox is [x, y, width, "
                                "height], not corners); fix the bbox or remove the annotation")
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(info.width)), min(y + h, float(info.height))
        t = BOX_TOLERANCE
        if x < -t or y < -t or x + w > info.width + t or y + h > info.height + t or x1 <= x0 or y1 <= y0:
            raise self._problem(f"{where}: bbox {bbox} ([x, y, width, height]) lies outside image {image_id} "
                                f"({info.width}x{info.height}) by more than {t:g} pixel; fix the bbox or "
                                "the image's width/height")
        return x0, y0, x1, y1

    def image(self, image_id: int) -> Image.Image:
        """The decoded image (Pillow, in ``mode``), from the LRU cache when possible."""
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            return self._cache[image_id]
        image = self._decode(image_id)
        self._cache[image_id] = image
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return image

    def _decode(self, image_id: int) -> Image.Image:
        info = self.images[image_id]
        path = self.image_dir / info.file_name
        fix = f"replace the file or remove image id {image_id} from {self.annotation_file.name}"
        if not path.is_file():
            raise MissingDataError(f"image file {str(path)!r} (image id {image_id}) does not exist; add it "
                                   f"or remove the image from {self.annotation_file.name}")
        size = path.stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise DataError(f"image file {str(path)!r} has {size} bytes, more than the {MAX_MEMBER_BYTES} "
                            f"accepted for one image; {fix}")
        try:
            with Image.open(io.BytesIO(path.read_bytes())) as opened:
                image = opened.convert(self.mode)
                image.load()
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as err:
            truncated = "truncated" in str(err).lower()
            problem = "the image data is truncated" if truncated else "not a readable image"
            raise DataError(f"image file {str(path)!r}: cannot decode the image ({problem}); {fix}") from None
        if image.size != (info.width, info.height):
            raise DataError(f"image file {str(path)!r} is {image.size[0]}x{image.size[1]} pixels, but "
                            f"{self.annotation_file.name} says {info.width}x{info.height}; fix the image's "
                            "width/height")
        return image


def default_category_split(dataset: CocoDetection, seed: int = 0) -> dict[str, list[int]]:
    """A seeded 60/20/20% split of the category ids (at least one each; ids sorted per part)."""
    ids = sorted(dataset.categories)
    n = len(ids)
    if n < 3:
        raise DataError(f"{dataset.annotation_file}: the default category split needs at least 3 categories "
                        f"(train, val, test), found {n}; add categories or pass split_file=")
    n_train = min(max(1, round(DEFAULT_FRACTIONS[0] * n)), n - 2)
    n_val = min(max(1, round(DEFAULT_FRACTIONS[1] * n)), n - n_train - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    picked = [order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]]
    return {part: sorted(ids[i] for i in rows) for part, rows in zip(SPLITS, picked)}


def read_category_split(path: str | Path, dataset: CocoDetection) -> dict[str, list[int]]:
    """Category ids per part from a JSON file ``{"train": [...], "val": [...], "test": [...]}`` whose
    entries are category ids (ints) or names (strings) of ``dataset``; each part non-empty, no overlap."""
    path = Path(path)
    fix = 'it must be a JSON object {"train": [...], "val": [...], "test": [...]} of category ids or names'
    stored = read_split_json(path, fix, fix)
    by_name: dict[str, list[int]] = {}
    for category_id, name in dataset.categories.items():
        by_name.setdefault(name, []).append(category_id)
    seen: dict[int, str] = {}
    out: dict[str, list[int]] = {}
    for part in SPLITS:
        entries = stored[part]
        if not isinstance(entries, list) or not entries:
            raise DataError(f"split file {str(path)!r}: {part!r} must be a non-empty list of category ids or "
                            "names; give every part at least one category")
        out[part] = []
        for entry in entries:
            category_id = _split_entry(entry, part, path, dataset, by_name)
            if category_id in seen:
                where = f"both {seen[category_id]!r} and {part!r}" if seen[category_id] != part else (
                    f"{part!r} twice")
                raise DataError(f"split file {str(path)!r}: category {category_id} "
                                f"({dataset.categories[category_id]!r}) is listed in {where}; keep it in one "
                                "part only")
            seen[category_id] = part
            out[part].append(category_id)
    return out


def _split_entry(entry: Any, part: str, path: Path, dataset: CocoDetection,
                 by_name: dict[str, list[int]]) -> int:
    """The category id a split file entry (id or name) stands for."""
    where = f"split file {str(path)!r}: {part!r} entry {entry!r}"
    if _is_int(entry):
        if entry not in dataset.categories:
            raise DataError(f"{where} is not a category id of {dataset.annotation_file.name}; categories: "
                            f"{_id_list(list(dataset.categories))}")
        return int(entry)
    if not isinstance(entry, str):
        raise DataError(f"{where} must be a category id (int) or name (str); fix the entry")
    ids = by_name.get(entry, [])
    if not ids:
        raise DataError(f"{where} is not a category name of {dataset.annotation_file.name}; fix the name or "
                        "use the category id")
    if len(ids) > 1:
        raise DataError(f"{where} names several categories (ids {_id_list(ids)}); use the id instead")
    return ids[0]
