"""Synthetic glyphs, Omniglot sets and detection episodes for the detection tests (no data needed)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from attnmeta.data.omniglot import Omniglot
from attnmeta.tasks.detection import DetectionBatch, DetectionTask

Segments = list[tuple[float, float, float, float]]
# strokes (x0, y0, x1, y1) in a unit square with margins, like an Omniglot character image
HOOK: Segments = [(0.3, 0.2, 0.3, 0.8), (0.3, 0.8, 0.75, 0.8), (0.5, 0.2, 0.75, 0.5)]
TRIANGLE: Segments = [(0.5, 0.2, 0.2, 0.75), (0.2, 0.75, 0.8, 0.75), (0.8, 0.75, 0.5, 0.2)]
CROSS: Segments = [(0.2, 0.2, 0.8, 0.8), (0.2, 0.8, 0.8, 0.2)]
GLYPHS = (HOOK, TRIANGLE, CROSS)


def draw(segments: Segments, size: int, width: float = 0.06) -> np.ndarray:
    """``size x size`` image of anti-aliased strokes (ink 1, background 0), stroke half-width relative."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dist = np.full((size, size), np.inf)
    for x0, y0, x1, y1 in segments:
        a, b = np.array([x0, y0]) * size, np.array([x1, y1]) * size
        t = np.clip(((xs - a[0]) * (b[0] - a[0]) + (ys - a[1]) * (b[1] - a[1])) / ((b - a) ** 2).sum(), 0, 1)
        dist = np.minimum(dist, np.hypot(xs - a[0] - t * (b[0] - a[0]), ys - a[1] - t * (b[1] - a[1])))
    return np.clip(width * size + 0.5 - dist, 0.0, 1.0)


def character_strokes(index: int) -> Segments:
    """A distinct random 3-stroke polyline for character ``index`` (seeded by the index)."""
    rng = np.random.default_rng(1000 + index)
    points = rng.uniform(0.25, 0.75, size=(4, 2))
    return [(*points[i], *points[i + 1]) for i in range(3)]


def synthetic_omniglot(alphabets: int = 3, characters: int = 4, drawings: int = 20,
                       size: int = 64) -> Omniglot:
    """An Omniglot set of ``alphabets x characters`` glyphs (``Alpha/character01`` ...), ``drawings`` each,
    uint8 ink 255. Drawing ``j`` of a character is its glyph shifted by ``(j % 5 - 2, j // 5 - 2)`` pixels,
    so every drawing of the set is unique."""
    names = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"][:alphabets]
    images, labels, characters_names = [], [], []
    for a, alphabet in enumerate(names):
        for c in range(characters):
            index = a * characters + c
            glyph = draw(character_strokes(index), size)
            characters_names.append(f"{alphabet}/character{c + 1:02d}")
            for j in range(drawings):
                shifted = np.roll(glyph, (j // 5 - 2, j % 5 - 2), axis=(0, 1))
                images.append(np.round(shifted * 255).astype(np.uint8))
                labels.append(index)
    return Omniglot.from_tensors(torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels),
                                 characters_names)


def glyph_episode(rng: np.random.Generator, *, glyphs: tuple[Segments, ...] = GLYPHS, ways: int = 2,
                  queries: int = 2, canvas: int = 64, sizes: tuple[int, int] = (18, 28),
                  support_size: int = 32, targets: tuple[int, int] = (1, 2)) -> DetectionTask:
    """A 1-shot episode: ``ways`` of ``glyphs`` in a random order as labels, query scenes with ``targets``
    instances at random non-overlapping positions (the glyphs' stroke widths vary a little)."""
    chosen = rng.permutation(len(glyphs))[:ways]
    support = [draw(glyphs[g], support_size, rng.uniform(0.05, 0.07)) for g in chosen]
    images, boxes, labels = [], [], []
    for _ in range(queries):
        scene = np.zeros((canvas, canvas))
        taken: list[tuple[int, int, int]] = []
        image_boxes, image_labels = [], []
        for _ in range(rng.integers(targets[0], targets[1] + 1)):
            label = int(rng.integers(ways))
            side = int(rng.integers(sizes[0], sizes[1] + 1))
            for _ in range(50):
                x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
                if all(x + side <= tx or tx + ts <= x or y + side <= ty or ty + ts <= y
                       for tx, ty, ts in taken):
                    break
            else:
                continue
            taken.append((x, y, side))
            glyph = draw(glyphs[chosen[label]], side, rng.uniform(0.05, 0.07))
            scene[y:y + side, x:x + side] = np.maximum(scene[y:y + side, x:x + side], glyph)
            rows, cols = np.nonzero(glyph > 0.5)
            image_boxes.append([x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1])
            image_labels.append(label)
        images.append(scene)
        boxes.append(torch.tensor(image_boxes, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(image_labels, dtype=torch.long))
    return DetectionTask(
        support_x=torch.tensor(np.stack(support), dtype=torch.float32)[:, None],
        support_y=torch.arange(ways), query_x=torch.tensor(np.stack(images), dtype=torch.float32)[:, None],
        query_boxes=boxes, query_labels=labels, classes=torch.tensor(chosen, dtype=torch.long))


def meta_train(model: torch.nn.Module, steps: int, lr: float = 3e-3, episodes: int = 2,
               seed: int = 0) -> None:
    """``steps`` Adam steps of ``model.meta_loss`` on meta-batches of ``episodes`` fresh 2-way glyph
    episodes (numpy seed ``seed``)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        out = model.meta_loss(DetectionBatch([glyph_episode(rng) for _ in range(episodes)]))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Autouse where imported: the tiny models of these tests run fastest (and reproducibly) on one thread,
    whatever else the machine runs (two threads on a busy machine can be ten times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: CPU always; a CUDA device when there is one (the detectors must keep every tensor on the episode's device).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs a CUDA device"))]
