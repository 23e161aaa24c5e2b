"""Fast Conv-4 block (``attnmeta.nn.layers``): same values and meta-gradients as the op-by-op block, and the
opt-in bf16 mode of the MAML family."""

from __future__ import annotations

import warnings
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnmeta.nn.layers as layers
from attnmeta.learners.maml import MAML
from attnmeta.nn.backbones import Conv4, ConvBlock
from attnmeta.nn.layers import (
    can_use_fast_block,
    conv3x3_batch_norm,
    conv3x3_channels_last,
    conv_norm_relu_pool,
)
from attnmeta.nn.norm import MetaBatchNorm2d
from attnmeta.tasks.episode import TaskBatch


@pytest.mark.parametrize("in_channels", [1, 3, 5])  # im2col + matmul (<= 32 columns) and oneDNN paths
@pytest.mark.parametrize("with_bias", [True, False])
def test_channels_last_convolution_equals_conv2d(in_channels, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, in_channels, 9, 7, generator=g, dtype=torch.float64)
    weight = torch.randn(6, in_channels, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64) if with_bias else None
    out = conv3x3_channels_last(x, weight, bias)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_folded_into_the_convolution_equals_conv_then_batch_norm(in_channels, affine):
    """Values, first and second derivatives (float64, every input) against conv2d -> F.batch_norm."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5, in_channels, 8, 7, generator=g) > 0.6).double().requires_grad_()
    weight = torch.randn(4, in_channels, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    gamma, beta = (torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True) if affine else None
                   for _ in range(2))
    reference = F.batch_norm(F.conv2d(x, weight, bias, padding=1), None, None, gamma, beta, training=True,
                             eps=1e-5)
    out = conv3x3_batch_norm(x, weight, bias, gamma, beta, 1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    inputs = (x, weight, bias, gamma, beta) if affine else (x, weight, bias)

    def folded(*args):
        return conv3x3_batch_norm(*args, *([] if affine else [None, None]), 1e-5)

    assert torch.autograd.gradcheck(folded, inputs)
    assert torch.autograd.gradgradcheck(folded, inputs)
    grad_bias, = torch.autograd.grad(out.square().sum(), bias)
    assert torch.equal(grad_bias, torch.zeros_like(bias))  # the conv bias cancels in batch norm


def test_batch_norm_is_folded_only_for_batch_statistics():
    """Running statistics (nn.BatchNorm2d's default) must still be updated and used: no folding there."""
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    conv, pool = nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2)
    with mock.patch.object(layers, "conv3x3_batch_norm", wraps=layers.conv3x3_batch_norm) as folded:
        for norm in (MetaBatchNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False)):
            torch.testing.assert_close(conv_norm_relu_pool(x, conv, norm, pool),
                                       pool(torch.relu(norm(conv(x)))))
        assert folded.call_count == 2
        running = nn.BatchNorm2d(4)
        conv_norm_relu_pool(x, conv, running, pool)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv_norm_relu_pool(x, conv, MetaBatchNorm2d(4), pool)
        assert folded.call_count == 2  # neither running statistics nor autocast are folded
    assert running.num_batches_tracked.item() == 1 and running.running_mean.abs().sum() > 0
    running.eval()
    torch.testing.assert_close(conv_norm_relu_pool(x, conv, running, pool),
                               pool(torch.relu(running(conv(x)))))


def _omniglot_like_batch(dtype: torch.dtype, tasks: int = 2, ways: int = 3, size: int = 16) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(2, tasks, ways * 2, 1, size, size, generator=g) > 0.7).to(dtype)
    labels = torch.arange(ways).repeat_interleave(2).repeat(tasks, 1)
    return TaskBatch(images[0], labels, images[1], labels, torch.arange(ways).repeat(tasks, 1))


