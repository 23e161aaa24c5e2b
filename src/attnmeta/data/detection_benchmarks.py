"""Few-shot detection benchmarks by name: ``omniglot-scenes`` and ``coco`` (any data in COCO format).

``make_detection_benchmark(name, root=..., ways=..., shots=..., queries=..., seed=..., **options)`` returns a
``DetectionBenchmark``: train / validation / test episode sources (``DetectionTaskSource``), the query
images' shape and the preprocessing a predictor applies to new images (``preprocessing``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnmeta.data.safe_io import MissingDataError

DETECTION_BENCHMARKS = ("omniglot-scenes", "coco")


@dataclass
class DetectionBenchmark:
    """Episode sources of a detection benchmark.

    ``preprocessing``: ``mode`` ("L" or "RGB"), ``support_size`` (support crops' side, pixels),
    ``image_size`` (query images' side, pixels), ``invert`` (images are stored ink-bright: a predictor turns
    dark-on-light inputs over).
    """

    name: str
    train: Any
    val: Any
    test: Any
    input_shape: tuple[int, int, int]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    task_type: str = "detection"
    default_backbone: str | None = None


def make_detection_benchmark(name: str, *, root: str | Path | None, ways: int, shots: int, queries: int,
                             seed: int = 0, image_size: int | None = None,
                             splits: tuple[str, ...] = ("train", "val", "test"), **options: Any
                             ) -> DetectionBenchmark:
    """Build ``omniglot-scenes`` (``root``: the Omniglot archives; ``options``: ``SceneOptions`` fields) or
    ``coco`` (``root``: ``images/`` and ``annotations.json``; options ``split_file``, ``support_size``,
    ``mode``). ``splits``: the parts to build (COCO's others are ``None``; Omniglot scenes build all)."""
    if name not in DETECTION_BENCHMARKS:
        raise ValueError(f"unknown detection benchmark {name!r}; choose one of: "
                         f"{', '.join(DETECTION_BENCHMARKS)}")
    if root is None:
        raise MissingDataError(f"benchmark {name!r} needs its data folder: pass --root DIR (or set "
                               "ATTNMETA_DATA)")
    if name == "omniglot-scenes":
        return _omniglot_scenes(root, ways, shots, queries, seed, image_size, options)
    return _coco(root, ways, shots, queries, seed, image_size, splits, options)


def _omniglot_scenes(root: str | Path, ways: int, shots: int, queries: int, seed: int, image_size: int | None,
                     options: dict[str, Any]) -> DetectionBenchmark:
    from attnmeta.data.omniglot_scenes import omniglot_scene_sources, scene_options

    if image_size is not None:
        options = {**options, "canvas": image_size}
    scene = scene_options(options)
    train, val, test = omniglot_scene_sources(root, ways=ways, shots=shots, queries=queries, seed=seed,
                                              options=scene)
    pre = {"mode": "L", "support_size": scene.support_size, "image_size": scene.canvas, "invert": True}
    return DetectionBenchmark("omniglot-scenes", train, val, test, (1, scene.canvas, scene.canvas), pre)


def _coco(root: str | Path, ways: int, shots: int, queries: int, seed: int, image_size: int | None,
          splits: tuple[str, ...], options: dict[str, Any]) -> DetectionBenchmark:
    from attnmeta.data.coco_detection import CocoDetection
    from attnmeta.data.coco_episodes import coco_sources

    known = {"split_file", "support_size", "mode"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"benchmark 'coco' takes no option {unknown[0]!r}; valid: "
                         f"{', '.join(sorted(known))}")
    size, support, mode = image_size or 256, int(options.get("support_size", 64)), options.get("mode", "RGB")
    dataset = CocoDetection(root, mode=mode)
    train, val, test = coco_sources(dataset, split_file=options.get("split_file"), ways=ways, shots=shots,
                                    queries=queries, image_size=size, support_size=support, seed=seed,
                                    splits=splits)
    channels = 1 if mode == "L" else 3
    pre = {"mode": mode, "support_size": support, "image_size": size, "invert": False}
    return DetectionBenchmark("coco", train, val, test, (channels, size, size), pre)
