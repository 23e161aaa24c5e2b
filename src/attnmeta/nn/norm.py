"""Batch normalization with batch statistics only, safe under ``torch.func.vmap`` + ``torch.func.grad``.

Gradient-based meta-learners (MAML and friends) normalize with the statistics of the current batch
(transductive batch norm, as in the MAML reference code) and differentiate through the inner loop.
The fused ``F.batch_norm`` kernel in training mode gives wrong second-order gradients under ``vmap``
(about 1% off in float64 for weights before the BN layer, torch 2.13/2.14). So inside ``torch.func``
transforms the normalization is written with elementary differentiable ops (``var_mean``, ``rsqrt``), whose
derivatives compose correctly under every transform; in plain autograd (no transform active, e.g. the loop
strategy with ``torch.autograd.grad``) the fused kernel is used: its derivatives are right there, and it is
about 2x faster on CPU. There are no running statistics: the layer behaves identically in train and eval
mode, so a meta-learned model normalizes each task's support and query sets with their own statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _is_functorch_wrapped(t: Tensor | None) -> bool:
    """True for tensors inside a ``torch.func`` transform (vmap's batched, grad's tracking tensors)."""
    return t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t)


def batch_norm_batch_stats(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                           eps: float = 1e-5) -> Tensor:
    """Normalize ``x`` per channel with the statistics of this batch, then scale and shift.

    Args:
        x: ``[N, C, *spatial]`` (``[N, C]``, ``[N, C, L]``, ``[N, C, H, W]``, ...).
        weight: ``[C]`` scale (``None``: 1).
        bias: ``[C]`` shift (``None``: 0).
        eps: added to the biased variance before the square root.

    Returns:
        ``[N, C, *spatial]``: ``(x - mean) / sqrt(var + eps) * weight + bias`` with mean and biased
        variance taken over every dimension except the channel dimension 1.
    """
    if x.dim() < 2:
        raise ValueError(f"batch norm expects input [N, C, *spatial], got shape {tuple(x.shape)}; "
                         "add a batch dimension (x.unsqueeze(0)) or a channel dimension")
    channels = x.shape[1]
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and value.shape != (channels,):
            raise ValueError(f"batch norm {name} must have shape [{channels}] to match the input's "
                             f"{channels} channels (dimension 1), got {tuple(value.shape)}")
    values_per_channel = x.numel() // max(channels, 1)
    if values_per_channel < 2:
        raise ValueError(f"batch norm needs more than 1 value per channel to compute batch statistics, got "
                         f"input shape {tuple(x.shape)}; use at least 2 examples (or a spatial extent > 1)")
    if weight is not None and x.dtype != weight.dtype and x.dtype in (torch.bfloat16, torch.float16):
        x = x.to(weight.dtype)  # mixed precision (autocast): normalize in the parameters' precision
    if not any(_is_functorch_wrapped(t) for t in (x, weight, bias)):
        # Plain autograd (e.g. a loop over tasks with torch.autograd.grad): the fused kernel's first and
        # second derivatives are right here, and it is about 2x faster on CPU. Under torch.func transforms
        # (vmap, grad), where the fused kernel's double backward is wrong, only elementary ops are used.
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    return batch_norm_elementary(x, weight, bias, eps)


def batch_norm_elementary(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                          eps: float = 1e-5) -> Tensor:
    """``batch_norm_batch_stats`` written with elementary ops only (any transform, any context); no checks."""
    reduce_dims = [0, *range(2, x.dim())]
    channels = x.shape[1]
    var, mean = torch.var_mean(x, dim=reduce_dims, keepdim=True, correction=0)
    out = (x - mean) * torch.rsqrt(var + eps)
    shape = [1, channels] + [1] * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


class MetaBatchNorm(nn.Module):
    """Batch norm that always uses the current batch's statistics (no running statistics).

    Constructor as ``nn.BatchNorm2d(num_features, eps=1e-5, affine=True)``. Input ``[N, C, *spatial]``
    with ``input_dims`` (``None``: any) total dimensions.

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance for numerical stability.
        affine: learnable per-channel ``weight`` (init 1) and ``bias`` (init 0).
    """

    input_dims: tuple[int, ...] | None = None

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"num_features must be a positive int (the number of channels), "
                             f"got {num_features!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.num_features, self.eps, self.affine = num_features, float(eps), affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_dims is not None and x.dim() not in self.input_dims:
            dims = " or ".join(map(str, self.input_dims))
            raise ValueError(f"{type(self).__name__} expects a {dims}-D input [N, C, ...], "
                             f"got shape {tuple(x.shape)}")
        if x.dim() >= 2 and x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got {x.shape[1]} channels in input "
                             f"shape {tuple(x.shape)}; channels are dimension 1")
        return batch_norm_batch_stats(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, batch statistics only"


class MetaBatchNorm1d(MetaBatchNorm):
    """Batch-statistics batch norm for ``[N, C]`` or ``[N, C, L]`` inputs."""

    input_dims = (2, 3)


class MetaBatchNorm2d(MetaBatchNorm):
    """Batch-statistics batch norm for ``[N, C, H, W]`` inputs."""

    input_dims = (4,)


class MetaBatchNormReLU2d(MetaBatchNorm2d):
    """``relu(MetaBatchNorm2d(x))`` in one module (the Conv-4 / ResNet block pattern)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(super().forward(x))


def convert_batch_norm(model: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d`` in ``model`` (in place) by the batch-statistics version.

    The affine parameters are copied; running statistics are dropped (meta-learned models normalize with
    each batch's own statistics). Returns ``model``.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            cls = MetaBatchNorm2d if isinstance(child, nn.BatchNorm2d) else MetaBatchNorm1d
            new = cls(child.num_features, eps=child.eps, affine=child.affine)
            if child.affine:
                with torch.no_grad():
                    new.weight.copy_(child.weight)
                    new.bias.copy_(child.bias)
                new.to(child.weight)
            setattr(model, name, new)
        else:
            convert_batch_norm(child)
    return model
