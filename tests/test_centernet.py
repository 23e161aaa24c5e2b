"""CenterNet encoding, losses and decoding against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from attnmeta.learners.detection.centernet import box_loss, centre_targets, decode, focal_loss

# image 0: a 20x16 box of class 1 centred on cell (x=5, y=7), a 6x9 box of class 0; image 1: nothing
BOXES = [torch.tensor([[10.0, 20.0, 30.0, 36.0], [1.0, 2.0, 7.0, 11.0]]), torch.zeros(0, 4)]
LABELS = [torch.tensor([1, 0]), torch.zeros(0, dtype=torch.long)]


def targets():
    return centre_targets(BOXES, LABELS, ways=2, height=16, width=16, stride=4)


def test_centre_targets_by_hand() -> None:
    t = targets()
    assert t.heat.shape == (2, 2, 16, 16)
    # box 1: centre (20, 28) px = (5, 7) cells, size (5, 4) cells
    # box 2: centre (1.0, 1.625) cells, size (1.5, 2.25) cells
    assert t.index.tolist() == [[0, 7, 5], [0, 1, 1]]
    assert torch.allclose(t.offset, torch.tensor([[0.0, 0.0], [0.0, 0.625]]))
    expected_log = torch.tensor([[math.log(5), math.log(4)], [math.log(1.5), math.log(2.25)]])
    assert torch.allclose(t.log_size, expected_log)
    assert t.heat[0, 1, 7, 5] == 1.0 and t.heat[0, 0, 1, 1] == 1.0
    assert int((t.heat >= 1.0).sum()) == 2 and float(t.heat.max()) == 1.0
    assert t.heat[1].abs().sum() == 0  # no objects in image 1
    # Gaussian spread: sigma = size / 6 + 0.25 cells per axis
    sx, sy = 5 / 6 + 0.25, 4 / 6 + 0.25
    assert t.heat[0, 1, 7, 6].item() == pytest.approx(math.exp(-1 / (2 * sx**2)), rel=1e-5)
    assert t.heat[0, 1, 9, 5].item() == pytest.approx(math.exp(-4 / (2 * sy**2)), rel=1e-5)
    assert t.heat[0, 1, 8, 3].item() == pytest.approx(math.exp(-4 / (2 * sx**2) - 1 / (2 * sy**2)), rel=1e-5)
    sx, sy = 1.5 / 6 + 0.25, 2.25 / 6 + 0.25
    assert t.heat[0, 0, 2, 2].item() == pytest.approx(math.exp(-1 / (2 * sx**2) - 1 / (2 * sy**2)), rel=1e-5)


def test_centre_targets_without_objects() -> None:
    t = centre_targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], 3, 8, 8, 4)
    assert t.heat.shape == (1, 3, 8, 8) and t.heat.abs().sum() == 0
    assert t.index.shape == (0, 3) and t.offset.shape == (0, 2) and t.log_size.shape == (0, 2)


def test_round_trip() -> None:
    boxes = [torch.tensor([[10.0, 20.0, 30.0, 36.0], [1.0, 2.0, 7.0, 11.0], [40.5, 3.25, 63.0, 17.0]]),
             torch.tensor([[0.0, 0.0, 64.0, 64.0], [33.0, 41.0, 35.0, 44.0]])]
    labels = [torch.tensor([1, 0, 2]), torch.tensor([2, 2])]
    t = centre_targets(boxes, labels, ways=3, height=16, width=16, stride=4)
    heat, box = torch.full((2, 3, 16, 16), -20.0), torch.zeros(2, 4, 16, 16)
    for (q, r, c), offset, log_size, label in zip(t.index.tolist(), t.offset, t.log_size,
                                                  torch.cat(labels).tolist()):
        heat[q, label, r, c] = 20.0
        box[q, :2, r, c], box[q, 2:, r, c] = offset, log_size
    detections = decode(heat, box, stride=4, image_size=(64, 64))
    assert len(detections) == 2
    for det, truth, truth_labels in zip(detections, boxes, labels):
        found = det.top(score_threshold=0.5)
        assert len(found) == len(truth)
        assert (found.scores > 1 - 1e-6).all()
        order = torch.argsort(found.boxes[:, 0] * 1000 + found.boxes[:, 1])
        expected = torch.argsort(truth[:, 0] * 1000 + truth[:, 1])
        assert torch.allclose(found.boxes[order], truth[expected], atol=1e-4)
        assert found.labels[order].tolist() == truth_labels[expected].tolist()
        assert (det.scores[len(found):] < 1e-6).all()  # everything else is background


def test_focal_loss_by_hand() -> None:
    logits = torch.tensor([[[[2.0, -1.0, 0.5], [-3.0, 0.3, 1.5]]]])
    heat = torch.tensor([[[[1.0, 0.5, 0.0], [0.9, 1.0, 0.2]]]])
    total = 0.0
    for x, y in zip(logits.flatten().tolist(), heat.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        if y == 1.0:
            total += -((1 - p) ** 2) * math.log(p)
        else:
            total += -((1 - y) ** 4) * p**2 * math.log(1 - p)
    assert focal_loss(logits, heat).item() == pytest.approx(total / 2, rel=1e-5)
    # alpha and beta are the exponents; without peaks the sum is divided by 1
    no_peak = heat.clamp(max=0.95)
    expected = sum(-((1 - y) ** 3) * (1 / (1 + math.exp(-x))) ** 1 * math.log(1 - 1 / (1 + math.exp(-x)))
                   for x, y in zip(logits.flatten().tolist(), no_peak.flatten().tolist()))
    assert focal_loss(logits, no_peak, alpha=1.0, beta=3.0).item() == pytest.approx(expected, rel=1e-5)
    # confident and right is nearly free
    confident = torch.where(heat >= 1, torch.tensor(12.0), torch.tensor(-12.0))
    assert focal_loss(confident, heat).item() < 1e-8


def test_box_loss() -> None:
    t = targets()
    perfect = torch.zeros(2, 4, 16, 16)
    for (q, r, c), offset, log_size in zip(t.index.tolist(), t.offset, t.log_size):
        perfect[q, :2, r, c], perfect[q, 2:, r, c] = offset, log_size
    offset_loss, size_loss = box_loss(perfect, t)
    assert offset_loss.item() == 0.0 and size_loss.item() == 0.0

    maps = torch.full((2, 4, 16, 16), 0.25, requires_grad=True)
    offset_loss, size_loss = box_loss(maps, t)
    # offsets (0, 0) and (0, 0.625) against 0.25; log-sizes against 0.25; sums over both objects / 2
    assert offset_loss.item() == pytest.approx((0.25 + 0.25 + 0.25 + 0.375) / 2, rel=1e-6)
    logs = [math.log(5), math.log(4), math.log(1.5), math.log(2.25)]
    assert size_loss.item() == pytest.approx(sum(abs(v - 0.25) for v in logs) / 2, rel=1e-6)
    (offset_loss + size_loss).backward()
    assert maps.grad is not None and int((maps.grad != 0).sum()) == 8  # only the two centre cells

    empty = centre_targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], 2, 16, 16, 4)
    maps = torch.randn(1, 4, 16, 16, requires_grad=True)
    offset_loss, size_loss = box_loss(maps, empty)
    assert offset_loss.item() == 0.0 and size_loss.item() == 0.0
    offset_loss.backward()
    assert maps.grad is not None and maps.grad.abs().sum() == 0


def test_decode_max_detections() -> None:
    heat = torch.full((1, 2, 8, 8), -30.0)
    peaks = [(0, 1, 1, 3.0), (1, 1, 5, 2.0), (0, 6, 6, 1.0), (1, 4, 2, 0.0), (0, 6, 1, -1.0)]
    for label, r, c, logit in peaks:
        heat[0, label, r, c] = logit
    box = torch.zeros(1, 4, 8, 8)
    [det] = decode(heat, box, stride=4, max_detections=3)
    assert len(det) == 3
    assert torch.allclose(det.scores, torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    assert det.labels.tolist() == [0, 1, 0]
    # offset 0 and size 1 cell: a 4x4 box centred on the cell's top-left corner
    assert det.boxes[0].tolist() == [2.0, 2.0, 6.0, 6.0]
    assert len(decode(torch.zeros(1, 1, 2, 2), torch.zeros(1, 4, 2, 2), 4, max_detections=100)[0]) == 4
    # a 3x3 neighbour of a stronger peak is no detection
    heat[0, 0, 1, 2] = 2.5
    [det] = decode(heat, box, stride=4, max_detections=5)
    assert torch.allclose(det.scores, torch.sigmoid(torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])))


def test_decode_clips_to_image() -> None:
    heat = torch.full((1, 1, 8, 16), -30.0)  # image 32 high, 64 wide at stride 4
    box = torch.zeros(1, 4, 8, 16)
    heat[0, 0, 0, 15], heat[0, 0, 7, 0] = 5.0, 4.0
    for r, c in ((0, 15), (7, 0)):
        box[0, :, r, c] = torch.tensor([0.5, 0.5, math.log(10), math.log(10)])  # 40x40 px boxes
    [raw] = decode(heat, box, 4, max_detections=2)
    assert torch.allclose(raw.boxes, torch.tensor([[42.0, -18.0, 82.0, 22.0], [-18.0, 10.0, 22.0, 50.0]]),
                          atol=1e-4)
    [clipped] = decode(heat, box, 4, max_detections=2, image_size=(32, 64))
    assert torch.allclose(clipped.boxes, torch.tensor([[42.0, 0.0, 64.0, 22.0], [0.0, 10.0, 22.0, 32.0]]),
                          atol=1e-4)


def test_class_wise_box_maps_use_each_objects_class() -> None:
    """With ``[Q, N, 4, H, W]`` box maps, the loss and the decoded boxes read the object's class's map."""
    boxes, labels = [torch.tensor([[8.0, 8.0, 24.0, 16.0]])], [torch.tensor([1])]
    targets = centre_targets(boxes, labels, 2, 8, 8, 4)
    maps = torch.zeros(1, 2, 4, 8, 8)
    _, r, c = targets.index[0].tolist()
    maps[0, 1, :2, r, c] = targets.offset[0]
    maps[0, 1, 2:, r, c] = targets.log_size[0]
    offset, size = box_loss(maps, targets)
    assert offset.item() == 0 and size.item() == 0
    wrong = maps.flip(1)  # the right values in the other class's map
    assert box_loss(wrong, targets)[1].item() > 0
    heat = torch.full((1, 2, 8, 8), -20.0)
    heat[0, 1, r, c] = 20.0
    found = decode(heat, maps, 4, max_detections=1)[0]
    assert found.labels.tolist() == [1] and torch.allclose(found.boxes, boxes[0], atol=1e-4)