def _meta_gradients(fast: bool, strategy: str, dtype: torch.dtype, hidden: int = 6, steps: int = 2,
                    **options) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), hidden=hidden, out_features=3).to(dtype)
    for block in model.blocks:
        block.fast = fast
    learner = MAML(model, "classification", inner_lr=0.4, inner_steps=steps, strategy=strategy, **options)
    return learner.meta_gradient(_omniglot_like_batch(dtype))[1]


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_fast_conv_block_gives_the_same_second_order_meta_gradient(strategy):
    """float64: equal to 1e-10; float32: within 1e-4 of the largest entry of each gradient (rounding)."""
    assert ConvBlock.fast and can_use_fast_block(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        reference = _meta_gradients(False, strategy, dtype)
        fast = _meta_gradients(True, strategy, dtype)
        assert reference.keys() == fast.keys()
        for name in reference:
            scale = reference[name].abs().max().item()
            if name.endswith("conv.bias"):  # exactly 0 in exact arithmetic (batch norm follows): rounding
                scale = max(reference[f"{name[:-4]}weight"].abs().max().item(), 1e-30)
            gap = (fast[name] - reference[name]).abs().max().item()
            assert gap <= tol * scale, (dtype, name, gap, scale)


def test_fast_block_is_used_only_where_it_is_exact():
    conv, relu, pool = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
    assert can_use_fast_block(conv, relu, nn.Identity())
    assert not can_use_fast_block(nn.Conv2d(2, 4, 3, padding=1, stride=2), relu, pool)
    assert not can_use_fast_block(nn.Conv2d(2, 4, 5, padding=2), relu, pool)
    assert not can_use_fast_block(conv, nn.LeakyReLU(0.1), pool)  # pool/activation order matters
    assert not can_use_fast_block(conv, relu, nn.MaxPool2d(3))
    assert not can_use_fast_block(conv, relu, nn.AvgPool2d(2))


@pytest.mark.parametrize("strategy", ["accumulate", "vmap"])
def test_bf16_mode_keeps_the_inner_loop_in_fp32_and_the_meta_gradient_close_to_float64(strategy):
    """``precision="bf16"`` runs only the query pass in bf16: the inner loop's support losses are fp32's
    exactly, and the meta-gradient's cosine to float64 is >= 0.99 (the issue's bound; a bf16 inner loop gave
    0.983 on the benchmark's Conv-4-64)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "emulated bf16" on CPUs without bf16
        learners = {}
        for name, dtype, precision in (("fp64", torch.float64, "fp32"), ("fp32", torch.float32, "fp32"),
                                       ("bf16", torch.float32, "bf16")):
            torch.manual_seed(0)
            model = Conv4((1, 16, 16), hidden=16, out_features=3).to(dtype)
            learners[name] = MAML(model, "classification", inner_lr=0.4, inner_steps=2, strategy=strategy,
                                  precision=precision)
        grads = {name: learner.meta_gradient(_omniglot_like_batch(next(learner.parameters()).dtype))[1]
                 for name, learner in learners.items()}
    torch.testing.assert_close(learners["bf16"].last_trace["support_loss"],
                               learners["fp32"].last_trace["support_loss"], rtol=0, atol=0)
    flat = {name: torch.cat([g.flatten().double() for g in grad.values()]) for name, grad in grads.items()}
    assert all(g.dtype == torch.float32 for g in grads["bf16"].values())
    cosine = F.cosine_similarity(flat["bf16"], flat["fp64"], dim=0).item()
    assert 0.99 <= cosine < 1 - 1e-9, cosine  # close, and bf16 really ran (not bit-equal to fp32)
    assert F.cosine_similarity(flat["fp32"], flat["fp64"], dim=0).item() > 0.99999


def test_bf16_mode_bad_value_and_cpu_warning():
    with pytest.raises(ValueError, match="precision must be one of"):
        MAML(nn.Linear(2, 3), precision="fp16")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with pytest.warns(RuntimeWarning, match="emulated"):
            MAML(nn.Linear(2, 3), precision="bf16")
