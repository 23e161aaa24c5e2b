"""Few-shot detection metrics: COCO mAP (pycocotools) per episode, mean and 95% CI over fixed episodes.

AP is COCO's 101-point interpolated average precision, computed by ``pycocotools.cocoeval.COCOeval`` on a
ground truth built in memory from one episode's query boxes (area range "all", at most 100 boxes per image
and class). ``map50`` is AP at IoU 0.5, ``map`` the mean over IoU 0.50:0.05:0.95; both are averaged over the
episode's classes that have ground truth (a class without ground-truth boxes is left out, as COCO does).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attnmeta.eval.protocol import EvalResult
from attnmeta.learners.detection.base import DetectionLearner
from attnmeta.tasks.detection import Detections, DetectionTask


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    """``[M, 4]`` ``(x0, y0, x1, y1)`` -> COCO's ``[x, y, w, h]`` lists (pixels)."""
    b = boxes.detach().double().cpu().reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1).tolist()


def _coco_ground_truth(task: DetectionTask) -> dict[str, Any]:
    """The episode's query boxes as a COCO data set dict (image ids ``1..Q``, category ids ``label + 1``).

    Ids start at 1: COCOeval marks an unmatched box with id 0.
    """
    height, width = int(task.query_x.shape[-2]), int(task.query_x.shape[-1])
    images = [{"id": i + 1, "width": width, "height": height} for i in range(len(task.query_boxes))]
    annotations: list[dict[str, Any]] = []
    for i, (boxes, labels) in enumerate(zip(task.query_boxes, task.query_labels)):
        for box, label in zip(_xywh(boxes), labels.detach().cpu().tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": c + 1, "name": str(c)} for c in range(task.ways)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_results(detections: Sequence[Detections]) -> list[dict[str, Any]]:
    """Detections of the query images as COCO result dicts."""
    results: list[dict[str, Any]] = []
    for i, det in enumerate(detections):
        for box, score, label in zip(_xywh(det.boxes), det.scores.detach().cpu().tolist(),
                                     det.labels.detach().cpu().tolist()):
            results.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": box,
                            "score": float(score)})
    return results


def episode_map(task: DetectionTask, detections: Sequence[Detections]) -> dict[str, float]:
    """``{"map50": AP@0.5, "map": AP@[.5:.95]}`` of one episode, both in [0, 1].

    Args:
        task: the episode; its ``query_boxes``/``query_labels`` are the ground truth.
        detections: one ``Detections`` per query image (``len(task.query_boxes)`` of them).
    No detections at all, or no ground-truth box at all, gives 0.0.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # an optional dependency: the `detection` extra
        raise ImportError("detection mAP needs pycocotools: pip install 'attnmeta[detection]'") from e

    if len(detections) != len(task.query_boxes):
        raise ValueError(f"{len(detections)} Detections for {len(task.query_boxes)} query images")
    results = _coco_results(detections)
    if not results or not any(int(b.shape[0]) for b in task.query_boxes):
        return {"map50": 0.0, "map": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = _coco_ground_truth(task)
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(results), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
    params = coco_eval.params
    # precision: [T iou thresholds, R=101 recall points, K classes, A area ranges, M maxDets]
    area, max_dets = params.areaRngLbl.index("all"), params.maxDets.index(100)
    precision = coco_eval.eval["precision"][:, :, :, area, max_dets]
    at50 = precision[int(np.argmin(np.abs(params.iouThrs - 0.5)))]

    def mean(p: np.ndarray) -> float:
        valid = p[p > -1]  # -1: a class without ground truth
        return float(valid.mean()) if valid.size else 0.0

    return {"map50": mean(at50), "map": mean(precision)}


@dataclass
class DetectionEvalResult:
    """Per-episode mAP@0.5 and mAP@[.5:.95] with their summaries, and the detector's time per query image."""

    map50: EvalResult
    map: EvalResult
    ms_per_image: float

    def __str__(self) -> str:
        return f"{self.map50}; {self.map}; {self.ms_per_image:.1f} ms/image"

    def to_dict(self) -> dict[str, Any]:
        return {"map50": self.map50.to_dict(), "map": self.map.to_dict(), "ms_per_image": self.ms_per_image}


def evaluate_detection(learner: DetectionLearner, tasks: Iterable[DetectionTask], *,
                       max_detections: int = 100, progress: bool = False,
                       device: str | torch.device | None = None, desc: str = "eval") -> DetectionEvalResult:
    """Evaluate a few-shot detector on fixed episodes: COCO mAP per episode, then mean and 95% CI.

    The learner runs in eval mode under ``torch.no_grad`` (its mode is restored afterwards). ``device`` moves
    each episode there first (``None``: as given). Timing covers ``detect_task`` only, per query image.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no episodes to evaluate; pass at least one DetectionTask")
    was_training = learner.training
    learner.eval()
    map50: list[float] = []
    map_all: list[float] = []
    seconds, images = 0.0, 0
    try:
        with torch.no_grad():
            for task in tqdm(tasks, desc=desc, disable=not progress, leave=False):
                if device is not None:
                    task = task.to(device)
                start = time.perf_counter()
                detections = list(learner.detect_task(task, max_detections))
                if task.query_x.is_cuda:
                    torch.cuda.synchronize(task.query_x.device)
                seconds += time.perf_counter() - start
                images += int(task.query_x.shape[0])
                values = episode_map(task, detections)
                map50.append(values["map50"])
                map_all.append(values["map"])
    finally:
        learner.train(was_training)
    per_task = seconds / len(tasks)
    return DetectionEvalResult(EvalResult("map50", map50, per_task), EvalResult("map", map_all, per_task),
                               1000.0 * seconds / max(1, images))
