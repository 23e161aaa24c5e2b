"""SetFit-style contrastive pairs (``attnmeta.learners.contrastive``): the balanced cosine-pair loss against a
loop over pairs, prediction = cosine nearest centroid, learning on unseen classes, registry and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnmeta.learners import registry
from attnmeta.learners.contrastive import ContrastivePairs, cosine_pair_loss
from attnmeta.learners.protonet import PrototypicalNetworks
from attnmeta.nn.backbones import MLP
from test_protonet import _episode_batch, accuracy_before_and_after_training


def _reference_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    positive, negative = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        cosine = torch.nn.functional.cosine_similarity(embeddings[i], embeddings[j], dim=0)
        (positive if labels[i] == labels[j] else negative).append(
            (cosine - 1) ** 2 if labels[i] == labels[j] else cosine ** 2)
    mean = [torch.stack(kind).mean() if kind else torch.tensor(0.0, dtype=embeddings.dtype)
            for kind in (positive, negative)]
    return (mean[0] + mean[1]) / 2


def test_pair_loss_equals_a_loop_over_pairs_and_its_gradient_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(3, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 1, 1]])
    got = cosine_pair_loss(embeddings, labels)
    expected = torch.stack([_reference_loss(e, y) for e, y in zip(embeddings, labels)])
    torch.testing.assert_close(got, expected)
    assert torch.autograd.gradcheck(lambda e: cosine_pair_loss(e, labels), (embeddings,))
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]).unsqueeze(0)
    assert cosine_pair_loss(same, torch.tensor([[0, 0, 1]])).item() == 0.0  # perfect: same 1, other 0


def test_meta_loss_is_the_pair_loss_of_every_example_and_predict_is_cosine_nearest_centroid():
    torch.manual_seed(0)
    model = MLP(5, (8,), out_features=6)
    learner = ContrastivePairs(model, scale=7.0)
    batch = _episode_batch()
    out = learner.meta_loss(batch)
    for task, loss in zip(batch, out.task_losses):
        embeddings = model(torch.cat([task.support_x, task.query_x]))
        labels = torch.cat([task.support_y, task.query_y])
        torch.testing.assert_close(loss, _reference_loss(embeddings, labels))
    out.loss.backward()
    assert learner.log_scale.grad is None and all(p.grad is not None for p in model.parameters())
    protonet = PrototypicalNetworks(model, distance="cosine", scale=7.0)
    torch.testing.assert_close(learner.predict(batch[0]), protonet.predict(batch[0]))


def test_learns_an_embedding_that_generalises_to_unseen_classes():
    before, after, _ = accuracy_before_and_after_training(
        lambda: ContrastivePairs(MLP(24, (64,), out_features=16)))
    # Measured (1 thread, about 5 CPU-s): 0.215 before training (chance 0.2), 0.884 after (ProtoNets' own
    # loss: 0.961).
    assert before < 0.35 and after > 0.8, (before, after)


def test_registry_and_bad_input():
    learner = registry.build("contrastive", model=MLP(3, (4,), out_features=2), task_type="classification",
                             ways=5)
    assert isinstance(learner, ContrastivePairs) and learner.any_ways
    assert registry.spec("contrastive").head is False
    assert registry.valid_options("contrastive") == ["scale"]
    with pytest.raises(ValueError) as caught:
        registry.check_options("contrastive", {"distance": "l2"})
    assert str(caught.value) == "unknown option 'distance' for learner 'contrastive'; valid options: scale"
    with pytest.raises(ValueError) as caught:
        ContrastivePairs(MLP(3, (4,), out_features=2), "regression")
    assert str(caught.value) == ("contrastive is a classification learner; got task_type='regression'. Use a "
                                 "gradient learner such as 'maml' for regression")
