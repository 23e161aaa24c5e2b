"""Batch-statistics batch norm: forward values, derivatives, and second-order correctness under vmap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnmeta.nn.norm as norm
from attnmeta.learners.maml import MAML
from attnmeta.nn.norm import (
    MetaBatchNorm1d,
    MetaBatchNorm2d,
    MetaBatchNormReLU2d,
    batch_norm_batch_stats,
    batch_norm_elementary,
    convert_batch_norm,
)
from attnmeta.tasks.episode import TaskBatch


@pytest.mark.parametrize("shape", [(8, 3), (8, 3, 5), (6, 3, 4, 4)])
@pytest.mark.parametrize("function", [batch_norm_batch_stats, batch_norm_elementary])
def test_forward_matches_torch_batch_norm_in_training_mode(shape, function):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1
    w = torch.randn(3, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    ours = function(x, w, b, eps=1e-5)
    ref = F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    # per channel: zero mean, unit (biased) variance before the affine map
    plain = function(x, None, None, eps=1e-12)
    dims = [0, *range(2, x.dim())]
    torch.testing.assert_close(plain.mean(dims), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(plain.var(dims, correction=0), torch.ones(3, dtype=torch.float64), rtol=0,
                               atol=1e-9)


def test_first_and_second_derivatives_pass_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    for function in (batch_norm_batch_stats, batch_norm_elementary):
        fn = lambda x, w, b, function=function: function(x, w, b, 1e-5)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b))
        assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_module_is_identical_in_train_and_eval_mode_and_relu_variant_matches():
    bn = MetaBatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(10, 4, 5, 5)
    train_out = bn(x)
    bn.eval()
    torch.testing.assert_close(bn(x), train_out)
    fused = MetaBatchNormReLU2d(4)
    fused.load_state_dict(bn.state_dict())
    torch.testing.assert_close(fused(x), torch.relu(train_out))
    assert list(dict(bn.named_buffers())) == []  # no running statistics


def test_convert_batch_norm_replaces_torch_layers_and_keeps_affine_values():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3),
                          nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12)))
    with torch.no_grad():
        model[1].weight.fill_(2.0)
        model[2][1].bias.fill_(-0.5)
    convert_batch_norm(model)
    assert isinstance(model[1], MetaBatchNorm2d) and isinstance(model[2][1], MetaBatchNorm1d)
    assert torch.all(model[1].weight == 2.0) and torch.all(model[2][1].bias == -0.5)
    assert not any("running" in n for n, _ in model.named_buffers())


def test_bad_input_messages():
    with pytest.raises(ValueError, match="positive int"):
        MetaBatchNorm2d(0)
    with pytest.raises(ValueError, match="4-D input"):
        MetaBatchNorm2d(3)(torch.randn(5, 3))
    with pytest.raises(ValueError, match="got 2 channels"):
        MetaBatchNorm2d(3)(torch.randn(5, 2, 4, 4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        MetaBatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"weight must have shape \[3\]"):
        batch_norm_batch_stats(torch.randn(4, 3), torch.ones(2), None)
    with pytest.raises(ValueError, match="add a batch dimension"):
        batch_norm_batch_stats(torch.randn(4))


# --- the fused-op pitfall: second-order meta-gradients under vmap ---------------------------------------

def _conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), MetaBatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 3)).double()


def _image_batch() -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    t = 3
    return TaskBatch(torch.randn(t, 6, 1, 6, 6, generator=g, dtype=torch.float64),
                     torch.randint(0, 3, (t, 6), generator=g),
                     torch.randn(t, 6, 1, 6, 6, generator=g, dtype=torch.float64),
                     torch.randint(0, 3, (t, 6), generator=g), torch.arange(3).repeat(t, 1))


def _max_loop_vmap_gap() -> float:
    """Largest |loop - vmap| second-order meta-gradient entry, relative to the gradient's scale."""
    batch = _image_batch()
    grads = {}
    for strategy in ("loop", "vmap"):
        learner = MAML(_conv_bn_net(), "classification", inner_lr=0.5, inner_steps=1, strategy=strategy)
        grads[strategy] = learner.meta_gradient(batch)[1]
    gaps = [(grads["loop"][k] - grads["vmap"][k]).abs().max() / grads["loop"][k].abs().max().clamp(min=1e-3)
            for k in grads["loop"]]
    return max(g.item() for g in gaps)


def test_second_order_meta_gradient_under_vmap_equals_loop_with_meta_batch_norm():
    assert _max_loop_vmap_gap() < 1e-10


def test_the_vmap_check_catches_a_fused_batch_norm(monkeypatch):
    """If someone swaps the elementary ops for ``F.batch_norm``, the check above fails (measured: ~1.5% off
    for the conv weight before the BN layer in float64, torch 2.13)."""

    def fused(x, weight=None, bias=None, eps=1e-5):
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)

    monkeypatch.setattr(norm, "batch_norm_batch_stats", fused)
    assert _max_loop_vmap_gap() > 1e-4, "F.batch_norm's second-order gradients under vmap are right now?"


def test_sped_up_conv_blocks_give_the_same_second_order_meta_gradient():
    from attnmeta.nn.backbones import Conv4
    from attnmeta.nn.layers import MaxPool2x2, speed_up_conv_blocks

    x = torch.relu(torch.randn(3, 2, 7, 7, dtype=torch.float64))
    torch.testing.assert_close(MaxPool2x2()(x), nn.MaxPool2d(2)(x), rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    t, n = 2, 4
    images = torch.randn(2, t, n, 1, 16, 16, generator=g, dtype=torch.float64)
    labels = torch.arange(n).repeat(t, 1)
    batch = TaskBatch(images[0], labels, images[1], labels, labels)
    grads = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = Conv4((1, 16, 16), hidden=4, out_features=n).double()
        if fast:
            speed_up_conv_blocks(model)
            assert isinstance(model.blocks[0].norm, MetaBatchNormReLU2d)
            assert isinstance(model.blocks[0].pool, MaxPool2x2)
        grads.append(MAML(model, "classification", inner_lr=0.4, inner_steps=2).meta_gradient(batch)[1])
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-10, atol=1e-12)
