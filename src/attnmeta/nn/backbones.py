"""Backbones for few-shot learning: Conv-4, ResNet-12 and an MLP.

Every backbone is a plain ``nn.Module`` usable in two ways:

- with a head (``out_features=ways``): outputs logits ``[n, ways]``, for gradient learners (MAML family),
  called through ``torch.func.functional_call`` with explicit parameters, under ``vmap`` and ``grad``;
- as an embedding (``out_features=None``): outputs features ``[n, feature_dim]``, for metric learners.

Batch norm is ``attnmeta.nn.norm.MetaBatchNorm2d`` (batch statistics only, correct second-order gradients
under ``vmap``): every forward pass normalizes with the statistics of its own input batch, in training and in
evaluation alike (the MAML convention). Conv-4 is assembled from small ``ConvBlock`` modules (conv, norm,
activation, pool as separate attributes) so faster fused blocks can replace them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.nn.layers import can_use_fast_block, conv_norm_relu_pool
from attnmeta.nn.norm import MetaBatchNorm2d

__all__ = ["batch_norm_2d", "ConvBlock", "Conv4", "ResNet12", "ResidualBlock", "DropBlock", "MLP",
           "build_backbone", "BACKBONES", "register_backbone"]


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_input(module: str, x: Tensor, in_shape: tuple[int, ...]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{module} expects a Tensor, got {type(x).__name__}")
    if x.dim() != len(in_shape) + 1 or tuple(x.shape[1:]) != in_shape:
        raise ValueError(f"{module} was built for inputs [n, {', '.join(map(str, in_shape))}], got shape "
                         f"{tuple(x.shape)}; resize the data or rebuild the backbone with in_shape="
                         f"{tuple(x.shape[1:])}")


def batch_norm_2d(channels: int, norm: str = "meta") -> nn.Module:
    """Batch-statistics batch norm: ``"meta"`` (``MetaBatchNorm2d``, correct second-order gradients under
    ``vmap``) or ``"fused"`` (``nn.BatchNorm2d`` without running statistics: the same numbers with the fused
    kernel, about 2x faster on CPU: exact in plain autograd, i.e. metric learners and MAML's loop strategy;
    its second-order gradients are wrong under ``vmap``)."""
    if norm == "meta":
        return MetaBatchNorm2d(channels)
    if norm == "fused":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if norm == "running":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be 'meta', 'fused' or 'running', got {norm!r}")


class ConvBlock(nn.Module):
    """conv3x3 (padding 1) -> batch norm -> ReLU -> max-pool 2.

    ``[n, C_in, H, W] -> [n, C_out, H // 2, W // 2]``. ``norm`` as in ``batch_norm_2d``. By default the block
    is evaluated by ``attnmeta.nn.layers.conv_norm_relu_pool`` (channels_last convolution, ReLU after the
    max-pool: the same values and gradients, faster on CPU; output in channels_last memory format); set
    ``block.fast = False`` (or ``ConvBlock.fast``) for the op-by-op reference.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool = True, norm: str = "meta") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = batch_norm_2d(out_channels, norm)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    fast = True  # exact faster evaluation (``attnmeta.nn.layers.conv_norm_relu_pool``); False: op by op

    def forward(self, x: Tensor) -> Tensor:
        if self.fast and can_use_fast_block(self.conv, self.act, self.pool):
            return conv_norm_relu_pool(x, self.conv, self.norm, self.pool)
        return self.pool(self.act(self.norm(self.conv(x))))


