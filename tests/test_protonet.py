"""Prototypical Networks: prototypes and distances, the loss, gradients, learning, any-ways, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from attnmeta.eval import evaluate
from attnmeta.learners import registry
from attnmeta.learners.protonet import (
    PrototypicalNetworks,
    euclidean_logits,
    prototypes,
    squared_euclidean_logits,
)
from attnmeta.nn.backbones import MLP
from attnmeta.tasks.episode import Task, TaskBatch
from attnmeta.tasks.sampler import EpisodeSampler


def test_prototypes_and_logits_match_explicit_loops():
    g = torch.Generator().manual_seed(0)
    support, labels = torch.randn(7, 4, generator=g), torch.tensor([2, 0, 1, 2, 0, 2, 1])
    queries = torch.randn(5, 4, generator=g)
    protos = prototypes(support, labels, 3)
    for c in range(3):
        torch.testing.assert_close(protos[c], support[labels == c].mean(0))
    logits, distance_logits = squared_euclidean_logits(queries, protos), euclidean_logits(queries, protos)
    for q in range(5):
        for c in range(3):
            torch.testing.assert_close(logits[q, c], -((queries[q] - protos[c]) ** 2).sum())
            distance = torch.linalg.vector_norm(queries[q] - protos[c])
            torch.testing.assert_close(distance_logits[q, c], -distance)
    with pytest.raises(ValueError, match="at least one support example"):
        prototypes(support, torch.zeros(7, dtype=torch.long), 3)


def _episode_batch(tasks: int = 2, ways: int = 3, shots: int = 2, queries: int = 4, dim: int = 5,
                   dtype: torch.dtype = torch.float32) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    support_y = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    query_y = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1)
    return TaskBatch(torch.randn(tasks, ways * shots, dim, generator=g, dtype=dtype), support_y,
                     torch.randn(tasks, ways * queries, dim, generator=g, dtype=dtype), query_y,
                     torch.arange(ways).expand(tasks, -1))


def test_meta_loss_is_mean_of_task_cross_entropies_and_predict_agrees():
    torch.manual_seed(0)
    learner = PrototypicalNetworks(MLP(5, (8,), out_features=6))
    batch = _episode_batch()
    out = learner.meta_loss(batch)
    expected = []
    for task in batch:
        logits = learner.predict(task)
        assert logits.shape == (12, 3)
        expected.append(nn.functional.cross_entropy(logits, task.query_y))
    torch.testing.assert_close(out.task_losses, torch.stack(expected))
    torch.testing.assert_close(out.loss, torch.stack(expected).mean())
    assert 0.0 <= out.metrics["accuracy"] <= 1.0 and out.metrics["loss"] == pytest.approx(out.loss.item())


def _resplit(batch: TaskBatch, shots: int, split: int) -> TaskBatch:
    """The episode whose support is examples ``split * shots ...`` (cyclic) of every class, built by hand."""
    tasks = []
    for task in batch:
        examples = torch.cat([task.support_x, task.query_x])
        labels = torch.cat([task.support_y, task.query_y])
        support, query = [], []
        for c in range(task.ways):
            members = (labels == c).nonzero().flatten().tolist()
            chosen = {(split * shots + j) % len(members) for j in range(shots)}
            support += [m for i, m in enumerate(members) if i in chosen]
            query += [m for i, m in enumerate(members) if i not in chosen]
        tasks.append(Task(examples[support], labels[support], examples[query], labels[query], task.classes))
    return TaskBatch.stack(tasks)


@pytest.mark.parametrize("shots, queries, splits, distance", [(1, 2, 3, "l2"), (2, 2, 2, "euclidean"),
                                                             (1, 3, 2, "cosine")])
def test_support_splits_average_the_losses_of_the_resplit_episodes(shots, queries, splits, distance):
    torch.manual_seed(0)
    model = MLP(5, (8,), out_features=6)
    batch = _episode_batch(tasks=2, ways=3, shots=shots, queries=queries)
    split_learner = PrototypicalNetworks(model, distance=distance, support_splits=splits)
    plain = PrototypicalNetworks(model, distance=distance)
    if distance == "cosine":
        split_learner.log_scale = plain.log_scale
    out = split_learner.meta_loss(batch)
    expected = torch.stack([plain.meta_loss(_resplit(batch, shots, r)).task_losses for r in range(splits)])
    torch.testing.assert_close(out.task_losses, expected.mean(0))
    torch.testing.assert_close(out.loss, expected.mean())
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    expected_grads = torch.autograd.grad(expected.mean(), list(model.parameters()))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    # split 0 is the episode as sampled; prediction does not depend on the option
    torch.testing.assert_close(plain.meta_loss(_resplit(batch, shots, 0)).loss, plain.meta_loss(batch).loss)
    task = next(iter(batch))
    torch.testing.assert_close(split_learner.predict(task), plain.predict(task))


def test_support_splits_errors():
    model = MLP(5, (8,), out_features=6)
    with pytest.raises(ValueError, match="support_splits must be a positive int"):
        PrototypicalNetworks(model, support_splits=0)
    with pytest.raises(ValueError, match="at most 3"):
        PrototypicalNetworks(model, support_splits=4).meta_loss(_episode_batch(shots=1, queries=2))
    with pytest.raises(ValueError, match="at most 2"):  # 2-shot, 2-query: splits {0,1}, {2,3}, then repeats
        PrototypicalNetworks(model, support_splits=3).meta_loss(_episode_batch(shots=2, queries=2))
    batch = _episode_batch(shots=1, queries=2)
    unbalanced = TaskBatch(batch.support_x, batch.support_y, batch.query_x,
                           torch.tensor([[0, 0, 0, 1, 1, 2]] * 2), batch.classes)
    with pytest.raises(ValueError, match="balanced episodes"):
        PrototypicalNetworks(model, support_splits=2).meta_loss(unbalanced)


def test_matrix_product_distances_match_the_direct_form_at_training_scale():
    # ReLU-like embeddings of a 200-way Omniglot episode (400 queries, 576-d), two tasks: the expansion
    # ||q||^2 + ||p||^2 - 2 q.p against (q - p)^2 in float64, values and gradients.
    g = torch.Generator().manual_seed(3)
    queries = torch.randn(2, 400, 576, generator=g).relu().requires_grad_()
    protos = torch.randn(2, 200, 576, generator=g).relu().requires_grad_()
    queries64, protos64 = (t.detach().double().requires_grad_() for t in (queries, protos))
    direct = -(queries64.unsqueeze(-2) - protos64.unsqueeze(-3)).pow(2).sum(-1)
    logits = squared_euclidean_logits(queries, protos)
    assert logits.shape == (2, 400, 200) and bool((logits <= 0).all())
    torch.testing.assert_close(logits.double(), direct.detach(), rtol=1e-5, atol=1e-3)
    weights = torch.randn(2, 400, 200, generator=g)
    (logits * weights).sum().backward()
    (direct * weights.double()).sum().backward()
    torch.testing.assert_close(queries.grad.double(), queries64.grad, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(protos.grad.double(), protos64.grad, rtol=1e-4, atol=1e-2)
    # a large component shared by every embedding (as ReLU features have) costs no accuracy: centred away
    offset = 50.0 * torch.rand(576, generator=g)
    shifted = squared_euclidean_logits(queries.detach()[0] + offset, protos.detach()[0] + offset)
    torch.testing.assert_close(shifted.double(), direct.detach()[0], rtol=1e-5, atol=1e-3)
    same = torch.randn(30, 64, generator=g) * 10  # a query on its prototype: ~0 (rounding), never positive
    on_prototype = squared_euclidean_logits(same, same).diagonal()
    assert bool((on_prototype <= 0).all()) and bool((on_prototype > -1e-6 * same.pow(2).sum(-1)).all())


def test_euclidean_logits_of_a_query_on_its_prototype_have_a_zero_gradient():
    query = torch.tensor([[1.0, 2.0]], requires_grad=True)
    logits = euclidean_logits(query, torch.tensor([[1.0, 2.0], [4.0, 6.0]]))
    torch.testing.assert_close(logits.detach(), torch.tensor([[-1e-6, -5.0]]))
    logits[0, 0].backward()
    assert torch.equal(query.grad, torch.zeros(1, 2))


@pytest.mark.parametrize("distance", ["euclidean", "l2", "cosine"])
def test_meta_gradient_matches_finite_differences(distance):
    torch.manual_seed(0)
    learner = PrototypicalNetworks(MLP(5, (7,), out_features=4), distance=distance).double()
    batch = _episode_batch(dtype=torch.float64)
    learner.meta_loss(batch).loss.backward()
    eps = 1e-6
    for name, param in learner.named_parameters():
        direction = torch.randn_like(param)
        with torch.no_grad():
            param += eps * direction
            plus = learner.meta_loss(batch).loss.item()
            param -= 2 * eps * direction
            minus = learner.meta_loss(batch).loss.item()
            param += eps * direction
        numeric = (plus - minus) / (2 * eps)
        assert numeric == pytest.approx((param.grad * direction).sum().item(), rel=1e-5, abs=1e-8), name


def _nuisance_classes(classes: int = 120, per_class: int = 12,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class signal in 4 of 24 dimensions (spread 1), class-independent noise of std 3 in the other 20,
    randomly rotated: an embedding must learn to drop the noise to compare examples by class."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, 4, generator=g)
    signal = centers.repeat_interleave(per_class, 0) + 0.15 * torch.randn(classes * per_class, 4, generator=g)
    noise = 3.0 * torch.randn(classes * per_class, 20, generator=g)
    mixing = torch.linalg.qr(torch.randn(24, 24, generator=g))[0]
    return torch.cat([signal, noise], 1) @ mixing, torch.arange(classes).repeat_interleave(per_class)


def accuracy_before_and_after_training(make_learner, steps: int = 300) -> tuple[float, float, Any]:
    """5-way 1-shot accuracy on 200 fixed episodes of 40 unseen nuisance classes before and after ``steps``
    Adam steps (3e-3) of 10-way meta-training on 80 others, and the trained learner; ``make_learner()`` is
    called after seeding."""
    torch.manual_seed(0)
    x, y = _nuisance_classes()
    train = EpisodeSampler(x, y, 10, 1, 5, classes=range(80), seed=0)
    test = EpisodeSampler(x, y, 5, 1, 5, classes=range(80, 120), seed=1).fixed_tasks(200, seed=0)
    learner = make_learner()
    before = evaluate(learner, test).mean
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for _ in range(steps):
        out = learner.meta_loss(train.sample_batch(4))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return before, evaluate(learner, test).mean, learner


def test_learns_an_embedding_that_generalises_to_unseen_classes():
    before, after, learner = accuracy_before_and_after_training(
        lambda: PrototypicalNetworks(MLP(24, (64,), out_features=16)))
    x, y = _nuisance_classes()
    # Measured (1 thread, about 4 CPU-s): 0.213 before training (chance 0.2), 0.961 after.
    assert before < 0.35 and after > 0.9, (before, after)
    # Trained 10-way, evaluated 20-way on unseen classes (measured 0.857; chance 0.05).
    twenty = EpisodeSampler(x, y, 20, 1, 5, classes=range(80, 120), seed=2).fixed_tasks(50, seed=0)
    assert evaluate(learner, twenty).mean > 0.75


def test_registry_builds_protonet_without_head_and_rejects_bad_use():
    assert registry.spec("protonet").head is False
    learner = registry.build("protonet", model=MLP(3, (4,), out_features=2), task_type="classification",
                             ways=5)
    assert isinstance(learner, PrototypicalNetworks) and learner.any_ways
    with pytest.raises(ValueError, match="classification learner"):
        registry.build("protonet", model=MLP(3, (4,)), task_type="regression")
    with pytest.raises(TypeError, match="no options.*temperature"):
        registry.build("protonet", model=MLP(3, (4,)), task_type="classification", temperature=2.0)
    with pytest.raises(TypeError, match="nn.Module embedding"):
        PrototypicalNetworks(lambda x: x)  # type: ignore[arg-type]
    task = _episode_batch(dim=3)[0]
    regression = Task(task.support_x, task.support_x[:, :1], task.query_x, task.query_x[:, :1])
    with pytest.raises(ValueError, match="int64 class labels"):
        learner.predict(regression)
    bad = Task(task.support_x, task.support_y + 1, task.query_x, task.query_y, task.classes)
    with pytest.raises(ValueError, match=r"support_y must hold labels in 0..2"):
        learner.predict(bad)
    with pytest.raises(TypeError, match="Task or TaskBatch"):
        learner.meta_loss(task.support_x)  # type: ignore[arg-type]
