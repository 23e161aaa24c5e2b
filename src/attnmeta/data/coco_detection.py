"""Detection data in COCO format as few-shot detection episodes (``DetectionTask``).

Layout: ``root/annotations.json`` (``{"images": [...], "annotations": [...], "categories": [...]}``, read
with ``json`` only) and ``root/images/<file_name>``. Everything in the JSON file is checked when
``CocoDetection`` is built; each problem is a one-line ``DataError`` naming the file, the entry and the fix.
Annotations with ``iscrowd == 1`` are skipped entirely (a crowd box is not one object). COCO boxes are
``[x, y, width, height]``; a box may stick out of its image by up to 1 pixel (it is clipped), not more.
Images are decoded with Pillow when first used (a missing or corrupt file is reported then, naming it) and
kept in an LRU cache. Boxes are turned into the ``(x0, y0, x1, y1)`` pixel corners of ``DetectionTask``.

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

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from attnmeta.data.safe_io import MAX_MEMBER_BYTES, MissingDataError, read_text
from attnmeta.errors import DataError
from attnmeta.tasks.detection import DetectionBatch, DetectionTask
from attnmeta.tasks.sampler_inputs import _check_count, _check_generator

__all__ = ["CocoDetection", "CocoEpisodes", "Instance", "read_category_split", "default_category_split",
           "coco_sources", "support_crop", "letterbox", "SPLITS"]

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
    if not path.is_file():
        raise MissingDataError(f"split file {str(path)!r} does not exist; {fix}")
    try:
        stored = json.loads(read_text(path, "the split file"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); {fix}") from None
    if not isinstance(stored, dict) or sorted(stored) != sorted(SPLITS):
        keys = sorted(stored) if isinstance(stored, dict) else type(stored).__name__
        raise DataError(f"split file {str(path)!r} holds {keys}; {fix}")
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


def _to_tensor(image: Image.Image) -> Tensor:
    """Pillow image -> float ``[C, H, W]`` in [0, 1]."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    pixels = pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)
    return pixels.float().div_(255)


def support_crop(image: Image.Image, box: Sequence[float], size: int) -> Image.Image:
    """The square around ``box``'s centre with side ``max(w, h)`` (whole pixels; zeros beyond the image),
    resized to ``size x size`` (bilinear)."""
    x0, y0, x1, y1 = box
    side = max(1, math.ceil(max(x1 - x0, y1 - y0) - 1e-6))
    left, top = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)


def letterbox(image: Image.Image, size: int) -> tuple[Image.Image, float, float]:
    """``image`` scaled so its longer side is ``size``, pasted at the top-left of a black ``size x size``
    canvas; also the x and y scale factors (new pixels per original pixel)."""
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.BILINEAR), (0, 0))
    return canvas, new_w / width, new_h / height


