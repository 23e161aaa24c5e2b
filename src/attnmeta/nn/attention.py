"""Attention building blocks: pure functions plus thin modules.

Shapes: ``q [..., Lq, d]``, ``k [..., Lk, d]``, ``v [..., Lk, dv]``; outputs ``[..., Lq, dv]``; attention
weights ``[..., Lq, Lk]`` (rows sum to 1 over the attended keys). ``...`` is any batch shape (for
multi-head attention ``[B, H]``).

Mask convention (all functions and modules): a boolean tensor broadcastable to ``[..., Lq, Lk]`` where
``True`` means *may attend*. A query row whose keys are all masked gets **all-zero weights and a zero
output** (never NaN, and zero gradient through it). ``causal=True`` additionally restricts query ``i`` to
keys ``j <= i`` (top-left aligned when ``Lq != Lk``).

Variants:

* soft: ``softmax(q k^T / sqrt(d)) v`` (torch's fused kernel when weights are not requested);
* hard top-k: keep the ``top_k`` largest scores per row, renormalise the softmax over them; the
  straight-through gradient is the soft attention gradient;
* Gumbel-softmax: sample ``softmax((scores + g) / tau)``, ``g ~ Gumbel(0, 1)``; with ``hard=True`` the
  forward pass is the one-hot argmax and the gradient is that of the relaxed sample (straight-through).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "scaled_dot_product_attention", "attention_weights", "topk_attention", "gumbel_softmax_attention",
    "straight_through", "MultiHeadAttention", "SelfAttention", "SetAttentionBlock", "AttentionPooling",
]

ATTENTION_MODES = ("soft", "topk", "gumbel")


# ---------------------------------------------------------------------------------------------------------
# Input checks and masks
# ---------------------------------------------------------------------------------------------------------
def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape [..., length, dim] (at least 2 dims), "
                             f"got {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size (last dim), got q {tuple(q.shape)} and "
                         f"k {tuple(k.shape)}; project them to a common size first")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys (dim -2), got k {tuple(k.shape)} and "
                         f"v {tuple(v.shape)}")


def _combined_mask(q: Tensor, k: Tensor, mask: Tensor | None, causal: bool) -> Tensor | None:
    """Boolean ``[..., Lq, Lk]``-broadcastable mask (True = attend) or None when everything attends."""
    lq, lk = q.shape[-2], k.shape[-2]
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a boolean tensor (True = attend), got {kind}; "
                            "convert with mask.bool() or build it with a comparison")
        try:
            torch.broadcast_shapes(mask.shape, (*q.shape[:-2], lq, lk))
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the attention shape "
                             f"[..., Lq={lq}, Lk={lk}] = {(*q.shape[:-2], lq, lk)}") from None
    if causal:
        tri = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        mask = tri if mask is None else mask & tri
    return mask


def _masked_scores(q: Tensor, k: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores


def _safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dim; rows that are all ``-inf`` give zeros instead of NaN."""
    all_masked = torch.isneginf(scores).all(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(all_masked, 0.0), dim=-1)
    return weights.masked_fill(all_masked, 0.0)


# ---------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------
def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, *, causal: bool = False,
                      scale: float | None = None) -> Tensor:
    """Soft attention weights ``softmax(q k^T * scale)``, ``[..., Lq, Lk]`` (scale default ``1/sqrt(d)``)."""
    _check_qkv(q, k, k)
    return _safe_softmax(_masked_scores(q, k, _combined_mask(q, k, mask, causal), scale))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *,
                                 causal: bool = False, return_weights: bool = False, dropout: float = 0.0,
                                 scale: float | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Soft attention ``softmax(q k^T / sqrt(d)) v``.

    Args:
        q: ``[..., Lq, d]`` queries; k: ``[..., Lk, d]`` keys; v: ``[..., Lk, dv]`` values.
        mask: boolean, broadcastable to ``[..., Lq, Lk]``, True = attend (see the module docstring for
            fully masked rows: zero weights, zero output).
        causal: query ``i`` attends only to keys ``j <= i``.
        return_weights: also return the weights ``[..., Lq, Lk]`` (uses the explicit path; without it the
            fused ``torch.nn.functional.scaled_dot_product_attention`` kernel is used).
        dropout: dropout probability on the weights (pass 0 at evaluation time).
        scale: score scale, default ``1/sqrt(d)``.

    Returns:
        ``[..., Lq, dv]``, or ``(output, weights)`` when ``return_weights``.
    """
    _check_qkv(q, k, v)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    full_mask = _combined_mask(q, k, mask, causal)
    if not return_weights and any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in (q, k, v)):
        # under torch.func transforms (vmap over tasks) the CPU fused kernel has no batching rule and
        # falls back to a per-example loop (with a warning); the explicit formula batches
        weights = _safe_softmax(_masked_scores(q, k, full_mask, scale))
        return (F.dropout(weights, dropout) if dropout > 0 else weights) @ v
    if return_weights:
        weights = _safe_softmax(_masked_scores(q, k, full_mask, scale))
        dropped = F.dropout(weights, dropout) if dropout > 0 else weights
        return dropped @ v, weights
    if full_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale)
    # The fused kernel returns NaN for rows with no attendable key: let those rows attend everywhere,
    # then zero them.
    empty_rows = ~full_mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=full_mask | empty_rows, dropout_p=dropout,
                                         scale=scale)
    return out.masked_fill(empty_rows, 0.0)


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Value of ``hard`` in the forward pass, gradient of ``soft`` in the backward pass."""
    return hard.detach() + soft - soft.detach()


