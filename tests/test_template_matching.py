"""The template-matching detection baseline on a synthetic scene of hand-drawn glyphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnmeta.tasks.detection import DetectionTask, box_iou, nms
from detection_fixtures import CROSS, HOOK, TRIANGLE, draw

pytest.importorskip("skimage")

from attnmeta.learners.detection.template_matching import TemplateMatching, ink_box, nms_top  # noqa: E402


def paste(scene: np.ndarray, glyph: np.ndarray, x: int, y: int) -> list[float]:
    """Paste ``glyph`` at column ``x``, row ``y`` (max blending); its tight ink box in the scene."""
    s = glyph.shape[0]
    scene[y:y + s, x:x + s] = np.maximum(scene[y:y + s, x:x + s], glyph)
    x0, y0, x1, y1 = ink_box(glyph, 0.5)
    return [x + x0 * s, y + y0 * s, x + x1 * s, y + y1 * s]


def scene_task() -> DetectionTask:
    """A 128x128 scene: a hook (32 px), a triangle (44 px) and a cross (distractor); 2-way 2-shot crops."""
    scene = np.zeros((128, 128))
    hook = paste(scene, draw(HOOK, 32), 10, 14)
    triangle = paste(scene, draw(TRIANGLE, 44), 62, 70)
    paste(scene, draw(CROSS, 36), 80, 8)
    crops = [draw(HOOK, 28), draw(HOOK, 28, width=0.08), draw(TRIANGLE, 28), draw(TRIANGLE, 28, width=0.05)]
    return DetectionTask(
        support_x=torch.tensor(np.stack(crops), dtype=torch.float32)[:, None].expand(-1, 3, -1, -1),
        support_y=torch.tensor([0, 0, 1, 1]),
        query_x=torch.tensor(scene, dtype=torch.float32)[None, None].expand(-1, 3, -1, -1),
        query_boxes=[torch.tensor([hook, triangle])], query_labels=[torch.tensor([0, 1])],
        classes=torch.tensor([7, 3]))


def test_finds_each_class_and_sorts() -> None:
    task = scene_task()
    learner = TemplateMatching()
    assert learner.name == "template-matching" and not learner.trainable
    assert list(learner.parameters()) == []
    [det] = learner.detect_task(task)
    assert 0 < len(det) <= 100
    assert det.boxes.shape == (len(det), 4) and det.labels.dtype == torch.long
    assert ((det.scores >= 0) & (det.scores <= 1)).all()
    assert (det.scores[:-1] >= det.scores[1:]).all()
    assert set(det.labels.tolist()) <= {0, 1}
    assert ((det.boxes[:, 2:] > det.boxes[:, :2]).all() and (det.boxes >= 0).all()
            and (det.boxes <= 128).all())
    for c in (0, 1):
        top = det.boxes[det.labels == c][:1]  # the class's best box
        truth = task.query_boxes[0][task.query_labels[0] == c]
        assert box_iou(top, truth).item() > 0.8, (c, top, truth)


def test_max_detections() -> None:
    task = scene_task()
    learner = TemplateMatching(sizes=(26, 32, 44))
    everything = learner.detect_task(task)[0]
    assert len(everything) > 3
    [three] = learner.detect_task(task, max_detections=3)
    assert len(three) == 3
    assert torch.equal(three.scores, everything.scores[:3])
    assert len(learner.detect_task(task, max_detections=0)[0]) == 0


def test_blank_crop_and_small_image_do_not_crash() -> None:
    task = scene_task()
    learner = TemplateMatching(sizes=(20, 32))
    support = task.support_x.clone()
    support[2:] = 0.0  # class 1's crops are blank: no template, no boxes
    [det] = learner.detect(support, task.support_y, 2, task.query_x)
    assert len(det) > 0 and (det.labels == 0).all()
    small = task.query_x[:, :, :16, :16]  # smaller than every size
    [none] = learner.detect(task.support_x, task.support_y, 2, small)
    assert len(none) == 0 and none.boxes.shape == (0, 4)
    # an image smaller than some sizes only uses the others; two images give two Detections
    two = learner.detect(task.support_x, task.support_y, 2, torch.cat([task.query_x[:, :, :24, :24]] * 2))
    assert len(two) == 2


def test_ink_box() -> None:
    crop = np.zeros((10, 10))
    crop[2:5, 3:6] = 1.0
    assert ink_box(crop, 0.5) == (0.3, 0.2, 0.6, 0.5)
    assert ink_box(np.zeros((10, 10)), 0.5) == (0.0, 0.0, 1.0, 1.0)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="sizes"):
        TemplateMatching(sizes=())
    with pytest.raises(ValueError, match="nms_iou"):
        TemplateMatching(nms_iou=1.5)


def test_nms_top_is_greedy_nms_truncated() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g) * 20], 1)
    scores = torch.rand(300, generator=g).round(decimals=2)  # ties too
    full = nms(boxes, scores, 0.3)
    for k in (0, 1, 7, 50, 1000):
        assert torch.equal(nms_top(boxes, scores, 0.3, k), full[:k])


def test_scene_map_with_evaluate_detection() -> None:
    pytest.importorskip("pycocotools")
    from attnmeta.eval.detection import evaluate_detection

    result = evaluate_detection(TemplateMatching(), [scene_task()])
    assert result.map50.mean == pytest.approx(1.0)  # both glyphs are each class's best box
    assert 0.5 < result.map.mean <= 1.0 and result.ms_per_image > 0
