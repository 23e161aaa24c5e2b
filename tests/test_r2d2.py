"""R2D2: the Woodbury ridge solve against the direct solution, its gradient, the scaled logits, the loss,
learning on unseen classes, the registry and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnmeta.learners import registry
from attnmeta.learners.r2d2 import R2D2, ridge_head, ridge_weights
from attnmeta.nn.backbones import MLP
from attnmeta.tasks.episode import Task, TaskBatch
from test_protonet import _episode_batch, accuracy_before_and_after_training


@pytest.mark.parametrize("n, dim", [(6, 10), (12, 4)])  # fewer examples than features, and more
def test_woodbury_solve_equals_the_direct_ridge_solution(n, dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, n, dim, generator=g, dtype=torch.float64)
    y = torch.randn(2, n, 3, generator=g, dtype=torch.float64)
    for lam in (0.1, 2.0):
        direct = torch.linalg.inv(x.transpose(1, 2) @ x + lam * torch.eye(dim, dtype=torch.float64)) \
            @ x.transpose(1, 2) @ y
        torch.testing.assert_close(ridge_weights(x, y, lam), direct)


def test_ridge_gradient_matches_gradcheck_in_float64():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ridge_weights, (x, y, lam))
    query = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1])
    assert torch.autograd.gradcheck(lambda s, q, lam: ridge_head(s, labels, q, 3, lam), (x, query, lam))


def test_logits_are_scaled_ridge_predictions_and_the_loss_their_cross_entropy():
    torch.manual_seed(0)
    learner = R2D2(MLP(5, (8,), out_features=6), lam=0.5, scale=3.0, bias=0.25)
    batch = _episode_batch()
    task = next(iter(batch))
    support, query = learner.model(task.support_x), learner.model(task.query_x)
    one_hot = torch.eye(3)[task.support_y]
    w = torch.linalg.solve(support.T @ support + 0.5 * torch.eye(6), support.T @ one_hot)
    torch.testing.assert_close(learner.predict(task), 3.0 * query @ w + 0.25, rtol=1e-4, atol=1e-4)
    out = learner.meta_loss(batch)
    expected = torch.stack([nn.functional.cross_entropy(learner.predict(t), t.query_y) for t in batch])
    torch.testing.assert_close(out.task_losses, expected)
    out.loss.backward()
    assert learner.log_lambda.grad is not None and learner.scale.grad.abs() > 0
    assert learner.bias.grad.abs() < 1e-6  # one offset on every logit: the softmax does not see it


def test_learns_an_embedding_that_generalises_to_unseen_classes():
    before, after, _ = accuracy_before_and_after_training(
        lambda: R2D2(MLP(24, (64,), out_features=16), scale=5.0))
    # Measured (1 thread, about 3 CPU-s): 0.212 before training (chance 0.2), 0.883 after.
    assert before < 0.35 and after > 0.8, (before, after)


def _message(error: type[Exception], function, *args, **kwargs) -> str:
    with pytest.raises(error) as caught:
        function(*args, **kwargs)
    return str(caught.value)


def test_registry_and_bad_input():
    model = MLP(3, (4,), out_features=2)
    learner = registry.build("r2d2", model=model, task_type="classification", ways=5)
    assert isinstance(learner, R2D2) and learner.any_ways and registry.spec("r2d2").head is False
    assert registry.valid_options("r2d2") == ["bias", "lam", "learn_lambda", "scale"]
    fixed = R2D2(model, lam=50.0, learn_lambda=False)
    assert "log_lambda" not in dict(fixed.named_parameters()) and "log_lambda" in fixed.state_dict()
    assert _message(ValueError, R2D2, model, lam=0.0) == (
        "lam must be a number > 0 (the ridge penalty), got 0.0")
    assert _message(TypeError, R2D2, model, learn_lambda=1) == "learn_lambda must be True or False, got 1"
    assert _message(ValueError, R2D2, model, "regression") == (
        "r2d2 is a classification learner; got task_type='regression'. Use a gradient learner such as "
        "'maml' for regression")
    assert _message(TypeError, R2D2, lambda x: x) == (
        "model must be an nn.Module embedding network, got function")
    assert _message(ValueError, registry.check_options, "r2d2", {"lambda": 1.0}) == (
        "unknown option 'lambda' for learner 'r2d2' (did you mean 'learn_lambda'?); valid options: bias, "
        "lam, learn_lambda, scale")
    task = _episode_batch(dim=3)[0]
    regression = Task(task.support_x, task.support_x[:, :1], task.query_x, task.query_x[:, :1])
    assert _message(ValueError, learner.predict, regression) == (
        "r2d2 is a classification learner: support_y must hold int64 labels, got torch.float32; use a "
        "classification sampler, not a regression family")
    bad = Task(task.support_x, task.support_y + 1, task.query_x, task.query_y, task.classes)
    assert _message(ValueError, learner.predict, bad) == (
        "support labels must be in 0..2 for a 3-way episode, got max label 3")
    assert _message(TypeError, learner.meta_loss, task.support_x) == (
        "r2d2 expects a Task or TaskBatch, got Tensor; sample one with an EpisodeSampler")
    assert isinstance(TaskBatch.stack([task]), TaskBatch)