def topk_attention(q: Tensor, k: Tensor, v: Tensor, top_k: int, mask: Tensor | None = None, *,
                   causal: bool = False, straight_through_grad: bool = True, return_weights: bool = False,
                   scale: float | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Hard attention over the ``top_k`` highest-scoring keys of every query row.

    Forward weights: the soft weights restricted to the ``top_k`` best attendable keys and renormalised
    (``top_k=1`` gives one-hot weights). Backward: with ``straight_through_grad`` the gradient is exactly
    that of soft attention; otherwise the gradient of the renormalised weights (zero for dropped keys).
    Shapes as in ``scaled_dot_product_attention``; returns ``[..., Lq, dv]`` (and weights).
    """
    _check_qkv(q, k, v)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    full_mask = _combined_mask(q, k, mask, causal)
    scores = _masked_scores(q, k, full_mask, scale)
    soft = _safe_softmax(scores)
    kk = min(top_k, scores.shape[-1])
    kept_index = scores.topk(kk, dim=-1).indices
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, kept_index, True)
    keep = keep & ~torch.isneginf(scores)  # never keep a masked key (rows with < top_k attendable keys)
    hard = _safe_softmax(scores.masked_fill(~keep, float("-inf")))
    weights = straight_through(hard, soft) if straight_through_grad else hard
    out = weights @ v
    return (out, weights) if return_weights else out


def gumbel_softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *,
                             tau: float = 1.0, hard: bool = True, causal: bool = False,
                             generator: torch.Generator | None = None,
                             noise: Tensor | None = None, return_weights: bool = False,
                             scale: float | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Stochastic attention: each query picks a key by a Gumbel-softmax sample.

    Relaxed weights ``y = softmax((scores + g) / tau)`` with ``g ~ Gumbel(0, 1)`` (drawn from ``generator``,
    or given as ``noise`` of shape ``[..., Lq, Lk]``). With ``hard`` the forward weights are the one-hot
    ``argmax y`` and the gradient is that of ``y`` (straight-through). ``tau > 0`` is the temperature.
    Masked keys are never picked; fully masked rows give zero output.
    """
    _check_qkv(q, k, v)
    if tau <= 0:
        raise ValueError(f"tau (temperature) must be > 0, got {tau}")
    full_mask = _combined_mask(q, k, mask, causal)
    scores = _masked_scores(q, k, full_mask, scale)
    if noise is None:
        uniform = torch.rand(scores.shape, generator=generator, dtype=scores.dtype, device=scores.device)
        noise = -torch.log((-torch.log(uniform.clamp_min(1e-20))).clamp_min(1e-20))
    elif noise.shape != scores.shape:
        raise ValueError(f"noise must have the attention shape {tuple(scores.shape)}, "
                         f"got {tuple(noise.shape)}")
    relaxed = _safe_softmax((scores + noise) / tau)
    weights = relaxed
    if hard:
        empty_rows = torch.isneginf(scores).all(-1, keepdim=True)
        one_hot = torch.zeros_like(relaxed).scatter(-1, relaxed.argmax(-1, keepdim=True), 1.0)
        weights = straight_through(one_hot.masked_fill(empty_rows, 0.0), relaxed)
    out = weights @ v
    return (out, weights) if return_weights else out


# ---------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------
class MultiHeadAttention(nn.Module):
    """Multi-head attention with a choice of soft, hard top-k or Gumbel-softmax weights.

    Args:
        dim: model size of the queries (and output, unless ``out_dim``); must be divisible by ``heads``.
        heads: number of heads.
        key_dim / value_dim: feature sizes of keys / values (default ``dim``).
        out_dim: output size (default ``dim``).
        causal: query ``i`` attends only to keys ``j <= i``.
        dropout: dropout on the attention weights (training mode only).
        mode: ``"soft"``, ``"topk"`` or ``"gumbel"``.
        top_k: keys kept per row in ``"topk"`` mode; tau: temperature in ``"gumbel"`` mode.

    ``forward(query [B, Lq, dim], key [B, Lk, key_dim] = query, value [B, Lk, value_dim] = key, mask)``
    returns ``[B, Lq, out_dim]`` (and weights ``[B, heads, Lq, Lk]`` if ``return_weights``). ``mask`` is
    boolean, True = attend, broadcastable to ``[B, Lq, Lk]`` (use ``[B, 1, Lk]`` for key padding).
    """

    def __init__(self, dim: int, heads: int = 1, *, key_dim: int | None = None, value_dim: int | None = None,
                 out_dim: int | None = None, causal: bool = False, dropout: float = 0.0, mode: str = "soft",
                 top_k: int = 1, tau: float = 1.0, bias: bool = True) -> None:
        super().__init__()
        if heads < 1 or dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be a positive multiple of heads ({heads})")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"mode must be one of {ATTENTION_MODES}, got {mode!r}")
        self.dim, self.heads, self.causal, self.dropout = dim, heads, causal, dropout
        self.mode, self.top_k, self.tau = mode, top_k, tau
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(key_dim or dim, dim, bias=bias)
        self.v_proj = nn.Linear(value_dim or key_dim or dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, out_dim or dim, bias=bias)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                mask: Tensor | None = None, *,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        key = query if key is None else key
        value = key if value is None else value
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3:
                raise ValueError(f"{name} must be [batch, length, features], got shape {tuple(t.shape)}; "
                                 "add a batch dim with .unsqueeze(0)")
        q, k = self._split(self.q_proj(query)), self._split(self.k_proj(key))
        v = self._split(self.v_proj(value))
        if mask is not None:
            if mask.dim() == 2:
                mask = mask.unsqueeze(0)
            mask = mask.unsqueeze(-3)  # heads axis
        dropout = self.dropout if self.training else 0.0
        if self.mode == "soft":
            result = scaled_dot_product_attention(q, k, v, mask, causal=self.causal, dropout=dropout,
                                                  return_weights=return_weights)
        elif self.mode == "topk":
            result = topk_attention(q, k, v, self.top_k, mask, causal=self.causal,
                                    return_weights=return_weights)
        else:
            result = gumbel_softmax_attention(q, k, v, mask, tau=self.tau, hard=True, causal=self.causal,
                                              return_weights=return_weights)
        if isinstance(result, tuple):  # return_weights
            out, weights = result
            return self._merge(out, query), weights
        return self._merge(result, query)

    def _merge(self, out: Tensor, query: Tensor) -> Tensor:
        """Heads ``[B, heads, L, d]`` -> ``[B, L, out_dim]``."""
        return self.out_proj(out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.dim))


