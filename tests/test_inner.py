"""The pure inner loop: step rules, parameter masks, traces, custom rules, bad input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call

from attnmeta.learners.inner import (
    LSLRRule,
    MetaSGDRule,
    SGDRule,
    StepRule,
    adapt,
    head_names,
    make_rule,
    param_key,
    select_names,
)


def _setup(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).to(dtype)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, generator=g, dtype=dtype)
    y = torch.randn(5, 1, generator=g, dtype=dtype)

    def forward(p, inputs):
        return functional_call(model, (dict(p),), (inputs,))

    return model, params, forward, x, y


def _manual_grads(forward, params, x, y):
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
    loss = nn.functional.mse_loss(forward(leaves, x), y)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.detach(), dict(zip(leaves, grads))


def test_sgd_steps_equal_manual_gradient_descent_and_trace_records_losses():
    _, params, forward, x, y = _setup()
    adapted, trace = adapt(forward, params, x, y, loss_fn=nn.functional.mse_loss, rule=SGDRule(0.1), steps=3)
    expected, losses = dict(params), []
    for _ in range(3):
        loss, grads = _manual_grads(forward, expected, x, y)
        losses.append(loss)
        expected = {n: t - 0.1 * grads[n] for n, t in expected.items()}
    for n in params:
        torch.testing.assert_close(adapted[n], expected[n], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(trace["support_loss"], torch.stack(losses))
    assert trace["grad_norm"].shape == (3,) and bool((trace["grad_norm"] > 0).all())
    assert trace["support_loss"][-1] < trace["support_loss"][0]


def test_zero_steps_returns_the_parameters_unchanged_and_an_empty_trace():
    _, params, forward, x, y = _setup()
    adapted, trace = adapt(forward, params, x, y, loss_fn=nn.functional.mse_loss, rule=SGDRule(0.1), steps=0)
    assert trace == {} and all(adapted[n] is params[n] for n in params)


def test_mask_adapts_only_the_named_parameters_and_keeps_dict_order():
    _, params, forward, x, y = _setup()
    adapted, _ = adapt(forward, params, x, y, loss_fn=nn.functional.mse_loss, rule=SGDRule(0.1), steps=2,
                       adapt_names=["2.weight", "2.bias"])
    assert list(adapted) == list(params)
    assert adapted["0.weight"] is params["0.weight"] and adapted["0.bias"] is params["0.bias"]
    assert not torch.equal(adapted["2.weight"], params["2.weight"])


def test_select_names_all_head_prefix_and_errors():
    names = ["body.0.weight", "body.0.bias", "body.1.weight", "head.weight", "head.bias"]
    assert select_names(names, "all") == names
    assert select_names(names, "head") == head_names(names) == ["head.weight", "head.bias"]
    assert select_names(names, ["head.bias", "body.0"]) == ["body.0.weight", "body.0.bias", "head.bias"]
    with pytest.raises(ValueError, match="'bodyy' matches no parameter; available: body.0.weight"):
        select_names(names, ["bodyy"])
    with pytest.raises(ValueError, match="must be 'all', 'head' or a list"):
        select_names(names, "everything")
    with pytest.raises(TypeError, match="must be strings"):
        select_names(names, [3])


def test_lslr_rates_are_per_parameter_per_step_and_keyed_by_name():
    _, params, forward, x, y = _setup()
    rule = LSLRRule(0.1)
    rule.bind({n: t.shape for n, t in params.items()}, steps=2)
    assert set(rule.lrs.keys()) == {param_key(n) for n in params} and rule.lrs["0:weight"].shape == (2,)
    with torch.no_grad():
        rule.lrs["2:bias"].copy_(torch.tensor([0.0, 0.5]))  # bias frozen at step 0, lr 0.5 at step 1
    adapted, _ = adapt(forward, params, x, y, loss_fn=nn.functional.mse_loss, rule=rule, steps=2)
    expected = dict(params)
    for rate in [0.0, 0.5]:
        _, grads = _manual_grads(forward, expected, x, y)
        expected = {n: t - (rate if n == "2.bias" else 0.1) * grads[n] for n, t in expected.items()}
    for n in params:
        torch.testing.assert_close(adapted[n], expected[n], rtol=1e-12, atol=1e-12)


def test_meta_sgd_rates_have_parameter_shapes_and_rebinding_keeps_existing_state():
    _, params, _, _, _ = _setup()
    rule = MetaSGDRule(0.05)
    rule.bind({n: t.shape for n, t in params.items()}, steps=1)
    for n, t in params.items():
        assert rule.lrs[param_key(n)].shape == t.shape
        assert torch.all(rule.lrs[param_key(n)] == 0.05)
    with torch.no_grad():
        rule.lrs["0:bias"].fill_(0.3)
    rule.bind({n: t.shape for n, t in params.items()}, steps=5)
    assert torch.all(rule.lrs["0:bias"] == 0.3)


def test_first_order_inner_gradients_are_constants():
    _, params, forward, x, y = _setup()
    leaves = {n: t.clone().requires_grad_(True) for n, t in params.items()}
    adapted, _ = adapt(forward, leaves, x, y, loss_fn=nn.functional.mse_loss, rule=SGDRule(0.1), steps=2,
                       first_order=True)
    # d adapted / d initial is the identity in first order: the gradient of sum(adapted) is all ones
    total = sum(t.sum() for t in adapted.values())
    grads = torch.autograd.grad(total, list(leaves.values()))
    for g in grads:
        torch.testing.assert_close(g, torch.ones_like(g))


class SignRule(StepRule):
    """A custom rule written outside the library: signSGD scaled by the task's support loss."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Mapping[str, Any]] = []

    def forward(self, step, params, grads, state):
        self.seen.append(dict(state))
        return {n: p - state["scale"] * state["loss"] * grads[n].sign() for n, p in params.items()}


def test_custom_rule_gets_state_with_loss_step_and_task_state_and_query_trace():
    _, params, forward, x, y = _setup()
    rule = SignRule()
    adapted, trace = adapt(forward, params, x, y, loss_fn=nn.functional.mse_loss, rule=rule, steps=2,
                           query=(x, y), task_state={"scale": 0.01})
    assert [s["step"] for s in rule.seen] == [0, 1] and rule.seen[0]["scale"] == 0.01
    loss0, grads0 = _manual_grads(forward, params, x, y)
    torch.testing.assert_close(rule.seen[0]["loss"], loss0)
    assert trace["query_loss"].shape == (2,)
    final = nn.functional.mse_loss(forward(adapted, x), y)
    torch.testing.assert_close(trace["query_loss"][-1], final)


def test_bad_input_messages():
    _, params, forward, x, y = _setup()
    kwargs = dict(loss_fn=nn.functional.mse_loss, rule=SGDRule(0.1))
    with pytest.raises(ValueError, match="inner steps must be an int >= 0"):
        adapt(forward, params, x, y, steps=-1, **kwargs)
    with pytest.raises(ValueError, match=r"adapt_names \['nope'\] are not parameters"):
        adapt(forward, params, x, y, steps=1, adapt_names=["nope"], **kwargs)
    with pytest.raises(ValueError, match="unknown step rule 'adagrad'"):
        make_rule("adagrad", 0.1)
    with pytest.raises(ValueError, match="inner learning rate must be >= 0"):
        SGDRule(-1.0)
    with pytest.raises(TypeError, match="inner learning rate must be a float"):
        MetaSGDRule("0.1")
