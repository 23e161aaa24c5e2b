"""COCO mAP of detection episodes against values derived by hand from COCO's 101-point interpolated AP.

With recall thresholds r = 0, 0.01, ..., 1 and the precision made monotone (max to the right), AP is the mean
over the 101 thresholds of the precision at the first detection rank reaching recall r (0 past the last).
"""

from __future__ import annotations

import math

import pytest
import torch

from attnmeta.eval.detection import DetectionEvalResult, episode_map, evaluate_detection
from attnmeta.eval.protocol import EvalResult
from attnmeta.learners.detection.base import DetectionLearner
from attnmeta.tasks.detection import Detections, DetectionTask

pytest.importorskip("pycocotools")

A = [10.0, 10.0, 30.0, 30.0]
B = [50.0, 40.0, 70.0, 64.0]
C = [5.0, 70.0, 25.0, 90.0]


def make_task(boxes: list[list[list[float]]], labels: list[list[int]], ways: int = 2,
              size: int = 100) -> DetectionTask:
    """An episode with ``len(boxes)`` blank ``size x size`` query images and the given ground truth."""
    q = len(boxes)
    return DetectionTask(
        support_x=torch.zeros(ways, 1, 8, 8), support_y=torch.arange(ways),
        query_x=torch.zeros(q, 1, size, size),
        query_boxes=[torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        query_labels=[torch.tensor(lab, dtype=torch.long) for lab in labels],
        classes=torch.arange(ways))


def dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores),
                      torch.tensor(labels, dtype=torch.long))


def check(values: dict[str, float], map50: float, map_all: float) -> None:
    assert set(values) == {"map50", "map"}
    assert values["map50"] == pytest.approx(map50, abs=1e-9)
    assert values["map"] == pytest.approx(map_all, abs=1e-9)


def test_perfect_detections_score_one() -> None:
    task = make_task([[A, B], [C]], [[0, 1], [1]])
    out = [dets([A, B], [0.9, 0.8], [0, 1]), dets([C], [0.7], [1])]
    check(episode_map(task, out), 1.0, 1.0)


def test_no_detections_score_zero() -> None:
    task = make_task([[A, B]], [[0, 1]])
    check(episode_map(task, [Detections.empty()]), 0.0, 0.0)


def test_half_recall_is_51_of_101() -> None:
    # 2 GT boxes of class 0, one found (best score), nothing else:
    # precision 1 at r <= 0.5 (51 points), 0 after
    task = make_task([[A, B]], [[0, 0]], ways=1)
    check(episode_map(task, [dets([A], [0.9], [0])]), 51 / 101, 51 / 101)


def test_iou_between_thresholds() -> None:
    # IoU 0.625 (box of 20 x 12.5 inside the 20 x 20 GT): a match at IoU 0.50, 0.55, 0.60 only -> 3 of 10
    task = make_task([[A]], [[0]], ways=1)
    check(episode_map(task, [dets([[10.0, 10.0, 30.0, 22.5]], [1.0], [0])]), 1.0, 0.3)


def test_false_positive_ranked_above_true_positive() -> None:
    # ranks: FP (precision 0, recall 0), TP (precision 1/2, recall 1); monotone precision 1/2 everywhere
    task = make_task([[A]], [[0]], ways=1)
    check(episode_map(task, [dets([C, A], [0.9, 0.8], [0, 0])]), 0.5, 0.5)


def test_true_positive_ranked_above_false_positive() -> None:
    # the FP ranks after full recall was reached: it costs nothing
    task = make_task([[A]], [[0]], ways=1)
    check(episode_map(task, [dets([A, C], [0.9, 0.8], [0, 0])]), 1.0, 1.0)


def test_wrong_label_is_a_false_positive() -> None:
    task = make_task([[A]], [[0]])
    check(episode_map(task, [dets([A], [0.9], [1])]), 0.0, 0.0)


