"""Few-shot detection episodes: find every instance of N new classes in query images from K crops each.

``DetectionTask`` is the contract between detection task sources (``attnmeta.data.omniglot_scenes``,
``attnmeta.data.coco_detection``) and detection learners (``attnmeta.learners.detection``); ``Detections``
is what a learner returns for one image. Boxes are ``(x0, y0, x1, y1)`` in pixels of the image they belong
to, ``x0 < x1`` and ``y0 < y1``, the pixel grid's corners (a box covering pixel columns 3..5 is
``x0 = 3, x1 = 6``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class DetectionTask:
    """One detection episode.

    Attributes:
        support_x: ``[N*K, C, s, s]`` float support crops in [0, 1] (one object each, resized to ``s x s``).
        support_y: ``[N*K]`` int64 labels in ``0..N-1``.
        query_x: ``[Q, C, H, W]`` float query images in [0, 1].
        query_boxes: ``Q`` float tensors ``[M_i, 4]``: the boxes of the target classes in query image ``i``
            (pixels, ``(x0, y0, x1, y1)``); instances of other classes are not listed (they are background).
        query_labels: ``Q`` int64 tensors ``[M_i]``, labels in ``0..N-1`` of those boxes.
        classes: int64 ``[N]``, the data set's class (category) id of each task label.
        info: free metadata (e.g. ``{"scene_seed": 3}``).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_boxes: list[Tensor]
    query_labels: list[Tensor]
    classes: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ways(self) -> int:
        return int(self.classes.numel())

    @property
    def shots(self) -> int:
        return int(self.support_y.numel()) // max(1, self.ways)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DetectionTask:
        """Move the tensors to ``device``; ``dtype`` applies to the images and boxes (floats) only."""

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device)

        return DetectionTask(move(self.support_x), move(self.support_y), move(self.query_x),
                             [move(b) for b in self.query_boxes], [move(lab) for lab in self.query_labels],
                             self.classes, dict(self.info))


@dataclass(frozen=True)
class DetectionBatch:
    """A meta-batch of detection episodes (their boxes differ in number, so they are not stacked)."""

    tasks: list[DetectionTask]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[DetectionTask]:
        return iter(self.tasks)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DetectionBatch:
        return DetectionBatch([t.to(device, dtype) for t in self.tasks])


@dataclass(frozen=True)
class Detections:
    """A detector's boxes for one image, best score first.

    Attributes:
        boxes: float ``[M, 4]`` ``(x0, y0, x1, y1)`` in pixels of the image.
        scores: float ``[M]`` confidence in [0, 1].
        labels: int64 ``[M]`` task labels in ``0..N-1``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())

    @staticmethod
    def empty() -> Detections:
        return Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))

    def top(self, max_detections: int | None = None, score_threshold: float = 0.0) -> Detections:
        """The ``max_detections`` best boxes with a score of at least ``score_threshold``."""
        order = torch.argsort(self.scores, descending=True, stable=True)
        order = order[self.scores[order] >= score_threshold]
        if max_detections is not None:
            order = order[:max_detections]
        return Detections(self.boxes[order], self.scores[order], self.labels[order])


class DetectionTaskSource(Protocol):
    """What the trainer needs of a detection task family (the same protocol as classification sources)."""

    ways: int
    shots: int
    queries: int

    def sample(self, generator: torch.Generator | None = None) -> DetectionTask: ...

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> DetectionBatch: ...

    def fixed_tasks(self, n: int = 100, seed: int = 0) -> list[DetectionTask]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def box_problem(box: Sequence[float], width: int, height: int) -> str | None:
    """Why ``box`` ``(x0, y0, x1, y1)`` is not a valid box of a ``width x height`` image, or ``None``."""
    if len(box) != 4 or not all(isinstance(v, (int, float)) and v == v for v in box):
        return f"a box is 4 numbers (x0, y0, x1, y1), got {list(box)!r}"
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        return f"box {[x0, y0, x1, y1]} has x1 <= x0 or y1 <= y0 (boxes are (x0, y0, x1, y1))"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return f"box {[x0, y0, x1, y1]} lies outside the {width}x{height} image"
    return None


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of boxes ``a`` ``[n, 4]`` and ``b`` ``[m, 4]``: ``[n, m]``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    iou = box_iou(boxes[order], boxes[order])
    keep = torch.ones(order.numel(), dtype=torch.bool)
    for i in range(order.numel()):
        if keep[i]:
            keep[i + 1:] &= iou[i, i + 1:] <= iou_threshold
    return order[keep]
