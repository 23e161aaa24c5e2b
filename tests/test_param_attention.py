"""Parameter attention: reproduces ANIL and Meta-SGD exactly, starts as MAML, gradients are right."""

from __future__ import annotations

import copy

import pytest
import torch

from attnmeta.learners.inner import head_names
from attnmeta.learners.maml import MAML
from attnmeta.learners.param_attention import ParamAttentionRule
from attnmeta.nn.backbones import MLP
from attnmeta.tasks.regression import Sinusoid


def sinusoid_batch(tasks=4, shots=5, seed=0, dtype=torch.float64):
    return Sinusoid(shots=shots, queries=5, seed=seed).sample_batch(tasks).to("cpu", dtype)


def make_model(dtype=torch.float64):
    torch.manual_seed(0)
    return MLP(1, (8, 8), 1).to(dtype)


def meta_grads(learner, batch):
    out, grads = learner.meta_gradient(batch)
    return out.loss, grads


@pytest.mark.parametrize("first_order", [False, True])
def test_fixed_head_weights_reproduce_anil_exactly(first_order):
    model = make_model()
    batch = sinusoid_batch()
    anil = MAML(model, "regression", inner_lr=0.05, inner_steps=2, adapt="head", first_order=first_order)
    names = [n for n, _ in model.named_parameters()]
    head = set(head_names(names))
    rule = ParamAttentionRule(0.05, fixed_weights={n: float(n in head) for n in names})
    attn = MAML(copy.deepcopy(model), "regression", inner_lr=0.05, inner_steps=2, rule=rule,
                first_order=first_order)
    loss_a, grads_a = meta_grads(anil, batch)
    loss_b, grads_b = meta_grads(attn, batch)
    assert torch.equal(loss_a, loss_b)
    for name in names:
        key = f"model.{name}"
        torch.testing.assert_close(grads_b[key], grads_a[key], rtol=0, atol=1e-15)
    adapted_a, _ = anil.adapt_task(batch[0])
    adapted_b, _ = attn.adapt_task(batch[0])
    for name in names:
        torch.testing.assert_close(adapted_b[name], adapted_a[name], rtol=0, atol=1e-15)


def test_hard_topk_attention_on_head_keys_reproduces_anil():
    """The attention path itself: keys that make the head tensors score highest, top_k=2 -> ANIL."""
    model = make_model()
    batch = sinusoid_batch()
    names = [n for n, _ in model.named_parameters()]
    head = head_names(names)
    anil = MAML(model, "regression", inner_lr=0.05, inner_steps=2, adapt="head")
    rule = ParamAttentionRule(0.05, mode="topk", top_k=len(head))
    attn = MAML(copy.deepcopy(model), "regression", inner_lr=0.05, inner_steps=2, rule=rule)
    direction = torch.ones(rule.key_dim, dtype=torch.float64)
    with torch.no_grad():
        rule.query_net[-1].bias.copy_(direction)
        for name in names:
            rule.keys[name.replace(".", ":")].copy_(direction if name in head else -direction)
    rule.record = True
    adapted_a, _ = anil.adapt_task(batch[0])
    adapted_b, _ = attn.adapt_task(batch[0])
    for name in names:
        torch.testing.assert_close(adapted_b[name], adapted_a[name], rtol=0, atol=1e-12)
    assert len(rule.history) == 2
    for weights in rule.history:
        assert {n for n, w in weights.items() if w > 0.5} == set(head)
    loss_a, _ = meta_grads(anil, batch)
    loss_b, grads_b = meta_grads(attn, batch)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-12)
    # the straight-through gradient reaches the keys
    assert grads_b[f"rule.keys.{head[0].replace('.', ':')}"].abs().sum() > 0


