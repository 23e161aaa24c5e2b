"""The attention detector: shapes, independence of the images, gradients, and learning a tiny problem."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from attnmeta.eval.detection import evaluate_detection
from attnmeta.learners.detection.attention_detector import AttentionDetector, check_support
from attnmeta.learners.detection.centernet import centre_targets
from attnmeta.tasks.detection import DetectionBatch, DetectionTask
from detection_fixtures import DEVICES, glyph_episode, meta_train, one_thread  # noqa: F401 (an autouse fixture)

SMALL = {"hidden": 16, "head_hidden": 16, "heads": 2, "key_size": 8}


def episodes(n: int, seed: int, **kwargs) -> list:
    rng = np.random.default_rng(seed)
    return [glyph_episode(rng, **kwargs) for _ in range(n)]


@pytest.mark.parametrize("support_scales", [(22, 34, 50), ()])
def test_maps_shapes(support_scales: tuple[int, ...]) -> None:
    model = AttentionDetector(**SMALL, support_scales=support_scales)
    support_x, support_y = torch.rand(6, 1, 32, 32), torch.tensor([2, 0, 1, 0, 1, 2])
    support = model.class_features(support_x, support_y, 3)
    assert support.prototypes.shape == (3, 16)
    assert support.tokens.shape[0] == 3 and support.tokens.shape[-1] == 16
    # one kernel per scale, k = 2 * round(side / 8) + 1 cells (the pasted drawing at stride 4)
    assert [tuple(k.shape) for k in support.kernels] == [  # [N, K, D, k, k]: one kernel per shot
        (3, 2, 16, 2 * round(s / 8) + 1, 2 * round(s / 8) + 1) for s in support_scales]
    heat, box = model.maps(torch.rand(4, 1, 64, 48), support)
    assert heat.shape == (4, 3, 16, 12) and box.shape == (4, 3, 4, 16, 12)  # boxes per class
    assert ((box[:, :, :2] >= 0) & (box[:, :, :2] <= 1)).all()  # offsets are sigmoids
    assert torch.isfinite(heat).all() and torch.isfinite(box).all()


def test_bad_support_is_refused() -> None:
    model = AttentionDetector(**SMALL)
    with pytest.raises(ValueError) as error:
        model.class_features(torch.rand(3, 1, 32, 32), torch.tensor([0, 0, 1]), 2)
    assert str(error.value) == ("the support set needs the same number (>= 1) of crops for each of the 2 "
                                "classes, got [2, 1]")
    with pytest.raises(ValueError) as error:
        check_support(torch.tensor([0, 0, 2, 2]), 3)
    assert str(error.value) == ("the support set needs the same number (>= 1) of crops for each of the 3 "
                                "classes, got [2, 0, 2]")
    with pytest.raises(ValueError) as error:
        AttentionDetector(support_scales=(2, 30))
    assert str(error.value) == "support_scales must lie in [4, support_canvas=64], got [2, 30]"


def test_detect_on_a_batch_equals_each_image_alone() -> None:
    model = AttentionDetector(**SMALL).eval()
    task = episodes(1, seed=4, queries=4)[0]
    together = model.detect(task.support_x, task.support_y, task.ways, task.query_x, max_detections=20)
    assert len(together) == 4
    for i, det in enumerate(together):
        [alone] = model.detect(task.support_x, task.support_y, task.ways, task.query_x[i:i + 1], 20)
        assert len(det) == len(alone) == 20
        assert torch.allclose(det.scores, alone.scores, atol=1e-5)
        assert torch.allclose(det.boxes, alone.boxes, atol=1e-4)
        assert torch.equal(det.labels, alone.labels)
        assert (det.scores[:-1] >= det.scores[1:]).all()
        assert ((det.boxes >= 0) & (det.boxes <= 64)).all() and set(det.labels.tolist()) <= {0, 1}


def test_detect_does_not_depend_on_support_order() -> None:
    model = AttentionDetector(**SMALL).eval()
    task = episodes(1, seed=5, ways=3, queries=1)[0]
    support_x = torch.cat([task.support_x, task.support_x.flip(-1)])  # 2 shots: [0, 1, 2, 0, 1, 2]
    support_y = torch.cat([task.support_y, task.support_y])
    [a] = model.detect(support_x, support_y, 3, task.query_x, 10)
    order = torch.tensor([5, 0, 4, 2, 1, 3])
    [b] = model.detect(support_x[order], support_y[order], 3, task.query_x, 10)
    assert torch.allclose(a.scores, b.scores, atol=1e-5) and torch.equal(a.labels, b.labels)


def test_without_attention_heads() -> None:
    model = AttentionDetector(hidden=16, head_hidden=16, heads=0)
    assert not hasattr(model, "query_proj")
    task = episodes(1, seed=1)[0]
    out = model.meta_loss(DetectionBatch([task]))
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    dets = model.detect_task(task, max_detections=5)
    assert len(dets) == 2 and all(len(d) == 5 for d in dets)


@pytest.mark.parametrize("heads", [2, 0])
def test_meta_loss_is_differentiable(heads: int) -> None:
    model = AttentionDetector(**{**SMALL, "heads": heads})
    batch = DetectionBatch(episodes(2, seed=2))
    assert all(len(b) for task in batch for b in task.query_boxes)
    out = model.meta_loss(batch)
    assert out.loss.dim() == 0 and math.isfinite(out.loss.item())
    assert out.task_losses.shape == (2,) and not out.task_losses.requires_grad
    assert out.loss.item() == pytest.approx(out.task_losses.mean().item(), rel=1e-6)
    assert set(out.metrics) == {"loss", "heat_loss", "offset_loss", "size_loss", "match_loss",
                                "match_accuracy"}
    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def reference_attend(model: AttentionDetector, feats: Tensor, tokens: Tensor) -> Tensor:
    """Explicit softmax attention, one (image, class, head) at a time: ``[Q, N, heads*key_size, H, W]``."""
    q, _, h, w = feats.shape
    k_size = model.key_size
    queries = model.query_proj(feats)  # [Q, A, H, W]
    keys, values = model.key_proj(tokens), model.value_proj(tokens)  # [N, T, A]
    images = []
    for i in range(q):
        classes = []
        for n in range(tokens.shape[0]):
            heads = []
            for head in range(model.heads):
                part = slice(head * k_size, (head + 1) * k_size)
                query = queries[i, part].reshape(k_size, h * w).T  # [HW, k]
                weights = torch.softmax(query @ keys[n, :, part].T / math.sqrt(k_size), dim=-1)  # [HW, T]
                heads.append((weights @ values[n, :, part]).T.reshape(k_size, h, w))
            classes.append(torch.cat(heads))
        images.append(torch.stack(classes))
    return torch.stack(images)


def test_attend_matches_reference_and_gradients() -> None:
    model = AttentionDetector(hidden=16, head_hidden=16, heads=3, key_size=4).double()
    feats = torch.randn(2, 16, 3, 2, dtype=torch.float64, requires_grad=True)
    tokens = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    out = model._attend(feats, tokens)
    expected = reference_attend(model, feats, tokens)
    assert out.shape == (2, 2, 12, 3, 2)
    assert torch.allclose(out, expected, atol=1e-10)
    cotangent = torch.randn_like(out)
    inputs = [feats, tokens, *model.query_proj.parameters(), *model.key_proj.parameters(),
              *model.value_proj.parameters()]
    grads = torch.autograd.grad(out, inputs, cotangent)
    expected_grads = torch.autograd.grad(expected, inputs, cotangent)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, atol=1e-10)
    assert torch.autograd.gradcheck(model._attend, (feats, tokens))


def test_learns_a_tiny_detection_problem() -> None:
    """1-shot 2-way glyph episodes (3 glyphs, labels shuffled per episode): mAP@0.5 on 8 held-out episodes.

    Measured (torch CPU, seeds 0-4 of this recipe): before training 0.0-0.002; after 120 Adam steps of 2
    episodes 0.875 (this seed), 1.0, 0.954, 1.0, 0.938; about 5 s on one thread.
    """
    held_out = episodes(8, seed=123)
    torch.manual_seed(0)
    model = AttentionDetector(**SMALL)
    before = evaluate_detection(model, held_out).map50.mean
    assert before < 0.05
    meta_train(model, 120)
    assert model.training  # evaluate_detection restores the mode
    after = evaluate_detection(model, held_out).map50.mean
    assert after > 0.6, (before, after)


@pytest.mark.parametrize("device", DEVICES)
def test_train_step_and_detect_on_device(device: str) -> None:
    model = AttentionDetector(**SMALL).to(device)
    batch = DetectionBatch(episodes(2, seed=6)).to(device)
    out = model.meta_loss(batch)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.device.type == device for p in model.parameters())
    dets = model.detect_task(batch.tasks[0], max_detections=7)
    assert len(dets) == 2
    for det in dets:
        assert len(det) == 7 and det.boxes.device.type == det.scores.device.type == device


def test_normalized_correlation_against_pearson_r() -> None:
    """Each output is Pearson's r between a kernel and the zero-padded window centred on that position."""
    from attnmeta.learners.detection.attention_detector import normalized_correlation

    torch.manual_seed(0)
    feats, kernels = torch.rand(2, 3, 6, 5, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    out = normalized_correlation(feats, kernels)
    padded = torch.nn.functional.pad(feats, (1, 1, 1, 1))
    for q in range(2):
        for n in range(4):
            for r in range(6):
                for c in range(5):
                    patch = padded[q, :, r: r + 3, c: c + 3].flatten()
                    expected = torch.corrcoef(torch.stack([patch, kernels[n].flatten()]))[0, 1]
                    assert torch.isclose(out[q, n, r, c], expected, atol=1e-12)


def test_normalized_correlation_finds_an_even_template_where_it_was_pasted() -> None:
    from attnmeta.learners.detection.attention_detector import normalized_correlation

    torch.manual_seed(1)
    template, image = torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 10, 10)
    image[0, 0, 3:7, 2:6] = 0.5 * template[0, 0] + 0.2  # r is unchanged by scale and offset
    out = normalized_correlation(image, template)
    assert out.shape == (1, 1, 10, 10) and torch.isclose(out.max(), torch.tensor(1.0), atol=1e-5)
    assert divmod(int(out.flatten().argmax()), 10) == (3 + 1, 2 + 1)  # window starts (k - 1) // 2 before