def test_two_classes_averaged_and_class_without_ground_truth_excluded() -> None:
    # class 0: perfect (AP 1); class 1: one of two GT boxes (over two images) found (51/101);
    # class 2 has no GT: its detection is left out of the mean (it would pull it down as a class with AP 0)
    task = make_task([[A, B], [C]], [[0, 1], [1]], ways=3)
    out = [dets([A, B, C], [0.9, 0.8, 0.95], [0, 1, 2]), Detections.empty()]
    expected = (1.0 + 51 / 101) / 2
    check(episode_map(task, out), expected, expected)


def test_classes_across_images() -> None:
    # class 0 GT in image 0 and image 1; the same box found in both with the ranks crossing images
    task = make_task([[A], [A]], [[0], [0]], ways=1)
    out = [dets([A], [0.5], [0]), dets([A, B], [0.9, 0.7], [0, 0])]
    # pooled ranks: 0.9 TP, 0.7 FP (B), 0.5 TP -> recall 0.5 at precision 1, recall 1 at precision 2/3:
    # 51 points at 1, 50 points at 2/3
    expected = (51 + 50 * 2 / 3) / 101
    check(episode_map(task, out), expected, expected)


def test_detection_count_must_match_images() -> None:
    task = make_task([[A], [B]], [[0], [1]])
    with pytest.raises(ValueError, match="query images"):
        episode_map(task, [dets([A], [0.9], [0])])


def test_eval_result_prints_percentages() -> None:
    assert str(EvalResult("map50", [0.8, 0.824], 0.1)).startswith("mAP@0.5 81.20 +/- ")
    assert str(EvalResult("map", [0.5], 0.1)) == "mAP@[.5:.95] 50.00 +/- 0.00% over 1 episodes"


class Oracle(DetectionLearner):
    """Returns the ground truth of a fixed episode, shifted by ``shift`` pixels, with decreasing scores."""

    name = "oracle"
    trainable = False

    def __init__(self, task: DetectionTask, shift: float = 0.0) -> None:
        super().__init__()
        self.task, self.shift, self.calls = task, shift, 0

    def detect(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int, images: torch.Tensor,
               max_detections: int = 100) -> list[Detections]:
        assert not self.training and not torch.is_grad_enabled()
        self.calls += 1
        return [Detections(b + self.shift, torch.linspace(1.0, 0.5, len(lab)), lab).top(max_detections)
                for b, lab in zip(self.task.query_boxes, self.task.query_labels)]


def test_evaluate_detection_with_a_fake_learner() -> None:
    task = make_task([[A, B], [C]], [[0, 1], [1]])
    learner = Oracle(task)
    learner.train()
    result = evaluate_detection(learner, [task, task, task])
    assert isinstance(result, DetectionEvalResult)
    assert learner.calls == 3 and learner.training  # the mode is restored
    assert result.map50.metric == "map50" and result.map.metric == "map"
    assert result.map50.per_episode == pytest.approx([1.0] * 3) and result.map.mean == pytest.approx(1.0)
    assert result.map50.ci95 == 0.0 and result.ms_per_image >= 0.0 and math.isfinite(result.ms_per_image)
    d = result.to_dict()
    assert d["map50"]["mean"] == pytest.approx(1.0) and d["map"]["n"] == 3 and "ms_per_image" in d


def test_evaluate_detection_shifted_boxes_and_max_detections() -> None:
    # shift 4 px on 20 x 20 / 20 x 24 boxes: IoU 16*16/(2*400-256) = 0.47 for A, C -> misses at 0.5
    task = make_task([[A], [C]], [[0], [1]])
    result = evaluate_detection(Oracle(task, shift=4.0), [task])
    assert result.map50.mean == pytest.approx(0.0)
    # max_detections=0 keeps nothing -> 0
    assert evaluate_detection(Oracle(task), [task], max_detections=0).map.mean == 0.0
    with pytest.raises(ValueError, match="no episodes"):
        evaluate_detection(Oracle(task), [])