def test_per_parameter_rates_reproduce_meta_sgd_exactly():
    model = make_model()
    batch = sinusoid_batch()
    meta_sgd = MAML(model, "regression", inner_lr=0.03, inner_steps=2, rule="meta-sgd")
    names = [n for n, _ in model.named_parameters()]
    rule = ParamAttentionRule(0.03, lr_mode="per-parameter", fixed_weights=dict.fromkeys(names, 1.0))
    attn = MAML(copy.deepcopy(model), "regression", inner_lr=0.03, inner_steps=2, rule=rule)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # identical, non-constant learned rates
        for key, value in meta_sgd.rule.lrs.items():
            value.copy_(0.01 + 0.05 * torch.rand(value.shape, generator=g, dtype=torch.float64))
            attn.rule.lrs[key].copy_(value)
    loss_a, grads_a = meta_grads(meta_sgd, batch)
    loss_b, grads_b = meta_grads(attn, batch)
    assert torch.equal(loss_a, loss_b)
    for key, grad in grads_a.items():
        torch.testing.assert_close(grads_b[key], grad, rtol=0, atol=1e-15)


def test_untrained_soft_attention_is_uniform_and_equals_maml():
    model = make_model()
    batch = sinusoid_batch()
    maml = MAML(model, "regression", inner_lr=0.05, inner_steps=1)
    rule = ParamAttentionRule(0.05)
    attn = MAML(copy.deepcopy(model), "regression", inner_lr=0.05, inner_steps=1, rule=rule)
    rule.record = True
    loss_a, grads_a = meta_grads(maml, batch)
    loss_b, grads_b = meta_grads(attn, batch)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=0)
    for key, grad in grads_a.items():
        torch.testing.assert_close(grads_b[key], grad, rtol=1e-10, atol=1e-12)
    for weights in rule.history:
        torch.testing.assert_close(torch.stack(list(weights.values())), torch.ones(len(weights),
                                                                                  dtype=torch.float64))
    # the query network's last layer gets a meta-gradient even at zero init
    assert grads_b["rule.query_net.2.weight"].abs().sum() > 0


@pytest.mark.parametrize("use_loss,steps", [(False, 2), (True, 1)])
def test_meta_gradient_of_attention_parameters_matches_finite_differences(use_loss, steps):
    """Exact second-order meta-gradient. (The core passes the support loss detached, so with use_loss the
    check is exact only when no later step depends on the attention parameters: one step.)"""
    torch.manual_seed(0)
    model = MLP(1, (4,), 1).double()
    rule = ParamAttentionRule(0.1, key_dim=4, hidden=6, use_loss=use_loss)
    learner = MAML(model, "regression", inner_lr=0.1, inner_steps=steps, rule=rule)
    with torch.no_grad():
        for p in rule.query_net.parameters():
            p.normal_(0, 0.5)
    batch = sinusoid_batch(tasks=2)
    _, grads = learner.meta_gradient(batch)
    names = ["rule.query_net.2.bias", "rule.query_net.0.bias", "rule.keys.head:weight"]
    for name in names + ([] if use_loss else ["model.layers.0.bias"]):
        param = dict(learner.named_parameters())[name]
        eps = 1e-6
        for i in range(param.numel()):
            with torch.no_grad():
                param.view(-1)[i] += eps
                plus = learner.meta_loss(batch).loss.item()
                param.view(-1)[i] -= 2 * eps
                minus = learner.meta_loss(batch).loss.item()
                param.view(-1)[i] += eps
            assert abs((plus - minus) / (2 * eps) - grads[name].view(-1)[i].item()) < 1e-6


def test_bad_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="lr_mode must be one of"):
        ParamAttentionRule(lr_mode="per-layer")
    with pytest.raises(ValueError, match="mode must be one of"):
        ParamAttentionRule(mode="gumbel")
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        ParamAttentionRule(mode="topk", top_k=0)
    with pytest.raises(ValueError, match="one weight per adapted parameter"):
        MAML(make_model(), "regression", rule=ParamAttentionRule(fixed_weights={"head.weight": 1.0}))
    with pytest.raises(RuntimeError, match="bind"):
        ParamAttentionRule().weights(0, {}, {}, torch.tensor(1.0))