def test_match_loss_is_the_cross_entropy_of_centres_and_hard_negatives() -> None:
    """The matching loss: each object's class, and "none" at the best-correlated cells away from the
    objects, from the best-scale correlations (a loop-by-loop reference)."""
    torch.manual_seed(0)
    model = AttentionDetector(**SMALL, hard_negatives=5)
    task = episodes(1, seed=3)[0]
    support = model.class_features(task.support_x, task.support_y, task.ways)
    _, _, similarity = model._maps(task.query_x, support)
    targets = centre_targets(task.query_boxes, task.query_labels, task.ways, similarity.shape[-2],
                             similarity.shape[-1], model.stride)
    loss, accuracy = model._match_loss(similarity, targets)
    best = similarity.max(2).values  # [Q, N, H, W]
    rows, labels = [], []
    for (q, r, c), label in zip(targets.index.tolist(), targets.label.tolist()):
        rows.append(best[q, :, r, c])
        labels.append(label)
    for q in range(best.shape[0]):
        away = targets.heat[q].max(0).values < 0.05
        cells = sorted(((best[q, :, r, c].max().item(), r, c) for r, c in away.nonzero().tolist()),
                       reverse=True)[:5]
        for _, r, c in cells:
            rows.append(best[q, :, r, c])
            labels.append(task.ways)
    def reference(rows: list[Tensor], labels: list[int]) -> float:
        logits = torch.cat([model.similarity_scale * torch.stack(rows),
                            model.none_logit.expand(len(rows), 1)], 1)
        return torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()

    assert loss.item() == pytest.approx(reference(rows, labels), rel=1e-5) and 0 <= accuracy <= 1
    without = AttentionDetector(**SMALL, match_weight=0.0).meta_loss(DetectionBatch([task]))
    assert "match_loss" not in without.metrics
    # distractor negatives: "none" at the given (image, row, column) cells as well
    distractors = torch.tensor([[0, 3, 4], [1, 10, 2]])
    with_distractors, _ = model._match_loss(similarity, targets, distractors)
    extra = [best[q, :, r, c] for q, r, c in distractors.tolist()]
    assert with_distractors.item() == pytest.approx(
        reference(rows + extra, labels + [task.ways] * 2), rel=1e-5)


