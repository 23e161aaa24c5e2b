"""The sliding-window ProtoNets baseline: window geometry, ink boxes, suppression, training and detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnmeta.learners.detection.window_protonet import (
    WindowProtoNet,
    class_nms,
    crop_square,
    ink_boxes,
    sliding_windows,
    window_around,
)
from attnmeta.tasks.detection import DetectionBatch
from detection_fixtures import (  # noqa: F401 (one_thread: an autouse fixture)
    DEVICES,
    TRIANGLE,
    draw,
    glyph_episode,
    one_thread,
)


def test_window_around_and_crop_recover_a_box() -> None:
    image = torch.zeros(1, 64, 64)
    image[0, 6:36, 10:30] = 1.0  # ink box (10, 6, 30, 36)
    box, rel = torch.tensor([10.0, 6.0, 30.0, 36.0]), torch.tensor([0.25, 0.125, 0.75, 0.875])
    window = window_around(box, rel)
    # side = mean of 20 / 0.5 and 30 / 0.75 = 40; the window starts 0.25 * 40 left and 0.125 * 40 above
    assert window.tolist() == [0.0, 1.0, 40.0, 41.0]
    crop = crop_square(image, window, 40)
    assert torch.allclose(crop, image[:, 1:41, 0:40], atol=1e-6)  # pixel centres sampled exactly
    found = ink_boxes(crop[None])[0]
    assert torch.allclose(found, rel)
    assert torch.allclose(window[:2].repeat(2) + 40 * found, box)


def test_window_around_a_pasted_glyph() -> None:
    glyph = torch.tensor(draw(TRIANGLE, 28), dtype=torch.float32)[None]
    scene = torch.zeros(1, 64, 64)
    scene[:, 20:48, 13:41] = glyph
    rows, cols = torch.nonzero(scene[0] > 0.5, as_tuple=True)
    box = torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
    rel = ink_boxes(glyph[None])[0]
    window = window_around(box, rel)
    assert torch.allclose(window, torch.tensor([13.0, 20.0, 41.0, 48.0]), atol=1e-4)
    assert torch.allclose(crop_square(scene, window, 28), glyph, atol=1e-4)
    half = crop_square(scene, window, 14)  # smaller crops sample the window bilinearly
    assert half.shape == (1, 14, 14) and float(half.max()) > 0.5


def test_crop_square_is_zero_outside_the_image() -> None:
    image = torch.ones(2, 30, 40)
    crop = crop_square(image, torch.tensor([-10.0, -5.0, 10.0, 15.0]), 20)
    assert crop.shape == (2, 20, 20)
    assert crop[:, :5].abs().max() < 1e-5 and crop[:, :, :10].abs().max() < 1e-5  # (rounding at the edge)
    assert torch.allclose(crop[:, 5:, 10:], torch.ones(2, 15, 10))


def test_sliding_windows_by_hand() -> None:
    image = torch.rand(1, 20, 30)
    boxes, crops = sliding_windows(image, size=10, step=4, out_size=5)
    # rows 0, 4, 8 and columns 0, 4, ..., 20 (20 + 10 <= 30): 3 x 6 windows, row-major
    assert boxes.shape == (18, 4) and crops.shape == (18, 1, 5, 5)
    assert boxes[:6].tolist() == [[x, 0.0, x + 10, 10.0] for x in (0.0, 4.0, 8.0, 12.0, 16.0, 20.0)]
    assert boxes[6].tolist() == [0.0, 4.0, 10.0, 14.0] and boxes[-1].tolist() == [20.0, 8.0, 30.0, 18.0]
    for (x0, y0, x1, y1), crop in zip(boxes.long().tolist(), crops):
        expected = F.interpolate(image[None, :, y0:y1, x0:x1], size=5, mode="area")[0]
        assert torch.allclose(crop, expected, atol=1e-6)
    boxes, crops = sliding_windows(torch.rand(3, 20, 30), size=20, step=7, out_size=8)
    assert boxes.tolist() == [[0.0, 0.0, 20.0, 20.0], [7.0, 0.0, 27.0, 20.0]] and crops.shape == (2, 3, 8, 8)


def test_sliding_windows_larger_than_the_image() -> None:
    boxes, crops = sliding_windows(torch.rand(2, 20, 30), size=21, step=4, out_size=5)
    assert boxes.shape == (0, 4) and crops.shape == (0, 2, 5, 5)


def test_class_nms_keeps_the_best_per_class() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [30.0, 30.0, 40.0, 40.0],
                          [0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.3, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # within class 0 the second box (IoU 81/119 with the first) goes; the first box of class 1 overlaps the
    # first of class 0 completely but is another class; the second of class 1 (IoU 80/120) goes
    det = class_nms(boxes, scores, labels, iou=0.3, max_detections=10)
    assert det.scores.tolist() == pytest.approx([0.9, 0.7, 0.3])
    assert det.labels.tolist() == [0, 1, 0]
    assert torch.equal(det.boxes, boxes[[0, 3, 2]])
    top = class_nms(boxes, scores, labels, iou=0.3, max_detections=2)
    assert top.scores.tolist() == pytest.approx([0.9, 0.7])
    loose = class_nms(boxes, scores, labels, iou=0.7, max_detections=10)  # IoUs 0.68 and 0.67 stay
    assert loose.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.3])
    empty = class_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.3, 10)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_ink_boxes_by_hand() -> None:
    crops = torch.zeros(3, 1, 10, 10)
    crops[0, 0, 2:5, 3:8] = 0.4  # rows 2..4, columns 3..7
    crops[0, 0, 8, 8] = 0.1  # below half the maximum: not ink
    crops[1, 0, 0, 9] = 1.0  # a single pixel in the top-right corner
    boxes = ink_boxes(crops)
    assert torch.allclose(boxes, torch.tensor([[0.3, 0.2, 0.8, 0.5], [0.9, 0.0, 1.0, 0.1],
                                               [0.0, 0.0, 1.0, 1.0]]))  # the blank crop: all of it
    assert torch.allclose(ink_boxes(crops[:1], threshold=0.2), torch.tensor([[0.3, 0.2, 0.9, 0.9]]))
    colour = torch.zeros(1, 3, 8, 8)
    colour[0, 0, 1:3, 4:6] = 0.9  # ink in one channel only: the channel mean decides
    assert torch.allclose(ink_boxes(colour), torch.tensor([[0.5, 0.125, 0.75, 0.375]]))


def episodes(n: int, seed: int, **kwargs) -> list:
    rng = np.random.default_rng(seed)
    return [glyph_episode(rng, **kwargs) for _ in range(n)]


def small_model(**kwargs) -> WindowProtoNet:
    return WindowProtoNet(**{"hidden": 16, "window_size": 28, "sizes": (20, 28), **kwargs})


def test_meta_loss_is_differentiable() -> None:
    model = small_model(background_windows=4)
    batch = DetectionBatch(episodes(2, seed=0))
    out = model.meta_loss(batch)
    assert out.loss.dim() == 0 and math.isfinite(out.loss.item())
    assert out.task_losses.shape == (2,)
    assert set(out.metrics) == {"loss", "window_accuracy"} and 0 <= out.metrics["window_accuracy"] <= 1
    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert model.background.grad is not None and model.background.grad != 0


def test_detect_contract() -> None:
    model = small_model().eval()
    task = episodes(1, seed=1, ways=3, queries=3)[0]
    everything = model.detect_task(task)
    assert len(everything) == 3
    for max_detections in (5, 100):
        for det in model.detect_task(task, max_detections=max_detections):
            assert 0 < len(det) <= max_detections
            assert det.boxes.shape == (len(det), 4) and det.labels.dtype == torch.long
            assert (det.scores[:-1] >= det.scores[1:]).all()
            assert ((det.scores >= 0.01) & (det.scores <= 1)).all()
            assert (det.boxes >= 0).all() and (det.boxes <= 64).all()
            assert (det.boxes[:, 2:] > det.boxes[:, :2]).all()
            assert set(det.labels.tolist()) <= {0, 1, 2}
    five = model.detect_task(task, max_detections=5)
    for a, b in zip(five, everything):  # the five best of all boxes
        assert torch.equal(a.scores, b.scores[:5]) and torch.equal(a.boxes, b.boxes[:5])
    too_big = small_model(sizes=(80,))
    assert all(len(d) == 0 for d in too_big.detect_task(task))
    with pytest.raises(ValueError) as error:
        model.detect(task.support_x, torch.tensor([0, 1, 1]), 3, task.query_x)
    assert str(error.value) == ("the support set needs the same number (>= 1) of crops for each of the 3 "
                                "classes, got [1, 2, 0]")


@pytest.mark.parametrize("device", DEVICES)
def test_train_step_and_detect_on_device(device: str) -> None:
    """The trainer moves the model and the episodes to its device (``DetectionTask.to``)."""
    model = small_model(background_windows=4).to(device)
    batch = DetectionBatch(episodes(2, seed=3)).to(device)
    out = model.meta_loss(batch)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.device.type == device for p in model.parameters())
    dets = model.detect_task(batch.tasks[0], max_detections=7)
    assert len(dets) == 2
    for det in dets:
        assert 0 < len(det) <= 7 and det.boxes.device.type == det.scores.device.type == device
