"""Meta-LSTM: preprocessing, the cell-state update against a hand computation, meta-gradients, attention
variant, interface, errors, learning on Omniglot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnmeta.eval import evaluate
from attnmeta.learners import build
from attnmeta.learners.meta_lstm import MetaLSTM, preprocess
from attnmeta.tasks.episode import TaskBatch
from test_matching import gaussian_task, meta_train, omniglot


def test_preprocessing_matches_the_formula():
    x = torch.tensor([1.0, -0.5, 1e-6, -1e-5, 0.0])
    out = preprocess(x, p=10.0)
    for value, (a, b) in zip(x.tolist(), out.tolist()):
        if abs(value) >= math.exp(-10):
            assert a == pytest.approx(math.log(abs(value)) / 10) and b == math.copysign(1.0, value)
        else:
            assert a == -1.0 and b == pytest.approx(value * math.exp(10))


def test_one_update_matches_hand_computation():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    learner = MetaLSTM(model, steps=1, hidden=5)
    task = gaussian_task(3, 2, 2)
    theta = learner.adapt(task.support_x[None], task.support_y[None])[0]
    theta0 = learner.initial_parameters().detach()
    loss = F.cross_entropy(model(task.support_x), task.support_y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    grad = torch.cat([g.reshape(-1) for g in grads])
    features = torch.cat([preprocess(grad), preprocess(loss.detach()).expand(grad.numel(), 2)], dim=1)
    h, _ = learner.input_lstm(features)
    ones, zeros = torch.ones(grad.numel(), 1), torch.zeros(grad.numel(), 1)
    f = torch.sigmoid(torch.cat([h, theta0[:, None], ones], 1) @ learner.forget_gate.weight
                      + learner.forget_gate.bias)
    i = torch.sigmoid(torch.cat([h, theta0[:, None], zeros], 1) @ learner.input_gate.weight
                      + learner.input_gate.bias)
    torch.testing.assert_close(theta, f * theta0 - i * grad)
    assert 0.95 < f.min() and i.max() < 0.05  # paper's initialisation: keep theta, small steps


def test_meta_gradient_reaches_gates_and_initial_parameters():
    torch.manual_seed(0)
    for attention in (False, True):
        learner = MetaLSTM(nn.Linear(8, 3), steps=3, hidden=4, attention=attention, ways=3)
        batch = TaskBatch.stack([gaussian_task(3, 2, 2) for _ in range(2)])
        out = learner.meta_loss(batch)
        assert out.task_losses.shape == (2,)
        out.loss.backward()
        assert learner.input_gate.bias.grad.abs() > 0 and learner.forget_gate.weight.grad.abs().sum() > 0
        assert learner.model.weight.grad.abs().sum() > 0
        assert learner.input_lstm.weight_ih.grad.abs().sum() > 0
        if attention:
            assert learner.attn_query.weight.grad.abs().sum() > 0


def test_attention_variant_reads_previous_steps_and_predict_is_pure():
    torch.manual_seed(0)
    learner = MetaLSTM(nn.Linear(8, 3), steps=3, hidden=4, attention=True)
    task = gaussian_task(3, 2, 2)
    before = [p.detach().clone() for p in learner.parameters()]
    first = learner.predict(task)
    assert first.shape == (6, 3)
    assert all(torch.equal(x, y) for x, y in zip(before, learner.parameters()))
    with torch.no_grad():  # the read of earlier steps feeds the gates: change it, the prediction changes
        learner.input_gate.weight[4:8].fill_(5.0)
        learner.attn_value.weight.normal_(0, 3.0)
    assert not torch.allclose(learner.predict(task), first)
    single = MetaLSTM(nn.Linear(8, 3), steps=1, hidden=4, attention=True)
    h = torch.randn(6, 4)
    assert torch.equal(single._attend(h, []), torch.zeros(6, 4))  # first step: nothing to attend to


def test_errors():
    with pytest.raises(ValueError, match="positive ints"):
        MetaLSTM(nn.Linear(2, 2), steps=0)
    with pytest.raises(ValueError, match="no parameters"):
        MetaLSTM(nn.ReLU())
    learner = build("meta-lstm", model=nn.Linear(8, 3), task_type="classification", ways=3)
    with pytest.raises(ValueError, match="meta-trained 3-way"):
        learner.predict(gaussian_task(4, 1, 1))


def test_learns_omniglot_5way_1shot(shared_data: Path):
    from attnmeta.nn.backbones import Conv4

    torch.manual_seed(0)
    bench = omniglot(str(shared_data / "omniglot"))
    learner = build("meta-lstm", model=Conv4((1, 28, 28), hidden=8, out_features=5),
                    task_type="classification", ways=5, steps=3, hidden=8)
    episodes = bench.test.fixed_tasks(30, seed=0)
    before = evaluate(learner, episodes).mean
    meta_train(learner, bench.train, steps=60, meta_batch=2, lr=3e-3)
    after = evaluate(learner, episodes).mean
    # measured 0.232 -> 0.392 (1 thread) / 0.388 (2 threads); 30 steps ended at 0.31-0.34 depending on the
    # thread count (float rounding), too close to the threshold
    assert after > 0.33 and after > before + 0.1, (before, after)
