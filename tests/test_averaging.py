"""``attnmeta.train.ParameterAverage``: the exponential moving average of trained parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnmeta.train import ParameterAverage


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)  # not trained: not averaged
    return model


def test_average_follows_the_warmed_up_decay_by_hand():
    model = _model()
    average = ParameterAverage(model, decay=0.9)
    assert average.names == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight"]
    expected = model[0].weight.detach().clone()
    for n in range(1, 101):
        with torch.no_grad():
            model[0].weight.add_(0.01 * n)
        decay = min(0.9, (1 + n) / (10 + n))
        assert average.current_decay() == pytest.approx(decay)
        average.update(model)
        expected = decay * expected + (1 - decay) * model[0].weight.detach()
    torch.testing.assert_close(average.averages["0.weight"], expected)
    assert average.updates == 100 and average.current_decay() == 0.9  # warm-up over at n = 80: 81/90 = 0.9


def test_constant_parameters_average_to_themselves():
    model = _model()
    average = ParameterAverage(model, decay=0.999)
    for _ in range(5):
        average.update(model)
    for name, p in model.named_parameters():
        if name in average.names:
            torch.testing.assert_close(average.averages[name], p.detach())


def test_applied_swaps_the_average_in_and_restores_the_trained_values_even_after_an_error():
    model = _model()
    average = ParameterAverage(model, decay=0.5)
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    moved = {name: p.detach().clone() for name, p in model.named_parameters()}
    average.update(model)  # warm-up decay 2/11: average = 2/11 * trained + 9/11 * moved
    x = torch.randn(8, 3)
    with average.applied(model) as swapped:
        assert swapped is model
        torch.testing.assert_close(model[0].weight, 2 / 11 * trained["0.weight"] + 9 / 11 * moved["0.weight"])
        torch.testing.assert_close(model[2].bias, moved["2.bias"])  # not averaged: left as it is
        model(x)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, moved[name])
    with pytest.raises(RuntimeError, match="boom"), average.applied(model):
        raise RuntimeError("boom")
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, moved[name])


def test_averages_are_detached_and_lag_the_trained_parameters_in_training():
    model = _model()
    average = ParameterAverage(model, decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        average.update(model)
    assert all(not a.requires_grad for a in average.averages.values())
    assert not torch.equal(average.averages["0.weight"], model[0].weight.detach())


def test_state_dict_round_trip():
    model = _model()
    average = ParameterAverage(model, decay=0.99)
    with torch.no_grad():
        model[0].weight.mul_(2)
    average.update(model)
    restored = ParameterAverage(_model(), decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.decay == 0.99 and restored.updates == 1
    torch.testing.assert_close(restored.averages["0.weight"], average.averages["0.weight"])
    with pytest.raises(ValueError, match="other parameters"):
        ParameterAverage(nn.Linear(2, 2), 0.9).load_state_dict(average.state_dict())


@pytest.mark.parametrize("decay", [1.0, -0.1, True, "0.9"])
def test_bad_decay_is_a_clear_error(decay):
    with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\)"):
        ParameterAverage(_model(), decay)


def test_module_without_trained_parameters_or_another_module_is_a_clear_error():
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trained floating-point parameters"):
        ParameterAverage(frozen, 0.9)
    average = ParameterAverage(_model(), 0.9)
    with pytest.raises(ValueError, match="lacks the averaged parameters"):
        average.update(nn.Linear(2, 2))
