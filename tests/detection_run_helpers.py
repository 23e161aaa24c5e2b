"""A tiny COCO-format data set and run configs for the detection run, predictor and CLI tests.

Six categories of coloured squares on a grey background (their grey values differ too, so ``mode="L"`` runs
see them), two per image, each category in four images; ``split.json`` puts two categories in each of
train / val / test, so 2-way 1-shot 2-query episodes can be drawn from every part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from attnmeta.cli import main
from attnmeta.train.config import RunConfig

#: category index -> RGB colour (grey values 76, 150, 29, 226, 105, 179)
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))
BACKGROUND = (40, 40, 40)
IMAGES = 12
#: the smallest attention detector (fast on CPU)
TINY_DETECTOR = {"hidden": 16, "head_hidden": 16, "heads": 2, "key_size": 8}


def _objects(i: int) -> list[tuple[int, int, int, int]]:
    """``(category, x, y, side)`` of image ``i``: categories ``i % 6`` and ``(i + 3) % 6``."""
    side = 14 + (i % 3) * 4
    return [(i % 6, 4, 4 + (i * 5) % 24, side), ((i + 3) % 6, 40, 44 - (i * 3) % 20, side)]


def _size(i: int) -> tuple[int, int]:
    return (64, 64) if i % 4 else (72, 68)  # (width, height): some images are not square


def draw_scene(objects: list[tuple[int, int, int, int]], size: tuple[int, int] = (64, 64),
               mode: str = "RGB") -> Image.Image:
    """An image of ``size`` (width, height) with a square of side ``side`` at ``(x, y)`` per object."""
    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    for category, x, y, side in objects:
        pixels[y:y + side, x:x + side] = COLOURS[category]
    return Image.fromarray(pixels, "RGB").convert(mode)


def draw_crop(category: int, side: int = 16, height: int | None = None) -> Image.Image:
    """An RGB support crop: the category's square with a 2-pixel background margin (``side`` x ``height``)."""
    height = side if height is None else height
    pixels = np.empty((height, side, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    pixels[2:height - 2, 2:side - 2] = COLOURS[category]
    return Image.fromarray(pixels, "RGB")


def write_coco(root: Path) -> Path:
    """Write ``images/``, ``annotations.json`` and ``split.json`` into ``root``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(IMAGES):
        width, height = _size(i)
        draw_scene(_objects(i), (width, height)).save(root / "images" / f"img{i:02d}.png")
        images.append({"id": 10 + i, "file_name": f"img{i:02d}.png", "width": width, "height": height})
        for category, x, y, side in _objects(i):
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + i, "category_id": category + 1,
                                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0})
    categories = [{"id": c + 1, "name": f"colour{c}"} for c in range(len(COLOURS))]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    (root / "split.json").write_text(json.dumps({"train": [1, 2], "val": [3, 4], "test": [5, 6]}))
    return root


def coco_config(root: Path, run_dir: Path, **changes: Any) -> RunConfig:
    """A tiny 2-way 1-shot 2-query attention-detector run on ``root`` (grey images 64 px, crops 16 px)."""
    values: dict[str, Any] = dict(
        benchmark="coco", root=str(root), algo="attention-detector", algo_options=dict(TINY_DETECTOR),
        benchmark_options={"split_file": str(root / "split.json"), "support_size": 16, "mode": "L"},
        image_size=64, ways=2, shots=1, queries=2, steps=2, eval_every=2, eval_episodes=2, test_episodes=2,
        meta_batch=1, threads=1, plot=False, run_dir=str(run_dir))
    return RunConfig(**{**values, **changes})


def error_of(args: list[str], capsys: Any) -> tuple[int, str]:
    """Exit status and the ``attnmeta ...: error:`` lines of ``attnmeta ARGS`` (no traceback allowed)."""
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, "".join(line for line in err.splitlines(keepends=True) if line.startswith("attnmeta "))
