"""Matching Networks: the attention kernel against a hand computation, FCE, the Learner interface, errors,
and learning a small real Omniglot problem."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnmeta.eval import evaluate
from attnmeta.learners import build
from attnmeta.learners.matching import MatchingNetworks, embed_episodes
from attnmeta.tasks.episode import Task, TaskBatch


def gaussian_task(ways: int, shots: int, queries: int, dim: int = 8, generator: torch.Generator | None = None
                  ) -> Task:
    """Classes are random means; inputs are means plus noise."""
    means = torch.randn(ways, dim, generator=generator)
    sx = means.repeat_interleave(shots, 0) + 0.5 * torch.randn(ways * shots, dim, generator=generator)
    qx = means.repeat_interleave(queries, 0) + 0.5 * torch.randn(ways * queries, dim, generator=generator)
    labels = torch.arange(ways)
    return Task(sx, labels.repeat_interleave(shots), qx, labels.repeat_interleave(queries), labels)


@functools.cache
def omniglot(root: str, ways: int = 5):
    from attnmeta.data.benchmarks import make_benchmark

    return make_benchmark("omniglot", root=root, ways=ways, shots=1, queries=5)


def small_conv(hidden: int = 16) -> nn.Module:
    from attnmeta.nn.backbones import Conv4

    return Conv4((1, 28, 28), hidden=hidden, norm="fused")


def meta_train(learner, source, steps: int, meta_batch: int = 4, lr: float = 1e-3) -> None:
    optimizer = torch.optim.Adam(learner.parameters(), lr)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = learner.meta_loss(source.sample_batch(meta_batch, generator)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_attention_kernel_matches_hand_computation():
    learner = MatchingNetworks(nn.Identity(), scale=1.0, learn_scale=False)
    task = gaussian_task(3, 2, 4)
    logits = learner.predict(task)
    s = F.normalize(task.support_x, dim=1)
    q = F.normalize(task.query_x, dim=1)
    expected = torch.zeros(q.shape[0], 3)
    for i in range(q.shape[0]):
        weights = torch.softmax(q[i] @ s.T, dim=0)
        for j in range(s.shape[0]):
            expected[i, task.support_y[j]] += weights[j]
    torch.testing.assert_close(logits.exp(), expected)
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(q.shape[0]))


def test_learned_scale_sharpens_attention():
    task = gaussian_task(3, 2, 4)
    flat = MatchingNetworks(nn.Identity(), scale=1.0).predict(task).exp()
    sharp = MatchingNetworks(nn.Identity(), scale=50.0).predict(task).exp()
    assert sharp.max(1).values.mean() > flat.max(1).values.mean() + 0.2


def test_interface_shapes_any_ways_and_parameters_unchanged():
    torch.manual_seed(0)
    learner = build("matching", model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16)),
                    task_type="classification", ways=5)
    batch = TaskBatch.stack([gaussian_task(5, 1, 3) for _ in range(4)])
    out = learner.meta_loss(batch)
    assert out.task_losses.shape == (4,)
    assert out.loss.requires_grad and 0 <= out.metrics["accuracy"] <= 1
    before = [p.detach().clone() for p in learner.parameters()]
    logits = learner.predict(gaussian_task(3, 2, 4))  # trained 5-way, evaluated 3-way
    assert logits.shape == (12, 3)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.parameters()))


def test_full_context_embeddings_change_the_embeddings_and_get_gradients():
    torch.manual_seed(0)
    model = nn.Linear(8, 16)
    plain = MatchingNetworks(model, fce=False)
    fce = MatchingNetworks(model, fce=True, process_steps=3, feature_dim=16)
    batch = TaskBatch.stack([gaussian_task(4, 2, 3) for _ in range(2)])
    support, query = embed_episodes(model, batch.support_x, batch.query_x)
    new_support, new_query = fce.fce(support, query)
    assert new_support.shape == support.shape and new_query.shape == query.shape
    assert not torch.allclose(new_support, support)
    # The support context: changing the last support example changes the first one's FCE embedding.
    changed = support.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(fce.fce.embed_support(changed)[:, 0], new_support[:, 0])
    fce.meta_loss(batch).loss.backward()
    assert fce.fce.query_cell.recurrent_map.weight.grad.abs().sum() > 0
    assert fce.fce.support_lstm.weight_hh_l0.grad.abs().sum() > 0
    assert not torch.allclose(plain.predict(batch[0]), fce.predict(batch[0]))


def test_fce_needs_an_embedding_size():
    class NoSize(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="feature_dim"):
        MatchingNetworks(NoSize(), fce=True)
    assert MatchingNetworks(NoSize(), fce=True, input_shape=(8,)).fce.dim == 8


def test_bad_input_errors():
    learner = MatchingNetworks(nn.Identity())
    regression = Task(torch.randn(5, 1), torch.randn(5, 1), torch.randn(5, 1), torch.randn(5, 1))
    with pytest.raises(ValueError, match="classification"):
        learner.predict(regression)
    bad_labels = gaussian_task(3, 1, 2)
    bad_labels = Task(bad_labels.support_x, bad_labels.support_y + 5, bad_labels.query_x, bad_labels.query_y,
                      bad_labels.classes)
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        learner.predict(bad_labels)
    with pytest.raises(ValueError, match="classification"):
        MatchingNetworks(nn.Identity(), task_type="regression")
    with pytest.raises(TypeError, match="nn.Module"):
        MatchingNetworks(lambda x: x)


def test_learns_omniglot_5way_1shot(shared_data: Path):
    torch.manual_seed(0)
    bench = omniglot(str(shared_data / "omniglot"))
    learner = MatchingNetworks(small_conv())
    before = evaluate(learner, bench.test.fixed_tasks(40, seed=0)).mean
    meta_train(learner, bench.train, steps=40)
    after = evaluate(learner, bench.test.fixed_tasks(40, seed=0)).mean
    assert after > 0.65 and after > before + 0.1, (before, after)
