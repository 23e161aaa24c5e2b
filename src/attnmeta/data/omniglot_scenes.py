"""Omniglot scenes: few-shot detection episodes composed from real Omniglot drawings.

A scene is a ``canvas x canvas`` image holding several Omniglot characters at random positions, sizes and
small rotations: instances of the episode's target classes (drawings the support set does not use) and
distractors (other characters, from the target characters' alphabets where possible), plus optional
clutter (random pen strokes and salt noise). Ink is 1, background 0. The ground-truth box of an instance is
the tight box around its ink. Support crops are whole single-character drawings (with their margins),
resized to ``support_size``. ``task.info["other_boxes"]`` holds each query scene's distractor boxes
``[D, 4]`` (background for the episode; a detector may use them in training, e.g. as objects of no class).

Splits (``omniglot_scene_sources``): training scenes use background-set alphabets except
``VAL_ALPHABETS`` (validation); test scenes use only the evaluation set (20 alphabets, never seen in
training or model selection).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnmeta.data.omniglot import Omniglot
from attnmeta.tasks.detection import DetectionBatch, DetectionTask

#: Background-set alphabets held out for validation scenes (the other 26 train).
VAL_ALPHABETS = ("Bengali", "Futurama", "Hebrew", "Tifinagh")
#: Decoded resolution of the drawings that scenes are rendered from [pixels].
SOURCE_SIZE = 64


@dataclass(frozen=True)
class SceneOptions:
    """How scenes look.

    Attributes:
        canvas: scene side [pixels].
        support_size: side of the support crops [pixels].
        sizes: ``(min, max)`` side of a pasted drawing (character with its margins) [pixels].
        max_rotation: rotations are uniform in ``[-max_rotation, max_rotation]`` [degrees].
        targets: ``(min, max)`` target instances per scene.
        distractors: ``(min, max)`` distractor characters per scene.
        clutter: ``(min, max)`` random pen strokes per scene.
        noise: fraction of background pixels turned on (salt noise).
        max_overlap: largest IoU between the squares of two pasted drawings.
    """

    canvas: int = 128
    support_size: int = 32
    sizes: tuple[int, int] = (20, 56)
    max_rotation: float = 15.0
    targets: tuple[int, int] = (1, 3)
    distractors: tuple[int, int] = (1, 3)
    clutter: tuple[int, int] = (0, 2)
    noise: float = 0.002
    max_overlap: float = 0.15

    def __post_init__(self) -> None:
        for name in ("sizes", "targets", "distractors", "clutter"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"scene option {name} must be [min, max] with 0 <= min <= max, got "
                                 f"{[low, high]}")
        if self.targets[0] < 1:
            raise ValueError("scene option targets: every scene holds at least one target (min >= 1)")
        if not (8 <= self.sizes[0] and self.sizes[1] <= self.canvas):
            raise ValueError(f"scene option sizes must lie in [8, canvas={self.canvas}], got "
                             f"{list(self.sizes)}")
        if self.support_size < 8:
            raise ValueError(f"support_size must be at least 8 pixels, got {self.support_size}")
        if not 0.0 <= self.noise < 0.5 or not 0.0 <= self.max_overlap < 1.0:
            raise ValueError("scene options noise and max_overlap must lie in [0, 0.5) and [0, 1)")


class OmniglotScenes:
    """Detection episodes over ``characters`` of an Omniglot set (the ``DetectionTaskSource`` protocol).

    Args:
        data: Omniglot set decoded at ``SOURCE_SIZE`` pixels, ink 255 (``invert=True``).
        characters: character ids the episodes draw their target classes from.
        ways / shots / queries: target classes, support crops per class, query scenes per episode.
        options: ``SceneOptions``.
        seed: seed of the sampler's own generator.
    """

    def __init__(self, data: Omniglot, characters: Tensor, *, ways: int, shots: int, queries: int,
                 options: SceneOptions | None = None, seed: int = 0) -> None:
        self.options = options or SceneOptions()
        self.ways, self.shots, self.queries = ways, shots, queries
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        drawings = torch.bincount(data.labels, minlength=data.num_characters)
        if shots >= int(drawings.min()):
            raise ValueError(f"shots={shots} leaves no drawing for the scenes: Omniglot has "
                             f"{int(drawings.min())} drawings per character; use fewer shots")
        self.characters = characters.long()
        if ways > self.characters.numel():
            raise ValueError(f"ways={ways} but this split has only {self.characters.numel()} characters")
        self.images = data.float_images()  # [n, 1, S, S], ink 1
        self.support_images = F.interpolate(self.images, size=self.options.support_size, mode="area")
        order = torch.argsort(data.labels, stable=True)
        self.by_character = list(torch.split(order, drawings.tolist()))
        self.alphabet = data.character_alphabet
        self.num_characters = data.num_characters
        self.generator = torch.Generator().manual_seed(int(seed))

    def __repr__(self) -> str:
        return (f"OmniglotScenes({self.characters.numel()} characters, {self.ways}-way {self.shots}-shot, "
                f"{self.queries} scenes of {self.options.canvas}px)")

    # -- the task-source protocol --------------------------------------------------------------------
    def sample(self, generator: torch.Generator | None = None) -> DetectionTask:
        g = self.generator if generator is None else generator
        pick = torch.randperm(self.characters.numel(), generator=g)[: self.ways]
        classes = self.characters[pick]
        support, scene_pool = [], []
        for c in classes.tolist():
            drawings = self.by_character[c][torch.randperm(len(self.by_character[c]), generator=g)]
            support.append(drawings[: self.shots])
            scene_pool.append(drawings[self.shots:])
        support_x = self.support_images[torch.cat(support)]
        support_y = torch.arange(self.ways).repeat_interleave(self.shots)
        scenes = [self._scene(classes, scene_pool, g) for _ in range(self.queries)]
        images, boxes, labels, others = zip(*scenes)
        return DetectionTask(support_x, support_y, torch.stack(images), list(boxes), list(labels), classes,
                             {"other_boxes": list(others)})

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> DetectionBatch:
        return DetectionBatch([self.sample(generator) for _ in range(meta_batch)])

    def fixed_tasks(self, n: int = 100, seed: int = 0) -> list[DetectionTask]:
        """``n`` episodes that depend only on ``seed`` and the source's data and shape."""
        if n < 1:
            raise ValueError(f"ask for at least one episode, got n={n}")
        generator = torch.Generator().manual_seed(int(seed))
        return [self.sample(generator) for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "ways": self.ways, "shots": self.shots,
                "queries": self.queries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("ways", "shots", "queries"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"state was saved by a scene source with {key}={state.get(key)}, this one "
                                 f"has {key}={getattr(self, key)}; load it into a source built the same way")
        self.generator.set_state(state["generator"])

    # -- one scene -----------------------------------------------------------------------------------
    def _scene(self, classes: Tensor, pools: list[Tensor], g: torch.Generator
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One query scene: ``[1, canvas, canvas]``, target boxes ``[M, 4]``, labels ``[M]``, and the
        distractors' boxes ``[D, 4]``."""
        o = self.options
        canvas = torch.zeros(1, o.canvas, o.canvas)
        squares: list[tuple[int, int, int]] = []
        boxes, labels = [], []
        for label in self._target_labels(g):
            pool = pools[label]
            drawing = int(pool[_randint(0, len(pool) - 1, g)])
            box = self._paste(canvas, drawing, squares, g)
            if box is not None:
                boxes.append(box)
                labels.append(label)
        others = []
        for character in self._distractors(classes, g):
            drawings = self.by_character[character]
            box = self._paste(canvas, int(drawings[_randint(0, len(drawings) - 1, g)]), squares, g)
            if box is not None:
                others.append(box)
        _clutter(canvas, _randint(*o.clutter, g), o.noise, g)
        box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        other_tensor = torch.tensor(others, dtype=torch.float32).reshape(-1, 4)
        return canvas, box_tensor, torch.tensor(labels, dtype=torch.long), other_tensor

    def _target_labels(self, g: torch.Generator) -> list[int]:
        count = _randint(*self.options.targets, g)
        return torch.randint(self.ways, (count,), generator=g).tolist()

    def _distractors(self, classes: Tensor, g: torch.Generator) -> list[int]:
        """Characters outside the episode, each from a target's alphabet when that alphabet has others."""
        out = []
        episode = set(classes.tolist())
        for _ in range(_randint(*self.options.distractors, g)):
            alphabet = self.alphabet[classes[_randint(0, len(classes) - 1, g)]]
            members = torch.nonzero(self.alphabet == alphabet).flatten().tolist()
            same = [c for c in members if c not in episode]
            choices = same or [c for c in range(self.num_characters) if c not in episode]
            out.append(choices[_randint(0, len(choices) - 1, g)])
        return out

    def _paste(self, canvas: Tensor, drawing: int, squares: list[tuple[int, int, int]],
               g: torch.Generator) -> list[float] | None:
        """Paste a drawing (random size, rotation, free position) with a max; its tight ink box or None."""
        o = self.options
        size = _randint(*o.sizes, g)
        angle = (torch.rand((), generator=g).item() * 2 - 1) * o.max_rotation
        for _ in range(20):
            x, y = _randint(0, o.canvas - size, g), _randint(0, o.canvas - size, g)
            if all(_square_iou((x, y, size), s) <= o.max_overlap for s in squares):
                break
        else:
            return None
        patch = render(self.images[drawing], size, angle)
        ink = torch.nonzero(patch[0] > 0.5)
        if ink.numel() == 0:
            return None
        squares.append((x, y, size))
        region = canvas[:, y: y + size, x: x + size]
        torch.maximum(region, patch, out=region)
        (r0, c0), (r1, c1) = ink.min(0).values.tolist(), ink.max(0).values.tolist()
        return [float(x + c0), float(y + r0), float(x + c1 + 1), float(y + r1 + 1)]


def render(drawing: Tensor, size: int, angle: float) -> Tensor:
    """A drawing ``[1, S, S]`` resized to ``size`` (area averaging) and turned by ``angle`` degrees about
    its centre (bilinear): ``[1, size, size]``."""
    small = F.interpolate(drawing[None], size=size, mode="area")
    if angle == 0:
        return small[0]
    a = math.radians(angle)
    theta = torch.tensor([[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]])
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    return F.grid_sample(small, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def _clutter(canvas: Tensor, strokes: int, noise: float, g: torch.Generator) -> None:
    """Random pen strokes (2-segment polylines, 10-40 px a segment) and salt noise, in place."""
    side = canvas.shape[-1]
    for _ in range(strokes):
        point = torch.rand(2, generator=g) * side
        for _ in range(2):
            angle = torch.rand((), generator=g).item() * 2 * math.pi
            length = 10 + 30 * torch.rand((), generator=g).item()
            end = point + length * torch.tensor([math.cos(angle), math.sin(angle)])
            t = torch.linspace(0, 1, int(length * 2) + 2)[:, None]
            pts = (point + t * (end - point)).round().long()
            inside = ((pts >= 0) & (pts < side)).all(1)
            canvas[0, pts[inside, 1], pts[inside, 0]] = 1.0
            point = end
    if noise > 0:
        salt = torch.rand(canvas.shape, generator=g) < noise
        canvas[salt] = 1.0


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """Uniform integer in ``[low, high]`` (both included)."""
    return int(torch.randint(low, high + 1, (), generator=g))


def _square_iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    (xa, ya, sa), (xb, yb, sb) = a, b
    w = max(0, min(xa + sa, xb + sb) - max(xa, xb))
    h = max(0, min(ya + sa, yb + sb) - max(ya, yb))
    inter = w * h
    return inter / (sa * sa + sb * sb - inter)


def scene_splits(background: Omniglot, evaluation: Omniglot) -> dict[str, Tensor]:
    """Character ids of each split: ``train`` and ``val`` of the background set (``VAL_ALPHABETS`` held
    out), ``test`` the whole evaluation set."""
    held_out = torch.tensor([a in VAL_ALPHABETS for a in background.alphabets])
    val = held_out[background.character_alphabet]
    ids = torch.arange(background.num_characters)
    return {"train": ids[~val], "val": ids[val], "test": torch.arange(evaluation.num_characters)}


def omniglot_scene_sources(root: str | Path, *, ways: int, shots: int, queries: int, seed: int = 0,
                           options: SceneOptions | None = None, cache_dir: str | Path | None = None,
                           ) -> tuple[OmniglotScenes, OmniglotScenes, OmniglotScenes]:
    """Train / validation / test scene sources (seeds ``seed``, ``seed + 1``, ``seed + 2``) from the
    Omniglot archives in ``root``."""
    background = Omniglot(root, background=True, image_size=SOURCE_SIZE, cache_dir=cache_dir)
    evaluation = Omniglot(root, background=False, image_size=SOURCE_SIZE, cache_dir=cache_dir)
    parts = scene_splits(background, evaluation)
    shape: dict[str, Any] = {"ways": ways, "shots": shots, "queries": queries, "options": options}
    return (OmniglotScenes(background, parts["train"], seed=seed, **shape),
            OmniglotScenes(background, parts["val"], seed=seed + 1, **shape),
            OmniglotScenes(evaluation, parts["test"], seed=seed + 2, **shape))


def scene_options(values: dict[str, Any]) -> SceneOptions:
    """``SceneOptions`` from a config mapping (lists become tuples); unknown keys are a ``ValueError``."""
    known = set(SceneOptions.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown scene option {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                              for k, v in values.items()}
    return SceneOptions(**fields)
