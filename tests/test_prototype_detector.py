"""The prototype detector: prototypes from the support crops, attention with a "none" key, episodic loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnmeta.eval.detection import evaluate_detection
from attnmeta.learners.detection.centernet import centre_targets
from attnmeta.learners.detection.prototype_detector import PrototypeDetector
from attnmeta.learners.detection.transfer_detector import TransferDetector
from attnmeta.tasks.detection import DetectionBatch, DetectionTask
from detection_fixtures import DEVICES, glyph_episode, meta_train, one_thread  # noqa: F401 (an autouse fixture)
from synthetic import one_line_error

SMALL = {"hidden": 16, "base_classes": 8, "train_scenes": 2, "scenes": 4, "sizes": (18, 28)}


def episodes(n: int, seed: int, **kwargs) -> list[DetectionTask]:
    rng = np.random.default_rng(seed)
    return [glyph_episode(rng, **kwargs) for _ in range(n)]


def with_distractors(task: DetectionTask) -> DetectionTask:
    others = [torch.tensor([[30.0, 30.0, 50.0, 50.0]]) for _ in task.query_boxes]
    return DetectionTask(task.support_x, task.support_y, task.query_x, task.query_boxes, task.query_labels,
                         task.classes, {"other_boxes": others})


def test_prototypes_are_the_mean_centre_embeddings_of_every_crop() -> None:
    task = episodes(1, seed=0, ways=3)[0]
    torch.manual_seed(0)
    model = PrototypeDetector(**{**SMALL, "objects": (1, 1)})
    prototypes = model.prototypes(task.support_x, task.support_y, 3, 64, 64, scenes=1)  # raised to 3
    images, boxes, labels = model.support_scenes(task.support_x, task.support_y, 3, 64, 64, scenes=3)
    assert sorted(torch.cat(labels).tolist()) == [0, 1, 2]
    feats = model.trunk(images)
    targets = centre_targets(boxes, labels, 3, 16, 16, 4)
    q, r, c = targets.index.unbind(1)
    embedded = F.normalize(model.embedding(feats)[q, :, r, c], dim=1)
    expected = torch.stack([embedded[targets.label == k].mean(0) for k in range(3)])
    torch.testing.assert_close(prototypes, F.normalize(expected, dim=1))


def test_detections_score_objectness_times_the_attention_weight_of_their_class() -> None:
    task = episodes(1, seed=1)[0]
    torch.manual_seed(1)
    model = PrototypeDetector(**SMALL).eval()
    with torch.no_grad():
        model.null.fill_(0.3)
        model.log_scale.fill_(np.log(7.0))
        prototypes = model.prototypes(task.support_x, task.support_y, 2, 64, 64, model.scenes)
        feats, objectness, _ = model.maps(task.query_x)
        embedded = F.normalize(model.embedding(feats), dim=1)
        cosine = torch.einsum("qdhw,nd->qnhw", embedded, prototypes)
        logits = 7.0 * torch.cat([cosine, torch.full_like(cosine[:, :1], 0.3)], 1)
        score = torch.sigmoid(objectness) * logits.softmax(1)[:, :2]  # [Q, 2, H, W]
    found = model.detect_task(task, max_detections=3)
    for image, detections in enumerate(found):
        assert float(detections.scores[0]) == pytest.approx(float(score[image].max()), rel=1e-4)
        assert int(detections.labels[0]) == int(score[image].flatten(1).max(1).values.argmax())


def test_episodic_loss_counts_distractors_as_none_and_trains_every_parameter() -> None:
    task = episodes(1, seed=2)[0]
    torch.manual_seed(0)
    model = PrototypeDetector(**SMALL)
    torch.manual_seed(5)
    plain = model.task_loss(task)[1]
    torch.manual_seed(5)
    out = model.meta_loss(DetectionBatch([with_distractors(task)]))
    assert out.metrics["episode_loss"] != plain["episode_loss"]
    assert out.metrics["class_loss"] == plain["class_loss"]
    out.loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    assert {"episode_loss", "episode_accuracy", "scale", "null"} <= set(out.metrics)


def test_without_the_episodic_loss_it_trains_as_the_transfer_detector() -> None:
    task = with_distractors(episodes(1, seed=3)[0])
    torch.manual_seed(0)
    model = PrototypeDetector(**{**SMALL, "episode_weight": 0.0})
    torch.manual_seed(0)
    reference = TransferDetector(hidden=16, base_classes=8)
    loss, logs = model.task_loss(task)
    expected, expected_logs = reference.task_loss(task)
    assert loss.item() == pytest.approx(expected.item()) and set(logs) == set(expected_logs)


def test_detect_leaves_the_detector_unchanged_and_is_deterministic() -> None:
    task = episodes(1, seed=4)[0]
    model = PrototypeDetector(**SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, second = model.detect_task(task, max_detections=5), model.detect_task(task, max_detections=5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    for a, b in zip(first, second):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and len(a) == 5


def test_bad_options_are_one_line() -> None:
    assert one_line_error(ValueError, PrototypeDetector, train_scenes=0) == (
        "need train_scenes >= 1, scenes >= 1 and scale > 0, got train_scenes=0, scenes=16, scale=10.0")
    task = episodes(1, seed=5)[0]
    assert one_line_error(ValueError, PrototypeDetector(**SMALL).detect, task.support_x,
                          torch.tensor([0, 0]), 2, task.query_x) == (
        "the support set needs the same number (>= 1) of crops for each of the 2 classes, got [2, 0]")


def test_learns_a_tiny_detection_problem_from_the_support_crops_alone() -> None:
    """2-way 1-shot glyph episodes (3 glyphs, labels shuffled per episode), 8 held-out episodes.

    Measured (hidden 16, seed 0): mAP@0.5 0.018 before training, 1.0 after 150 Adam steps of 2 episodes
    (nothing is fitted at test time); about 5 s on one thread.
    """
    held_out = episodes(8, seed=123)
    torch.manual_seed(0)
    model = PrototypeDetector(**SMALL)
    assert evaluate_detection(model, held_out).map50.mean < 0.05
    meta_train(model, 150)
    trained = evaluate_detection(model, held_out).map50.mean
    assert trained > 0.9, trained


@pytest.mark.parametrize("device", DEVICES)
def test_train_step_and_detect_on_device(device: str) -> None:
    model = PrototypeDetector(**SMALL).to(device)
    batch = DetectionBatch(episodes(2, seed=6)).to(device)
    model.meta_loss(batch).loss.backward()
    dets = model.detect_task(batch.tasks[0], max_detections=7)
    assert len(dets) == 2 and all(d.boxes.device.type == device for d in dets)
