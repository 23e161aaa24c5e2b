"""Faster drop-in evaluation of meta-learned conv blocks (same outputs and gradients as the plain blocks).

- ``conv_norm_relu_pool(x, conv, norm, pool)``: ``pool(relu(norm(conv(x))))`` with exact rewrites:
  a channels_last convolution (im2col + one matmul when the input has few channels, as in Conv-4's first
  layer), ReLU after the max-pool, and, in that first layer, batch norm with batch statistics folded into
  the convolution (``conv3x3_batch_norm``). ``ConvBlock`` (``attnmeta.nn.backbones``) uses it by default;
  on this 2-core CPU the first two rewrites made a second-order Conv-4 MAML meta-step about 1.3x faster than
  the op-by-op network (``benchmarks/bench_meta_step.py``), and the folding another 1.2-1.3x per Conv-4 step
  (``benchmarks/bench_fold.py``; numbers in the README). First and second derivatives are unchanged
  (float64 to 1e-10, ``tests/test_layers.py``), under the loop and under ``vmap``.
- ``MaxPool2x2``: 2x2 / stride-2 max-pooling as a reshape + ``amax`` (no index tensor; its double backward is
  elementwise). Equal to ``nn.MaxPool2d(2)`` in value; gradients are equal whenever the maximum of each window
  is unique or, after a ReLU, when tied values are all zero (their ReLU gradient is 0 either way).
- ``speed_up_conv_blocks(model)``: swaps, in place, every ``ConvBlock``-like module (attributes ``norm``,
  ``act``, ``pool``) to ``MetaBatchNormReLU2d`` + ``MaxPool2x2``. Measured NOT faster on CPU (0.66x in CPU
  time); kept for GPU experiments and as a tested reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.nn.norm import MetaBatchNorm2d, MetaBatchNormReLU2d


def lstm_update(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM update from pre-activations ``gates [B, 4H]`` (input, forget, cell, output gates, in that
    order) and the cell state ``cell [B, H]`` -> ``(h, cell)``; plain tensor ops, twice differentiable."""
    i, f, g, o = gates.chunk(4, dim=-1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


class MaxPool2x2(nn.Module):
    """``[n, C, H, W] -> [n, C, H // 2, W // 2]``: max over 2x2 windows (odd last row/column dropped)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"MaxPool2x2 expects [n, C, H, W], got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        if h < 2 or w < 2:
            raise ValueError(f"MaxPool2x2 needs H, W >= 2, got {h}x{w}")
        x = x[:, :, : h - h % 2, : w - w % 2]
        return x.reshape(n, c, h // 2, 2, w // 2, 2).amax(dim=(3, 5))


def speed_up_conv_blocks(model: nn.Module) -> nn.Module:
    """In place: every submodule with ``norm`` (``MetaBatchNorm2d``), ``act`` (``nn.ReLU``) and ``pool``
    (``nn.MaxPool2d(2)``) attributes gets ``MetaBatchNormReLU2d`` + ``Identity`` + ``MaxPool2x2``.

    Parameter names and values are unchanged (``norm.weight``, ``norm.bias``). Returns ``model``.
    """
    for module in model.modules():
        norm, act, pool = (getattr(module, a, None) for a in ("norm", "act", "pool"))
        if type(norm) is MetaBatchNorm2d and isinstance(act, nn.ReLU):
            fused = MetaBatchNormReLU2d(norm.num_features, eps=norm.eps, affine=norm.affine)
            if norm.affine:
                fused.to(norm.weight)
                with torch.no_grad():
                    fused.weight.copy_(norm.weight)
                    fused.bias.copy_(norm.bias)
            module.norm, module.act = fused, nn.Identity()
        if isinstance(pool, nn.MaxPool2d) and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) \
                and pool.padding in (0, (0, 0)) and not pool.ceil_mode:
            module.pool = MaxPool2x2()
    return model


# --- fast, exact Conv-4 block (measured faster on CPU; same outputs and gradients up to rounding) -------
_IM2COL_MAX_COLUMNS = 32  # in_channels * kh * kw up to this: im2col + one matmul (the Conv-4 input layer)


def _is_plain_conv3x3(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def conv3x3_channels_last(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` (3x3, stride 1) returned in ``channels_last`` memory format.

    ``x [n, C_in, H, W]``, ``weight [C_out, C_in, 3, 3]``, ``bias [C_out]`` -> ``[n, C_out, H, W]``.
    With few input columns (``C_in * 9 <= 32``, e.g. grey or RGB images) it is im2col + one matmul: the
    weight gradient is then a single ``[9 C_in, n H W] @ [n H W, C_out]`` product (oneDNN's weight gradient
    for one input channel is about 8x slower on CPU). Otherwise oneDNN's convolution with channels_last
    weights (faster than NCHW on CPU, and its output feeds channels_last batch norm and max-pool); inside
    ``torch.func`` transforms (which cannot change memory formats) the plain ``F.conv2d``.
    Built from differentiable ops only: first and second derivatives, ``vmap`` and ``grad`` all work.
    """
    c_out, c_in = weight.shape[:2]
    if c_in * 9 > _IM2COL_MAX_COLUMNS:
        if torch._C._functorch.is_functorch_wrapped_tensor(weight):  # vmap cannot change memory formats
            return F.conv2d(x, weight, bias, padding=1)
        out = F.conv2d(x, weight.contiguous(memory_format=torch.channels_last), None, padding=1)
        # the bias as a separate add: oneDNN's bias gradient is slower than a sum
        return out if bias is None else out + bias.view(1, -1, 1, 1)
    n, _, height, width = x.shape
    pieces = _im2col_pieces(x)
    # [9 C_in (+1), C_out] row-major: autograd's weight gradient is then columns.T @ grad (fast in MKL),
    # not (grad.T @ columns).T (about 15x slower for these shapes)
    w = _weight_matrix(weight)
    if bias is not None:  # a column of ones: the bias and its gradient come out of the same product
        pieces.append(x.new_ones(n, height, width, 1))
        w = torch.cat([w, bias.unsqueeze(0)])
    columns = torch.cat(pieces, dim=-1).reshape(n * height * width, -1)
    out = columns @ w.contiguous()
    return out.view(n, height, width, c_out).permute(0, 3, 1, 2)


def _im2col_pieces(x: Tensor) -> list[Tensor]:
    """The 9 shifted views ``[n, H, W, C_in]`` of the zero-padded input, in (row, column) order."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # [n, H+2, W+2, C_in]
    return [padded[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)]


def _weight_matrix(weight: Tensor) -> Tensor:
    """``[C_out, C_in, 3, 3] -> [9 C_in, C_out]``, rows in the (row, column, channel) order of the im2col."""
    return weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0])


def conv3x3_batch_norm(x: Tensor, weight: Tensor, bias: Tensor | None, norm_weight: Tensor | None,
                       norm_bias: Tensor | None, eps: float) -> Tensor:
    """``batch_norm(conv2d(x, weight, bias, padding=1))`` with batch statistics, in one matrix product.

    ``x [n, C_in, H, W]`` with few input channels (``C_in * 9 <= 32``), ``weight [C_out, C_in, 3, 3]``,
    ``bias``, ``norm_weight``, ``norm_bias [C_out]`` (or ``None``) -> ``[n, C_out, H, W]`` (channels_last).
    The convolution is linear in the im2col columns ``P [n H W, 9 C_in]``, so the statistics of its output
    follow from those of the columns: mean ``mu W`` and biased variance ``diag(W^T Cov(P) W)``. Batch norm
    then folds into the weights (``W * s`` with ``s = gamma / sqrt(var + eps)``) and the output is one
    product ``P (W * s) + shift``: the batch norm's passes over the full-resolution output (the largest
    activation of Conv-4) and their gradients disappear. The conv bias cancels, as in batch norm (its
    gradient is exactly 0). Elementary differentiable ops only: exact first and second derivatives in plain
    autograd and under ``vmap``/``grad``, equal to the op-by-op block up to rounding.
    """
    n, c_in, height, width = x.shape
    c_out = weight.shape[0]
    columns = torch.cat(_im2col_pieces(x), dim=-1).reshape(n * height * width, 9 * c_in)
    w = _weight_matrix(weight)
    mean = columns.mean(dim=0)  # [9 C_in]
    centred = columns - mean
    covariance = centred.T @ centred / columns.shape[0]  # [9 C_in, 9 C_in]
    variance = ((covariance @ w) * w).sum(dim=0)  # [C_out]: the biased variance of each output channel
    scale = torch.rsqrt(variance + eps)
    if norm_weight is not None:
        scale = scale * norm_weight
    output_mean = mean @ w
    if bias is not None:  # cancels, as in batch norm; kept in the graph so its gradient is an exact 0
        output_mean = output_mean + bias - bias
    shift = -output_mean * scale
    if norm_bias is not None:
        shift = shift + norm_bias
    out = torch.addmm(shift, columns, (w * scale).contiguous())
    return out.view(n, height, width, c_out).permute(0, 3, 1, 2)


def _batch_statistics_norm(norm: nn.Module,
                           channels: int) -> tuple[Tensor | None, Tensor | None, float] | None:
    """``(weight, bias, eps)`` of ``norm`` when it is a batch norm over ``channels`` that always uses batch
    statistics (``MetaBatchNorm2d``, ``nn.BatchNorm2d(track_running_stats=False)``); ``None`` otherwise."""
    if type(norm) is MetaBatchNorm2d or (type(norm) is nn.BatchNorm2d and not norm.track_running_stats):
        if norm.num_features == channels:
            return norm.weight, norm.bias, float(norm.eps)
    return None


def conv_norm_relu_pool(x: Tensor, conv: nn.Conv2d, norm: nn.Module, pool: nn.Module) -> Tensor:
    """``pool(relu(norm(conv(x))))`` computed faster with the same values and gradients.

    ``conv`` a 3x3 / stride-1 / padding-1 ``nn.Conv2d``; ``norm`` a per-channel module (batch norm);
    ``pool`` ``nn.MaxPool2d(2)`` or ``nn.Identity``. ``[n, C_in, H, W] -> [n, C_out, H // 2, W // 2]``
    (channels_last memory format). Exact rewrites: the convolution runs channels_last
    (``conv3x3_channels_last``; batch norm and max-pool are also faster channels_last on CPU); ReLU is
    applied after the max-pool (``max`` commutes with the monotone ReLU, with the same sub-gradients:
    ties only occur at ReLU's zero, where both orders give gradient 0), so ReLU and its backward run on a
    quarter of the values; and where the input has few channels (Conv-4's first block) and ``norm`` uses
    batch statistics only, batch norm is folded into the convolution (``conv3x3_batch_norm``).
    """
    statistics = _batch_statistics_norm(norm, conv.out_channels)
    if (statistics is not None and conv.in_channels * 9 <= _IM2COL_MAX_COLUMNS and x.dim() == 4
            and x.dtype in (torch.float32, torch.float64) and x.dtype == conv.weight.dtype
            and not torch.is_autocast_enabled(x.device.type)):
        out = conv3x3_batch_norm(x, conv.weight, conv.bias, *statistics)  # batch norm folded in
    else:
        out = norm(conv3x3_channels_last(x, conv.weight, conv.bias))
    return torch.relu(pool(out))


def can_use_fast_block(conv: nn.Module, act: nn.Module, pool: nn.Module) -> bool:
    """Whether ``conv_norm_relu_pool`` reproduces ``pool(act(norm(conv(x))))`` for these modules."""
    if not (_is_plain_conv3x3(conv) and type(act) is nn.ReLU):
        return False
    if type(pool) is nn.Identity:
        return True
    return (type(pool) is nn.MaxPool2d and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1)) and not pool.ceil_mode
            and not pool.return_indices)