class CocoEpisodes:
    """N-way K-shot Q-query detection episodes over the categories ``category_ids`` of a ``CocoDetection``.

    An episode draws ``ways`` distinct categories (task label ``i`` is the ``i``-th drawn), then ``queries``
    distinct query images among the images holding an instance of a drawn category, then ``shots`` distinct
    instances of each drawn category from the *other* images (the support crops). A category is used only if
    its instances lie in at least ``shots + queries`` distinct images, so every episode can be filled.

    Support crops: ``support_crop`` (square around the box centre, zeros beyond the image), ``[N*K, C, s, s]``
    with ``s = support_size``, class-major labels. Queries: ``letterbox`` into ``[Q, C, S, S]`` with
    ``S = image_size``; ``query_boxes`` are the drawn categories' boxes scaled with the image (pixels,
    ``(x0, y0, x1, y1)``), other categories' instances are background. Images are floats in [0, 1].

    Randomness: one draw per episode from the generator (the episode's seed, kept in ``info``), so
    ``sample_batch(T, g)`` gives the tasks of ``T`` successive ``sample(g)`` calls.
    """

    def __init__(self, dataset: CocoDetection, category_ids: Sequence[int] | Tensor, *, ways: int, shots: int,
                 queries: int, image_size: int = 256, support_size: int = 64, seed: int = 0) -> None:
        self.dataset = dataset
        self.ways = _check_count("ways", ways, "a task needs at least one category")
        self.shots = _check_count("shots", shots, "each category needs at least one support crop")
        self.queries = _check_count("queries", queries, "episodes without query images cannot be evaluated")
        self.image_size = _check_count("image_size", image_size, "256 is usual")
        self.support_size = _check_count("support_size", support_size, "64 is usual")
        pool = self._check_pool(category_ids)
        self._images_of = {c: sorted({dataset.instances[k].image_id for k in dataset.by_category[c]})
                           for c in pool}
        enough = [c for c in pool if len(dataset.by_category[c]) >= shots]
        if len(enough) < ways:
            raise ValueError(f"only {len(enough)} of the {len(pool)} categories have at least shots = "
                             f"{shots} instances, an episode needs ways = {ways} of them; lower ways or "
                             "shots, or give this split more categories")
        usable = [c for c in enough if len(self._images_of[c]) >= shots + queries]
        if len(usable) < ways:
            raise ValueError(f"only {len(usable)} of the {len(pool)} categories appear in at least shots + "
                             f"queries = {shots + queries} images (query images and support crops come from "
                             f"distinct images), an episode needs ways = {ways} of them; lower queries, "
                             "shots or ways, or give this split more categories")
        self.classes = torch.tensor(usable, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(int(seed))

    def _check_pool(self, category_ids: Sequence[int] | Tensor) -> list[int]:
        ids = category_ids.tolist() if isinstance(category_ids, Tensor) else list(category_ids)
        if not ids:
            raise ValueError("category_ids is empty; give the episodes at least `ways` categories")
        for c in ids:
            if not _is_int(c) or c not in self.dataset.categories:
                raise ValueError(f"category id {c!r} is not a category of {self.dataset.annotation_file}; "
                                 f"categories: {_id_list(list(self.dataset.categories))}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"category_ids lists a category twice: {ids}; list each once")
        return sorted(ids)

    @property
    def num_classes(self) -> int:
        """Number of categories episodes draw from."""
        return int(self.classes.numel())

    def __repr__(self) -> str:
        return (f"CocoEpisodes({self.ways}-way {self.shots}-shot {self.queries}-query, {self.num_classes} "
                f"categories, image_size={self.image_size}, support_size={self.support_size})")

    def _draw(self, seed: int) -> tuple[list[int], list[int], list[int]]:
        """Chosen category ids, query image ids and support instance indices of episode ``seed``."""
        g = torch.Generator().manual_seed(seed)
        pool = self.classes.tolist()
        chosen = [pool[i] for i in torch.randperm(len(pool), generator=g)[:self.ways].tolist()]
        candidates = sorted(set().union(*(self._images_of[c] for c in chosen)))
        order = torch.randperm(len(candidates), generator=g)[:self.queries].tolist()
        query_ids = [candidates[i] for i in order]
        taken = set(query_ids)
        support: list[int] = []
        for c in chosen:
            free = [k for k in self.dataset.by_category[c] if self.dataset.instances[k].image_id not in taken]
            support += [free[i] for i in torch.randperm(len(free), generator=g)[:self.shots].tolist()]
        return chosen, query_ids, support

    def _episode(self, seed: int) -> DetectionTask:
        data = self.dataset
        chosen, query_ids, support = self._draw(seed)
        label = {c: i for i, c in enumerate(chosen)}
        crops = [support_crop(data.image(data.instances[k].image_id), data.instances[k].box,
                              self.support_size) for k in support]
        query_x, boxes, labels = [], [], []
        for image_id in query_ids:
            canvas, sx, sy = letterbox(data.image(image_id), self.image_size)
            query_x.append(_to_tensor(canvas))
            mine = [b for b in (data.instances[k] for k in data.by_image[image_id]) if b.category_id in label]
            boxes.append(torch.tensor([[b.box[0] * sx, b.box[1] * sy, b.box[2] * sx, b.box[3] * sy]
                                       for b in mine], dtype=torch.float32).reshape(-1, 4))
            labels.append(torch.tensor([label[b.category_id] for b in mine], dtype=torch.long))
        info = {"episode_seed": seed, "query_image_ids": query_ids,
                "support_image_ids": [data.instances[k].image_id for k in support],
                "support_annotations": [data.instances[k].annotation for k in support]}
        return DetectionTask(torch.stack([_to_tensor(c) for c in crops]),
                             torch.arange(self.ways).repeat_interleave(self.shots), torch.stack(query_x),
                             boxes, labels, torch.tensor(chosen, dtype=torch.long), info)

    def sample(self, generator: torch.Generator | None = None) -> DetectionTask:
        """One episode; draws from ``generator`` (default: the source's own)."""
        return self.sample_batch(1, generator).tasks[0]

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> DetectionBatch:
        """``meta_batch`` episodes (the same as that many successive ``sample`` calls)."""
        tasks = _check_count("meta_batch", meta_batch, "sample at least one task")
        _check_generator(generator)
        g = self.generator if generator is None else generator
        seeds = [int(torch.randint(0, 2**62, (1,), generator=g)) for _ in range(tasks)]
        return DetectionBatch([self._episode(s) for s in seeds])

    def fixed_tasks(self, n: int = 100, seed: int = 0) -> list[DetectionTask]:
        """``n`` evaluation episodes that depend on ``seed`` (and the data/config) only; the source's own
        generator is not touched."""
        count = _check_count("n", n, "ask for at least one episode")
        generator = torch.Generator().manual_seed(int(seed))
        return [self.sample(generator) for _ in range(count)]

    def state_dict(self) -> dict[str, Any]:
        """The generator state and the episode shape (checked on load), for exact resume."""
        return {"generator": self.generator.get_state(), "ways": self.ways, "shots": self.shots,
                "queries": self.queries, "num_classes": self.num_classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; the next episodes are exactly those that followed the saved state."""
        if not isinstance(state, dict) or "generator" not in state:
            raise TypeError("state must be a dict from CocoEpisodes.state_dict() (with a 'generator' entry)")
        for key in ("ways", "shots", "queries", "num_classes"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state was saved by a source with {key}={state[key]}, this one has "
                                 f"{key}={getattr(self, key)}; load it into a source built the same way")
        self.generator.set_state(state["generator"])


def coco_sources(root: str | Path | CocoDetection, *, split_file: str | Path | None = None, ways: int,
                 shots: int, queries: int, image_size: int = 256, support_size: int = 64, seed: int = 0,
                 annotations: str = "annotations.json", images: str = "images",
                 mode: str = "RGB", splits: Sequence[str] = SPLITS,
                 ) -> tuple[CocoEpisodes | None, CocoEpisodes | None, CocoEpisodes | None]:
    """Train, val and test ``CocoEpisodes`` (seeds ``seed``, ``seed + 1``, ``seed + 2``) over one shared
    ``CocoDetection`` (``root``, or one already built: then ``annotations``, ``images``, ``mode`` are unused),
    split by ``split_file`` or ``default_category_split(dataset, seed)``; only the parts named in ``splits``
    are built (the others are ``None``), e.g. ``("test",)`` to evaluate another episode shape."""
    dataset = root if isinstance(root, CocoDetection) else CocoDetection(root, annotations, images, mode)
    parts = (default_category_split(dataset, seed) if split_file is None
             else read_category_split(split_file, dataset))
    sources: list[CocoEpisodes | None] = []
    for offset, part in enumerate(SPLITS):
        if part not in splits:
            sources.append(None)
            continue
        try:
            sources.append(CocoEpisodes(dataset, parts[part], ways=ways, shots=shots, queries=queries,
                                        image_size=image_size, support_size=support_size, seed=seed + offset))
        except ValueError as error:
            raise ValueError(f"COCO {part} split: {error}") from None
    return sources[0], sources[1], sources[2]