class Conv4(nn.Module):
    """The Conv-4 backbone of Vinyals et al. / MAML / Prototypical Networks.

    Four ``ConvBlock`` s with ``hidden`` filters (64 for Omniglot, 32 for miniImageNet in MAML), flattened.
    28x28 inputs give ``hidden`` features, 84x84 inputs ``hidden * 25``; with ``pool_last=False`` the last
    block keeps its resolution (28x28: ``hidden * 9`` features, a 3x3 map), and ``pools=k`` max-pools after
    the first ``k`` blocks only (28x28, ``pools=2``: a 7x7 map, ``hidden * 49`` features).

    Args:
        in_shape: ``(channels, height, width)`` of the inputs.
        hidden: filters per block.
        out_features: ``None`` for an embedding; otherwise a linear head to this many outputs (ways).
        norm: ``"meta"`` (default, safe for second-order meta-gradients) or ``"fused"`` (faster, first-order
            only); see ``batch_norm_2d``.
        pool_last: max-pool after the fourth block (True, the papers' Conv-4) or keep its spatial map.
        pools: how many blocks, from the first, end with a max-pool (0-4); give it instead of
            ``pool_last=False`` (``pools=3`` is the same network; giving both is an error).
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), hidden: int = 64,
                 out_features: int | None = None, norm: str = "meta", pool_last: bool = True,
                 pools: int | None = None) -> None:
        super().__init__()
        self.in_shape = _image_shape(in_shape, "Conv4")
        hidden = _positive_int("hidden", hidden)
        channels, height, width = self.in_shape
        if not isinstance(pool_last, bool):
            raise TypeError(f"pool_last must be True or False, got {pool_last!r}")
        if pools is None:
            pools = 4 if pool_last else 3
        elif isinstance(pools, bool) or not isinstance(pools, int) or not 0 <= pools <= 4:
            raise ValueError(f"pools must be an integer from 0 to 4 (blocks followed by a max-pool), "
                             f"got {pools!r}")
        elif not pool_last:
            raise ValueError("give pools or pool_last=False, not both (pool_last=False is pools=3)")
        scale = 2**pools
        if min(height, width) < scale:
            raise ValueError(f"Conv4 pools {pools} times and needs images of at least {scale}x{scale}, "
                             f"got {height}x{width}")
        self.blocks = nn.Sequential(*[ConvBlock(channels if i == 0 else hidden, hidden, norm=norm,
                                                pool=i < pools) for i in range(4)])
        self.feature_dim = hidden * (height // scale) * (width // scale)
        self.head = nn.Linear(self.feature_dim, _positive_int("out_features", out_features)) \
            if out_features is not None else None
        self.out_features = out_features

    def embed(self, x: Tensor) -> Tensor:
        """Features ``[n, feature_dim]`` of inputs ``[n, *in_shape]``."""
        _check_input("Conv4", x, self.in_shape)
        return self.blocks(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.embed(x)
        return features if self.head is None else self.head(features)


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): drops ``block_size`` x ``block_size`` squares of feature maps.

    Active only in training mode with ``drop_rate > 0``; it draws random numbers, so under ``vmap`` call it
    with ``randomness="different"`` (or keep ``drop_rate=0``).
    """

    def __init__(self, drop_rate: float = 0.0, block_size: int = 5) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.drop_rate, self.block_size = float(drop_rate), _positive_int("block_size", block_size)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0.0:
            return x
        height, width = x.shape[-2:]
        block = min(self.block_size, height, width)
        valid = (height - block + 1) * (width - block + 1)
        gamma = self.drop_rate * height * width / (block * block * valid)
        seeds = torch.bernoulli(torch.full_like(x[..., :height - block + 1, :width - block + 1], gamma))
        pad = block - 1
        seeds = F.pad(seeds, (pad, pad, pad, pad))
        mask = 1.0 - F.max_pool2d(seeds, block, stride=1)[..., :height, :width] if block > 1 else 1.0 - seeds
        return x * mask * (mask.numel() / mask.sum().clamp_min(1.0))


class ResidualBlock(nn.Module):
    """ResNet-12 block: 3 x (conv3x3 -> BN -> LeakyReLU(0.1)) with a 1x1-conv shortcut, then max-pool 2."""

    def __init__(self, in_channels: int, out_channels: int, drop_rate: float = 0.0,
                 block_size: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = MetaBatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = MetaBatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm3 = MetaBatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      MetaBatchNorm2d(out_channels))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.drop = DropBlock(drop_rate, block_size)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        out = self.act(out + self.shortcut(x))
        return self.drop(self.pool(out))


