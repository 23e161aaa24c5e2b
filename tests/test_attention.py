"""Attention blocks: numbers against a float64 naive formula, masks, causal, hard variants, equivariance."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnmeta.nn.attention import (
    AttentionPooling,
    MultiHeadAttention,
    SelfAttention,
    SetAttentionBlock,
    attention_weights,
    gumbel_softmax_attention,
    scaled_dot_product_attention,
    topk_attention,
)


def naive_attention(q, k, v, mask=None):
    """Reference in float64 with explicit loops over query rows."""
    q, k, v = q.double(), k.double(), v.double()
    lq, lk = q.shape[-2], k.shape[-2]
    mask = torch.ones(lq, lk, dtype=torch.bool) if mask is None else mask
    mask = mask.expand(*q.shape[:-2], lq, lk)
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    v = v.detach()
    weights = torch.zeros(*q.shape[:-2], lq, lk, dtype=torch.float64)
    for idx in itertools.product(*[range(n) for n in q.shape[:-2]]):
        for i in range(lq):
            allowed = [j for j in range(lk) if mask[idx + (i, j)]]
            if not allowed:
                continue
            scores = [float(q[idx + (i,)].detach() @ k[idx + (j,)].detach()) / math.sqrt(q.shape[-1])
                      for j in allowed]
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            total = sum(exps)
            for j, e in zip(allowed, exps):
                weights[idx + (i, j)] = e / total
                out[idx + (i,)] += (e / total) * v[idx + (j,)]
    return out, weights


def rand_qkv(batch=(2,), lq=4, lk=5, d=8, dv=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, lq, d, generator=g, dtype=dtype),
            torch.randn(*batch, lk, d, generator=g, dtype=dtype),
            torch.randn(*batch, lk, dv, generator=g, dtype=dtype))


@pytest.mark.parametrize("return_weights", [False, True])
def test_matches_float64_naive_formula(return_weights):
    q, k, v = rand_qkv(batch=(2, 3))
    ref_out, ref_w = naive_attention(q, k, v)
    result = scaled_dot_product_attention(q, k, v, return_weights=return_weights)
    out = result[0] if return_weights else result
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    if return_weights:
        torch.testing.assert_close(result[1], ref_w, rtol=1e-10, atol=1e-12)
    # float32 fused kernel agrees with the float64 reference to float32 precision
    out32 = scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out32.double(), ref_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_boolean_mask_true_means_attend_and_empty_rows_are_zero(fused):
    q, k, v = rand_qkv(batch=(2,), lq=4, lk=5)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 4, 5, generator=g) > 0.4
    mask[0, 2] = False  # a fully masked row
    ref_out, ref_w = naive_attention(q, k, v, mask)
    if fused:
        out = scaled_dot_product_attention(q, k, v, mask)
    else:
        out, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
        torch.testing.assert_close(w, ref_w, rtol=1e-10, atol=1e-12)
        assert torch.all(w[~mask] == 0)
        assert torch.all(w[0, 2] == 0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    assert torch.all(out[0, 2] == 0)


def test_fully_masked_row_has_finite_zero_gradient():
    q, k, v = rand_qkv(batch=(1,), lq=3, lk=4)
    q.requires_grad_(True)
    mask = torch.ones(1, 3, 4, dtype=torch.bool)
    mask[0, 1] = False
    for return_weights in (False, True):
        result = scaled_dot_product_attention(q, k, v, mask, return_weights=return_weights)
        out = result[0] if return_weights else result
        (grad,) = torch.autograd.grad(out.sum(), q)
        assert torch.isfinite(grad).all()
        assert torch.all(grad[0, 1] == 0)


@pytest.mark.parametrize("return_weights", [False, True])
def test_causal_equals_explicit_lower_triangular_mask(return_weights):
    q, k, v = rand_qkv(batch=(2,), lq=5, lk=5)
    tri = torch.ones(5, 5, dtype=torch.bool).tril()
    ref_out, ref_w = naive_attention(q, k, v, tri)
    result = scaled_dot_product_attention(q, k, v, causal=True, return_weights=return_weights)
    out = result[0] if return_weights else result
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    # output at position i does not depend on later values
    v2 = v.clone()
    v2[:, 3:] += 100.0
    out2 = scaled_dot_product_attention(q, k, v2, causal=True)
    torch.testing.assert_close(out2[:, :3], ref_out[:, :3], rtol=1e-10, atol=1e-10)
    if return_weights:
        assert torch.all(result[1].triu(1) == 0)


def test_vmap_over_tasks_uses_the_explicit_formula_and_matches_a_loop(monkeypatch):
    """Under vmap the explicit formula is used (the CPU fused kernel has no batching rule and would fall
    back to a per-example loop); outside transforms the fused kernel is still used."""
    q, k, v = rand_qkv(batch=(3, 2), lq=4, lk=6)
    mask = torch.rand(3, 2, 4, 6, generator=torch.Generator().manual_seed(1)) > 0.3

    def attend(q, k, v, mask):
        return scaled_dot_product_attention(q, k, v, mask, causal=False)

    looped = torch.stack([attend(*args) for args in zip(q, k, v, mask)])
    fused_calls = []
    fused = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: fused_calls.append(1) or fused(*a, **kw))
    batched = torch.func.vmap(attend)(q, k, v, mask)
    assert not fused_calls
    attend(q[0], k[0], v[0], mask[0])
    assert fused_calls
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-10)


def test_causal_combines_with_mask():
    q, k, v = rand_qkv(batch=(1,), lq=4, lk=4)
    pad = torch.tensor([True, True, False, True]).view(1, 1, 4)
    ref_out, _ = naive_attention(q, k, v, pad & torch.ones(4, 4, dtype=torch.bool).tril())
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, pad, causal=True), ref_out)


def soft_grads(q, k, v, mask=None, noise=None, tau=1.0):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if noise is not None:
        scores = (scores + noise) / tau
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1)


def test_topk_forward_and_straight_through_gradient():
    q, k, v = rand_qkv(batch=(2,), lq=3, lk=6)
    q.requires_grad_(True)
    out, w = topk_attention(q, k, v, 2, return_weights=True)
    # forward: exactly two keys per row, renormalised soft weights
    assert torch.all((w.abs() > 1e-12).sum(-1) == 2)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    soft = soft_grads(q, k, v)
    top = soft.topk(2, -1)
    torch.testing.assert_close(w.gather(-1, top.indices), top.values / top.values.sum(-1, keepdim=True))
    # backward: straight-through gradient equals the soft-attention gradient
    upstream = torch.randn(2, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (g_hard,) = torch.autograd.grad((w * upstream).sum(), q)
    (g_soft,) = torch.autograd.grad((soft * upstream).sum(), q)
    torch.testing.assert_close(g_hard, g_soft, rtol=1e-12, atol=1e-12)
    # top_k >= Lk is soft attention
    torch.testing.assert_close(topk_attention(q, k, v, 6), scaled_dot_product_attention(q, k, v))


def test_topk_respects_mask_when_fewer_keys_than_k():
    q, k, v = rand_qkv(batch=(1,), lq=2, lk=4)
    mask = torch.tensor([[True, False, False, False], [False, False, False, False]]).unsqueeze(0)
    out, w = topk_attention(q, k, v, 3, mask, return_weights=True)
    torch.testing.assert_close(w[0, 0], torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    assert torch.all(w[0, 1].abs() < 1e-12) and torch.all(out[0, 1].abs() < 1e-12)


def test_gumbel_hard_is_one_hot_with_relaxed_gradient():
    q, k, v = rand_qkv(batch=(2,), lq=3, lk=5)
    q.requires_grad_(True)
    uniform = torch.rand(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    noise = -torch.log(-torch.log(uniform))
    out, w = gumbel_softmax_attention(q, k, v, noise=noise, tau=0.5, return_weights=True)
    # one-hot up to the rounding of hard + soft - soft.detach()
    assert torch.all(((w.detach() - 1).abs() < 1e-12) | (w.detach().abs() < 1e-12))
    assert torch.all((w.detach() > 0.5).sum(-1) == 1)
    relaxed = soft_grads(q, k, v, noise=noise, tau=0.5)
    torch.testing.assert_close(w.detach().argmax(-1), relaxed.argmax(-1))
    torch.testing.assert_close(out, v.gather(-2, relaxed.argmax(-1, keepdim=True).expand(-1, -1, 3)))
    upstream = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (g_hard,) = torch.autograd.grad((w * upstream).sum(), q)
    (g_soft,) = torch.autograd.grad((relaxed * upstream).sum(), q)
    torch.testing.assert_close(g_hard, g_soft, rtol=1e-12, atol=1e-12)


def test_gumbel_samples_follow_softmax_probabilities():
    q, k, v = rand_qkv(batch=(1,), lq=1, lk=4)
    probs = attention_weights(q, k)[0, 0]
    g = torch.Generator().manual_seed(0)
    picks = torch.zeros(4, dtype=torch.float64)
    for _ in range(4000):
        _, w = gumbel_softmax_attention(q, k, v, generator=g, return_weights=True)
        picks += w[0, 0].detach()
    torch.testing.assert_close(picks / 4000, probs, atol=0.03, rtol=0)


def test_gumbel_never_picks_masked_key():
    q, k, v = rand_qkv(batch=(1,), lq=2, lk=4)
    mask = torch.tensor([True, False, True, False]).view(1, 1, 4)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        _, w = gumbel_softmax_attention(q, k, v, mask, generator=g, return_weights=True)
        assert torch.all(w[..., 1].abs() < 1e-12) and torch.all(w[..., 3].abs() < 1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 9), heads=st.sampled_from([1, 2, 4]))
def test_self_attention_is_permutation_equivariant(seed, n, heads):
    torch.manual_seed(seed)
    layer = SelfAttention(8, heads).double()
    block = SetAttentionBlock(8, heads).double()
    pool = AttentionPooling(8, heads).double()
    x = torch.randn(2, n, 8, dtype=torch.float64)
    perm = torch.randperm(n)
    torch.testing.assert_close(layer(x)[:, perm], layer(x[:, perm]))
    torch.testing.assert_close(block(x)[:, perm], block(x[:, perm]))
    torch.testing.assert_close(pool(x), pool(x[:, perm]))


def test_multihead_matches_per_head_naive_formula():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, key_dim=5, value_dim=3, out_dim=4).double()
    x, kx, vx = torch.randn(2, 3, 8).double(), torch.randn(2, 6, 5).double(), torch.randn(2, 6, 3).double()
    mask = torch.rand(2, 3, 6) > 0.3
    out, w = mha(x, kx, vx, mask, return_weights=True)
    assert out.shape == (2, 3, 4) and w.shape == (2, 2, 3, 6)
    q = mha.q_proj(x).view(2, 3, 2, 4).transpose(1, 2)
    k = mha.k_proj(kx).view(2, 6, 2, 4).transpose(1, 2)
    v = mha.v_proj(vx).view(2, 6, 2, 4).transpose(1, 2)
    ref_heads, ref_w = naive_attention(q, k, v, mask.unsqueeze(1))
    ref = mha.out_proj(ref_heads.transpose(1, 2).reshape(2, 3, 8))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(mha(x, kx, vx, mask), ref)  # fused path


def test_multihead_causal_and_hard_modes():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    causal = MultiHeadAttention(8, 2, causal=True)
    out = causal(x)
    x2 = x.clone()
    x2[:, 3:] = 7.0
    torch.testing.assert_close(causal(x2)[:, :3], out[:, :3])
    _, w = MultiHeadAttention(8, 2, mode="topk", top_k=2)(x, return_weights=True)
    assert torch.all((w.abs() > 1e-6).sum(-1) == 2)
    _, w = MultiHeadAttention(8, 2, mode="gumbel")(x, return_weights=True)
    assert torch.all((w.detach() > 0.5).sum(-1) == 1) and torch.all(w.detach() > -1e-6)
    torch.testing.assert_close(w.detach().sum(-1), torch.ones(2, 2, 5))


def test_bad_input_errors_are_clear():
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match="same feature size"):
        scaled_dot_product_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="same number of keys"):
        scaled_dot_product_attention(q, k, v[..., :2, :])
    with pytest.raises(TypeError, match="boolean tensor"):
        scaled_dot_product_attention(q, k, v, torch.ones(4, 5))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        topk_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="tau"):
        gumbel_softmax_attention(q, k, v, tau=0.0)
    with pytest.raises(ValueError, match="multiple of heads"):
        MultiHeadAttention(6, 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        MultiHeadAttention(8, 2, mode="sparse")
    with pytest.raises(ValueError, match=r"\[batch, length, features\]"):
        SelfAttention(8)(torch.randn(5, 8))
