"""Few-shot detection episodes over a ``CocoDetection`` data set (``attnmeta.data.coco_detection``).

``CocoEpisodes`` draws N-way K-shot episodes (support crops cut out around instances, letterboxed query
images with the boxes of the episode's categories); ``coco_sources`` builds the train / validation / test
sources of a category split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from attnmeta.data.coco_detection import (
    SPLITS,
    CocoDetection,
    _id_list,
    _is_int,
    default_category_split,
    read_category_split,
)
from attnmeta.tasks.detection import DetectionBatch, DetectionTask
from attnmeta.tasks.sampler_inputs import _check_count, _check_generator

__all__ = ["CocoEpisodes", "coco_sources", "support_crop", "letterbox"]


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