class SelfAttention(MultiHeadAttention):
    """Self-attention ``x [B, L, dim] -> [B, L, out_dim]``: queries, keys and values all come from ``x``.

    Without ``causal`` it is permutation-equivariant over the ``L`` axis (a set operation).
    """

    def forward(self, x: Tensor, mask: Tensor | None = None, *,  # type: ignore[override]
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return super().forward(x, x, x, mask, return_weights=return_weights)


class SetAttentionBlock(nn.Module):
    """Set Transformer block (Lee et al. 2019): ``h = LN(x + MHA(x)); out = LN(h + FFN(h))``.

    ``x [B, L, dim] -> [B, L, dim]``, permutation-equivariant over ``L``.
    """

    def __init__(self, dim: int, heads: int = 1, *, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, heads, dropout=dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        hidden = hidden or 2 * dim
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.norm1(x + self.attention(x, mask))
        return self.norm2(h + self.ffn(h))


class AttentionPooling(nn.Module):
    """Pool a set by attention from ``seeds`` learned queries: ``x [B, L, dim] -> [B, seeds, dim]``.

    Permutation-invariant over ``L``. ``mask`` (boolean ``[B, L]``, True = element present) ignores padding.
    """

    def __init__(self, dim: int, heads: int = 1, seeds: int = 1) -> None:
        super().__init__()
        self.seed_queries = nn.Parameter(torch.randn(1, seeds, dim) / math.sqrt(dim))
        self.attention = MultiHeadAttention(dim, heads)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        queries = self.seed_queries.expand(x.shape[0], -1, -1)
        return self.attention(queries, x, x, None if mask is None else mask.unsqueeze(1))
