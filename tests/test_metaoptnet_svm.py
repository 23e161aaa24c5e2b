"""MetaOptNet-SVM: the simplex projection, the Crammer-Singer dual solution against its KKT conditions, the
implicit gradient against finite differences (gradcheck), the logits, learning, registry and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnmeta.learners import registry
from attnmeta.learners.metaoptnet_svm import (
    MetaOptNetSVM,
    project_scaled_simplex,
    solve_cs_dual,
    svm_dual_objective,
)
from attnmeta.nn.backbones import MLP
from test_protonet import _episode_batch, accuracy_before_and_after_training
from test_r2d2 import _message


def test_projection_onto_the_scaled_simplex():
    g = torch.Generator().manual_seed(0)
    v = 3 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    p = project_scaled_simplex(v, 0.5)
    assert bool((p >= 0).all()) and torch.allclose(p.sum(-1), torch.full((50,), 0.5, dtype=torch.float64))
    # the projection's variational inequality <v - p, z - p> <= 0 for feasible z
    z = 0.5 * torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((200, 50))
    assert float(((v - p) * (z - p)).sum(-1).max()) <= 1e-12
    torch.testing.assert_close(project_scaled_simplex(torch.tensor([0.2, 0.1, 0.0]), 0.3),
                               torch.tensor([0.2, 0.1, 0.0]))  # feasible points stay
    torch.testing.assert_close(project_scaled_simplex(torch.tensor([1.0, 0.0, -1.0]), 0.5),
                               torch.tensor([0.5, 0.0, 0.0]))


def _problem(n_per_class: int = 2, ways: int = 3, dim: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways).repeat_interleave(n_per_class)
    x = torch.randn(2, len(labels), dim, generator=g, dtype=torch.float64)
    x = x + 0.8 * torch.randn(ways, dim, generator=g, dtype=torch.float64)[labels]
    one_hot = F.one_hot(labels, ways).double().expand(2, -1, -1)
    return x, one_hot


@pytest.mark.parametrize("C", [0.1, 1.0])
def test_dual_solution_satisfies_the_kkt_conditions(C):
    x, one_hot = _problem()
    gram = x @ x.transpose(1, 2)
    alpha = solve_cs_dual(gram, one_hot, C)
    beta = C * one_hot - alpha
    tol = 1e-9
    assert bool((beta >= -tol).all()) and alpha.sum(-1).abs().max() < tol  # primal feasibility
    # stationarity: gradient + nu_i = mu_ik with mu >= 0 and mu_ik * beta_ik = 0 (complementary slackness)
    gradient = gram @ alpha + alpha - one_hot  # of the dual objective
    free = beta > 1e-7
    nu = -(gradient * free).sum(-1) / free.sum(-1)  # the multiplier of sum_k alpha_ik = 0
    mu = -(gradient + nu.unsqueeze(-1))  # the multiplier of alpha_ik <= C [k = y_i]
    assert float(mu[free].abs().max()) < 1e-8 and float(mu[~free].min()) > -1e-8
    # and no random feasible point does better
    objective = svm_dual_objective(alpha, gram, one_hot)
    torch.manual_seed(0)
    for _ in range(20):
        betas = C * torch.distributions.Dirichlet(torch.ones(3, dtype=torch.float64)).sample(beta.shape[:2])
        other = C * one_hot - betas
        assert bool((svm_dual_objective(other, gram, one_hot) >= objective - 1e-12).all())


def test_dual_gradient_matches_gradcheck_in_float64():
    x, one_hot = _problem(n_per_class=2, ways=3, dim=5, seed=3)
    x = x[0].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: solve_cs_dual(s @ s.T, one_hot[0], 0.1), (x,))
    # the learner's whole head, with queries and the logit scale
    learner = MetaOptNetSVM(nn.Identity(), scale=2.0).double()
    labels = one_hot[0].argmax(-1)[None]
    query = torch.randn(1, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, q: learner.head_logits(s[None], labels, q, 3), (x, query))


def test_logits_are_the_svm_scores_and_the_loss_their_cross_entropy():
    torch.manual_seed(0)
    learner = MetaOptNetSVM(MLP(5, (8,), out_features=6), C=0.5, scale=2.0)
    batch = _episode_batch()
    task = next(iter(batch))
    support, query = learner.model(task.support_x), learner.model(task.query_x)
    alpha = solve_cs_dual(support @ support.T, F.one_hot(task.support_y, 3).float(), 0.5)
    w = support.T @ alpha  # w_k = sum_i alpha_ik x_i
    torch.testing.assert_close(learner.predict(task), 2.0 * query @ w, rtol=1e-4, atol=1e-4)
    out = learner.meta_loss(batch)
    expected = torch.stack([nn.functional.cross_entropy(learner.predict(t), t.query_y) for t in batch])
    torch.testing.assert_close(out.task_losses, expected, rtol=1e-4, atol=1e-5)


def test_learns_an_embedding_that_generalises_to_unseen_classes():
    before, after, _ = accuracy_before_and_after_training(
        lambda: MetaOptNetSVM(MLP(24, (64,), out_features=16), iterations=20))
    # Measured (1 thread, about 5 CPU-s): 0.214 before training (chance 0.2), 0.916 after.
    assert before < 0.35 and after > 0.9, (before, after)


def test_registry_and_bad_input():
    model = MLP(3, (4,), out_features=2)
    learner = registry.build("metaoptnet-svm", model=model, task_type="classification", ways=5)
    assert isinstance(learner, MetaOptNetSVM) and learner.any_ways
    assert registry.valid_options("metaoptnet-svm") == ["C", "iterations", "scale"]
    assert _message(ValueError, MetaOptNetSVM, model, C=-1) == (
        "C must be a number > 0 (the SVM's box bound; MetaOptNet: 0.1), got -1")
    assert _message(ValueError, MetaOptNetSVM, model, iterations=0) == (
        "iterations must be a positive int (solver steps per episode), got 0")
    assert _message(ValueError, MetaOptNetSVM, model, "regression") == (
        "metaoptnet-svm is a classification learner; got task_type='regression'. Use a gradient learner "
        "such as 'maml' for regression")
    task = _episode_batch(dim=3)[0]
    assert _message(TypeError, learner.predict, task.support_x) == (
        "metaoptnet-svm expects a Task or TaskBatch, got Tensor; sample one with an EpisodeSampler")
