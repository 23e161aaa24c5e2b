"""Meta-SGD's NaN with 10 inner steps on sinusoid (issue 3) is divergence of its learned rates, and
``predict`` says so instead of returning NaN silently."""

from __future__ import annotations

import warnings

import pytest
import torch

from attnmeta.learners import build
from attnmeta.nn.backbones import MLP
from attnmeta.tasks.regression import Sinusoid


def _meta_sgd_with_rates(value: float):
    torch.manual_seed(0)
    learner = build("meta-sgd", model=MLP(1, (40, 40), 1), task_type="regression", inner_lr=0.01)
    with torch.no_grad():
        for rates in learner.rule.lrs.values():
            rates.fill_(value)
    return learner.eval()


def test_large_learned_rates_diverge_with_more_steps_and_predict_warns():
    """Rates far above the stable step size: 1 step is finite, 10 steps overflow (geometric growth)."""
    task = Sinusoid(shots=5, queries=20).fixed_tasks(n=1, seed=0)[0]
    learner = _meta_sgd_with_rates(3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(learner.predict(task, inner_steps=1)).all()
    with pytest.warns(RuntimeWarning, match="inner loop diverged.*meta-trained with 1"):
        out = learner.predict(task, inner_steps=10)
    assert not torch.isfinite(out).all()
    _, trace = learner.adapt_task(task, inner_steps=6)
    losses = trace["support_loss"]
    assert losses[2] > 1e3 * losses[0]  # the support loss grows by orders of magnitude: divergence


def test_small_rates_stay_finite_for_many_steps():
    task = Sinusoid(shots=5, queries=20).fixed_tasks(n=1, seed=0)[0]
    learner = _meta_sgd_with_rates(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(learner.predict(task, inner_steps=10)).all()
