"""Reptile: its outer gradient is theta - mean(phi_t) (a hand-written reference), SGD with rate eps takes
the paper's step, it is first order, and it learns the sinusoid family through the one trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from attnmeta import learners
from attnmeta.learners.inner import SGDRule
from attnmeta.learners.reptile import Reptile
from attnmeta.tasks import Sinusoid, TaskBatch


def _batch(n: int = 3) -> TaskBatch:
    tasks = Sinusoid(shots=5, queries=5, seed=0).fixed_tasks(n=n, seed=0)
    return TaskBatch.stack(tasks).to("cpu", torch.float64)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).to(torch.float64)


def _reference_phi(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> dict:
    """``steps`` steps of plain gradient descent on one task's support set, written out by hand."""
    phi = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(steps):
        leaves = {n: t.requires_grad_(True) for n, t in phi.items()}
        loss = nn.functional.mse_loss(functional_call(model, (leaves,), (x,)), y)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        phi = {n: (t - lr * g).detach() for (n, t), g in zip(leaves.items(), grads)}
    return phi


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_outer_gradient_is_theta_minus_the_mean_adapted_weights(strategy):
    model, batch = _model(), _batch()
    learner = Reptile(model, "regression", rule=SGDRule(0.05), inner_lr=0.05, inner_steps=3,
                      strategy=strategy)
    _, grads = learner.meta_gradient(batch)
    phis = [_reference_phi(model, batch.support_x[t], batch.support_y[t], 0.05, 3) for t in range(3)]
    for name, p in model.named_parameters():
        mean_phi = torch.stack([phi[name] for phi in phis]).mean(0)
        torch.testing.assert_close(grads[f"model.{name}"], (p - mean_phi).detach(), rtol=1e-10, atol=1e-12)


def test_sgd_with_rate_eps_is_the_papers_update():
    model, batch = _model(), _batch()
    learner = Reptile(model, "regression", rule=SGDRule(0.05), inner_lr=0.05, inner_steps=2)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    phis = [_reference_phi(model, batch.support_x[t], batch.support_y[t], 0.05, 2) for t in range(3)]
    optimiser = torch.optim.SGD(learner.parameters(), lr=0.5)
    optimiser.zero_grad()
    learner.meta_loss(batch).loss.backward()
    optimiser.step()
    for name, p in model.named_parameters():
        mean_phi = torch.stack([phi[name] for phi in phis]).mean(0)
        torch.testing.assert_close(p.detach(), theta[name] + 0.5 * (mean_phi - theta[name]))


def test_defaults_are_the_papers_and_bad_options_are_one_line():
    learner = learners.build("reptile", model=_model(), task_type="regression")
    assert learner.inner_steps == 5 and learner.eval_inner_steps == 50 and learner.first_order
    assert type(learner.rule).__name__ == "AdamRule" and learner.rule.beta1 == 0.0
    with pytest.raises(ValueError, match="^Reptile is first order and has no query loss"):
        learners.build("reptile", model=_model(), task_type="regression", first_order=False)


def test_reptile_learns_the_sinusoid_family(tmp_path):
    from attnmeta.train import RunConfig, train

    # the paper's update: outer SGD with rate eps = 1 (measured 1.11; Adam 3e-3 on the same direction 1.22)
    config = RunConfig(benchmark="sinusoid", algo="reptile", steps=400, meta_batch=5, lr=1.0,
                       optimizer="sgd", momentum=0.0,
                       eval_every=400, eval_episodes=50, test_episodes=100, checkpoint_every=400, plot=False,
                       threads=1, algo_options={"rule": "sgd", "inner_lr": 0.02, "inner_steps": 5,
                                                "eval_inner_steps": 10},
                       run_dir=str(tmp_path / "run"))
    result = train(config, quiet=True, print_fn=lambda _: None)
    assert result.summary["test"]["mean"] < 1.6, result.summary["test"]  # untrained: ~5.6