class ResNet12(nn.Module):
    """ResNet-12 as in MetaOptNet / FEAT: four residual blocks of widths 64-160-320-640, global average pool.

    Args:
        in_shape: ``(channels, height, width)``; each block halves the spatial size (84 -> 5).
        widths: output channels of the four blocks.
        drop_rate: DropBlock drop rate of the last two blocks (0 disables it; MetaOptNet uses 0.1).
        block_size: DropBlock square side in the last two blocks.
        out_features: ``None`` for an embedding (``widths[-1]`` features); otherwise a linear head.
    """

    def __init__(self, in_shape: Sequence[int] = (3, 84, 84), widths: Sequence[int] = (64, 160, 320, 640),
                 drop_rate: float = 0.0, block_size: int = 5, out_features: int | None = None) -> None:
        super().__init__()
        self.in_shape = _image_shape(in_shape, "ResNet12")
        widths = tuple(_positive_int("widths[i]", w) for w in widths)
        if len(widths) != 4:
            raise ValueError(f"ResNet12 has 4 blocks; widths must have 4 entries, got {widths}")
        if min(self.in_shape[1:]) < 16:
            raise ValueError(f"ResNet12 pools four times and needs images of at least 16x16, got "
                             f"{self.in_shape[1]}x{self.in_shape[2]}")
        channels = [self.in_shape[0], *widths]
        self.blocks = nn.Sequential(*[
            ResidualBlock(channels[i], channels[i + 1], drop_rate if i >= 2 else 0.0,
                          block_size if i == 3 else 1)
            for i in range(4)])
        self.feature_dim = widths[-1]
        self.head = nn.Linear(self.feature_dim, _positive_int("out_features", out_features)) \
            if out_features is not None else None
        self.out_features = out_features

    def embed(self, x: Tensor) -> Tensor:
        _check_input("ResNet12", x, self.in_shape)
        return self.blocks(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        features = self.embed(x)
        return features if self.head is None else self.head(features)


class MLP(nn.Module):
    """Fully connected ReLU network ``in_features -> hidden... -> out_features`` (the MAML sinusoid net is
    ``MLP(1, (40, 40), 1)``). ``out_features=None`` returns the last hidden layer (an embedding).

    Inputs ``[n, in_features]``; outputs ``[n, out_features]`` (or ``[n, hidden[-1]]``).
    """

    def __init__(self, in_features: int = 1, hidden: Sequence[int] = (40, 40),
                 out_features: int | None = 1) -> None:
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        sizes = [self.in_features, *(_positive_int("hidden[i]", h) for h in hidden)]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = nn.ReLU()
        self.feature_dim = sizes[-1]
        self.head = nn.Linear(self.feature_dim, _positive_int("out_features", out_features)) \
            if out_features is not None else None
        self.out_features = out_features

    def embed(self, x: Tensor) -> Tensor:
        _check_input("MLP", x, (self.in_features,))
        for layer in self.layers:
            x = self.act(layer(x))
        return x

    def forward(self, x: Tensor) -> Tensor:
        features = self.embed(x)
        return features if self.head is None else self.head(features)


def _image_shape(in_shape: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = tuple(in_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"{name} needs in_shape=(channels, height, width) of positive ints, "
                         f"got {in_shape!r}")
    return shape


def _build_conv4(in_shape: tuple[int, ...], out_features: int | None, **options: Any) -> nn.Module:
    return Conv4(in_shape, out_features=out_features, **options)


def _build_resnet12(in_shape: tuple[int, ...], out_features: int | None, **options: Any) -> nn.Module:
    return ResNet12(in_shape, out_features=out_features, **options)


def _build_mlp(in_shape: tuple[int, ...], out_features: int | None, **options: Any) -> nn.Module:
    if len(in_shape) != 1:
        raise ValueError(f"mlp needs a flat in_shape=(features,), got {in_shape}; "
                         "use conv4/resnet12 for images")
    return MLP(in_shape[0], out_features=out_features, **options)


def _build_text(in_shape: tuple[int, ...], out_features: int | None, **options: Any) -> nn.Module:
    from attnmeta.nn.text import build_text_backbone  # token-id encoders (CLINC150, text files)

    return build_text_backbone(in_shape, out_features, **options)


def _build_minilm(in_shape: tuple[int, ...], out_features: int | None, **options: Any) -> nn.Module:
    from attnmeta.nn.sentence import build_sentence_backbone  # frozen pretrained encoder (extra 'text')

    return build_sentence_backbone(in_shape, out_features, **options)


_build_minilm.text_inputs = "utf8"  # type: ignore[attr-defined]  # text benchmarks give it UTF-8 bytes

BACKBONES = {"conv4": _build_conv4, "resnet12": _build_resnet12, "mlp": _build_mlp, "text": _build_text,
             "minilm": _build_minilm}

BackboneBuilder = Callable[..., nn.Module]


def register_backbone(name: str, builder: BackboneBuilder, *, replace: bool = False) -> None:
    """Make ``builder(in_shape, out_features, **options) -> nn.Module`` buildable by name: in configs
    (``backbone: NAME``, ``backbone_options``), ``--backbone NAME`` (with ``--import`` of the module that
    registers it) and ``build_backbone``. ``replace=True`` overwrites an existing name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise TypeError(f"builder must be callable as builder(in_shape, out_features, **options), "
                        f"got {type(builder).__name__}")
    if name in BACKBONES and not replace:
        raise ValueError(
            f"a backbone named {name!r} is already registered; pass replace=True to overwrite it"
        )
    BACKBONES[name] = builder


def build_backbone(name: str, *, in_shape: Sequence[int], out_features: int | None = None,
                   **options: Any) -> nn.Module:
    """Build a backbone by name.

    Args:
        name: ``"conv4"`` (options ``hidden``), ``"resnet12"`` (``widths``, ``drop_rate``, ``block_size``) or
            ``"mlp"`` (``hidden``: sizes of the hidden layers).
        in_shape: shape of one input, e.g. ``(1, 28, 28)`` or ``(1,)``.
        out_features: ``None`` for an embedding network (metric learners), else the head's outputs (ways).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))} "
                         "(a custom backbone needs --import MODULE_OR_FILE that calls register_backbone)")
    try:
        return BACKBONES[name](tuple(in_shape), out_features, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise TypeError(f"backbone {name!r}: {error}") from None
        raise
