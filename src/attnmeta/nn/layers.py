"""Alternative drop-in blocks for meta-learned conv nets (same outputs and gradients as the plain blocks).

Measured on this 2-core CPU (benchmarks/bench_meta_step.py, second-order Conv-4 meta-step): NOT faster than
the plain blocks (0.66x in CPU time), kept for GPU experiments and as a tested reference.

- ``MaxPool2x2``: 2x2 / stride-2 max-pooling as a reshape + ``amax`` (no index tensor; its double backward is
  elementwise). Equal to ``nn.MaxPool2d(2)`` in value; gradients are equal whenever the maximum of each window
  is unique or, after a ReLU, when tied values are all zero (their ReLU gradient is 0 either way).
- ``speed_up_conv_blocks(model)``: swaps, in place, every ``ConvBlock``-like module (attributes ``norm``,
  ``act``, ``pool``) to ``MetaBatchNormReLU2d`` + ``MaxPool2x2``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnmeta.nn.norm import MetaBatchNorm2d, MetaBatchNormReLU2d


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