def test_distractor_negatives_come_from_the_other_boxes() -> None:
    torch.manual_seed(0)
    task = episodes(1, seed=3)[0]
    others = [torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.zeros(0, 4)]
    task = DetectionTask(task.support_x, task.support_y, task.query_x, task.query_boxes, task.query_labels,
                         task.classes, {"other_boxes": others})
    plain = AttentionDetector(**SMALL).task_loss(task)[1]["match_loss"]
    torch.manual_seed(0)
    model = AttentionDetector(**SMALL, distractor_negatives=True)
    support = model.class_features(task.support_x, task.support_y, task.ways)
    _, _, similarity = model._maps(task.query_x, support)
    targets = centre_targets(task.query_boxes, task.query_labels, task.ways, similarity.shape[-2],
                             similarity.shape[-1], model.stride)
    expected, _ = model._match_loss(similarity, targets, torch.tensor([[0, 2, 2]]))  # the box's centre cell
    assert model.task_loss(task)[1]["match_loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(plain, rel=1e-6)


def test_template_prior_adds_the_pixel_correlation_to_the_heat_logits() -> None:
    """With ``template_prior`` the heat logits are the learned ones plus w * (best pixel NCC - 0.5)."""
    from attnmeta.learners.detection.attention_detector import normalized_correlation, resized

    torch.manual_seed(0)
    task = episodes(1, seed=4)[0]
    plain = AttentionDetector(**SMALL, support_scales=(20, 30))
    prior = AttentionDetector(**SMALL, support_scales=(20, 30), template_prior=8.0)
    prior.load_state_dict({**plain.state_dict(), "template_prior": torch.tensor(8.0)})
    support = plain.class_features(task.support_x, task.support_y, task.ways)
    heat_plain, _ = plain.maps(task.query_x, support)
    heat_prior, _ = prior.maps(task.query_x, support)
    q, n, h, w = heat_plain.shape
    crops = support.crops
    size = task.query_x.shape[-2:]
    best = torch.stack([normalized_correlation(task.query_x, resized(crops, s)).view(q, n, -1, *size)
                        .amax(2) for s in (20, 30)]).max(0).values
    pooled = torch.nn.functional.adaptive_max_pool2d(best, (h, w))
    assert torch.allclose(heat_prior, heat_plain + 8.0 * (pooled - 0.5), atol=1e-5)
    assert AttentionDetector(**SMALL).template_prior is None
