"""Feature attention: task-conditioned, FiLM-style gating of every block of a backbone.

* ``TaskEncoder``: self-attention over the support set's (features, labels) pairs, pooled by attention into
  one task embedding ``[task_dim]`` (permutation-invariant over the support set).
* ``FiLMBackbone``: wraps any backbone made of blocks (``Conv4``/``ResNet12``: ``blocks.i``; ``MLP``:
  ``layers.i``; or explicit ``block_names``, e.g. ``["1", "3"]`` for the activations of an
  ``nn.Sequential``). The output of block ``b`` with ``C`` channels becomes
  ``gamma_b * h + beta_b`` with ``gamma_b = 2 sigmoid(W_b z)`` (channel attention in ``(0, 2)``) and
  ``beta_b = U_b z``, and optionally a spatial gate ``2 sigmoid(<V_b z, h[:, :, i, j]> / sqrt(C))`` per
  position. ``z = task_embedding + context``. All gate maps start at zero, so an untrained wrapper is the
  plain backbone.

* ``FeatureAttention``: the options of feature attention in ``AttentionMAML`` (what to wrap, how to adapt);
  ``make_task_encoder`` builds the default ``TaskEncoder`` for an input shape.

Two ways to adapt (see ``AttentionMAML``): everything in the inner loop, or only the small ``context``
vector (CAVIA-like: the inner loop differentiates w.r.t. ``task_dim`` numbers instead of every weight).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.nn.attention import AttentionPooling, SetAttentionBlock

__all__ = ["TaskEncoder", "FiLMBackbone", "FeatureAttention", "find_blocks", "make_task_encoder",
           "FEATURE_MODES"]

FEATURE_MODES = ("all", "context")


class TaskEncoder(nn.Module):
    """Task embedding from a support set: ``(support_x [n, *in], support_y) -> [task_dim]``.

    Each support pair becomes ``[phi(x), label one-hot or y]``, is projected to ``task_dim``, passes
    ``layers`` set-attention blocks and is pooled by attention (one learned seed query).

    Args:
        x_features: size of ``phi(x)`` (``x_encoder``'s output, or the flattened input size).
        y_features: ``ways`` for classification (labels are one-hot encoded), ``out_dim`` for regression.
        task_dim: embedding size; heads / layers of the set-attention blocks.
        x_encoder: optional module ``[n, *in] -> [n, x_features]`` (e.g. a small conv net for images).
        classification: labels are int64 and get one-hot encoded.
    """

    def __init__(self, x_features: int, y_features: int, task_dim: int = 32, *, heads: int = 2,
                 layers: int = 1, x_encoder: nn.Module | None = None, classification: bool = False) -> None:
        super().__init__()
        if task_dim % heads != 0:
            raise ValueError(f"task_dim ({task_dim}) must be a multiple of heads ({heads})")
        self.x_features, self.y_features, self.task_dim = x_features, y_features, task_dim
        self.classification = classification
        self.x_encoder = x_encoder
        self.input = nn.Linear(x_features + y_features, task_dim)
        self.blocks = nn.ModuleList(SetAttentionBlock(task_dim, heads) for _ in range(layers))
        self.pool = AttentionPooling(task_dim, heads)

    def forward(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        x = self.x_encoder(support_x) if self.x_encoder is not None else support_x.flatten(1)
        if x.shape[-1] != self.x_features:
            raise ValueError(f"TaskEncoder expects {self.x_features} input features per example, got "
                             f"{x.shape[-1]}; build it with x_features={x.shape[-1]}")
        if self.classification:
            if support_y.dtype != torch.long:
                raise TypeError(f"classification labels must be int64, got {support_y.dtype}")
            y = F.one_hot(support_y, self.y_features).to(x.dtype)
        else:
            y = support_y.reshape(support_y.shape[0], -1).to(x.dtype)
            if y.shape[-1] != self.y_features:
                raise ValueError(f"TaskEncoder expects {self.y_features} target features, got {y.shape[-1]}")
        h = torch.relu(self.input(torch.cat([x, y], dim=-1))).unsqueeze(0)
        for block in self.blocks:
            h = block(h)
        return self.pool(h)[0, 0]


def make_task_encoder(in_shape: Sequence[int], y_features: int, task_dim: int = 32, *,
                      x_encoder: nn.Module | None = None, classification: bool = False) -> TaskEncoder:
    """The default ``TaskEncoder`` for inputs of shape ``in_shape``: ``x_encoder`` if given, else a 32-filter
    Conv-4 for images (``[C, H, W]``) or the flattened input for anything else."""
    in_shape = tuple(in_shape)
    if x_encoder is None and len(in_shape) == 3:
        from attnmeta.nn.backbones import Conv4

        x_encoder = Conv4(in_shape, hidden=32)
        x_features = x_encoder.feature_dim
    elif x_encoder is not None:
        with torch.no_grad():
            x_features = int(x_encoder(torch.zeros(2, *in_shape)).shape[-1])
    else:
        x_features = int(math.prod(in_shape))
    return TaskEncoder(x_features, y_features, task_dim, x_encoder=x_encoder, classification=classification)


def find_blocks(backbone: nn.Module) -> list[str]:
    """Names of the blocks of a backbone: children of ``blocks`` (Conv4, ResNet12) or ``layers`` (MLP)."""
    for attribute in ("blocks", "layers"):
        container = getattr(backbone, attribute, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) > 0:
            return [f"{attribute}.{i}" for i in range(len(container))]
    raise ValueError(f"cannot find the blocks of {type(backbone).__name__} (no .blocks or .layers "
                     "container); pass block_names=[...]: the submodules whose outputs to gate")


class _BlockGate(nn.Module):
    """FiLM gates of one block: channel scale/shift and an optional spatial gate, from a task vector."""

    def __init__(self, task_dim: int, channels: int, spatial: bool) -> None:
        super().__init__()
        self.channel = nn.Linear(task_dim, 2 * channels)
        nn.init.zeros_(self.channel.weight)
        nn.init.zeros_(self.channel.bias)
        self.spatial = nn.Linear(task_dim, channels, bias=False) if spatial else None
        if self.spatial is not None:
            nn.init.zeros_(self.spatial.weight)
        self.channels = channels

    def forward(self, h: Tensor, task: Tensor) -> tuple[Tensor, Tensor]:
        scale_logit, shift = self.channel(task).chunk(2, dim=-1)
        gamma = 2 * torch.sigmoid(scale_logit)
        view = (1, self.channels) + (1,) * (h.dim() - 2)
        out = h * gamma.view(view) + shift.view(view)
        if self.spatial is not None and h.dim() == 4:
            query = self.spatial(task)
            logits = torch.einsum("c,nchw->nhw", query, h) / math.sqrt(self.channels)
            out = out * (2 * torch.sigmoid(logits)).unsqueeze(1)
        return out, gamma


class FiLMBackbone(nn.Module):
    """Wrap ``backbone`` so that ``forward(x, task_embedding)`` gates every block by the task.

    Args:
        backbone: any module made of blocks (see ``find_blocks``); its outputs are unchanged in shape.
        task_dim: size of the task embedding / context vector.
        block_names: submodules whose outputs are gated (default ``find_blocks(backbone)``).
        spatial: also gate spatial positions of 4-d block outputs.
        in_shape: shape of one input, to discover block widths (default ``backbone.in_shape`` or
            ``(backbone.in_features,)``).

    ``forward(x [n, *in], task_embedding [task_dim] or None)`` returns ``backbone(x)``'s shape. The gates use
    ``task_embedding + context`` (``context`` is a parameter, zero-initialised: the CAVIA context). With
    ``record = True`` the channel gates ``gamma`` of the last call are kept in ``last_gates`` (detached).
    """

    def __init__(self, backbone: nn.Module, task_dim: int = 32, *, block_names: Sequence[str] | None = None,
                 spatial: bool = False, in_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        self.task_dim = task_dim
        self.context = nn.Parameter(torch.zeros(task_dim))
        names = list(block_names) if block_names is not None else find_blocks(backbone)
        modules = dict(backbone.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(f"block_names {unknown} are not submodules of the backbone")
        widths = _block_widths(backbone, [modules[n] for n in names], in_shape)
        self.block_names = names
        reference = next(backbone.parameters())
        self.gates = nn.ModuleList(_BlockGate(task_dim, c, spatial) for c in widths).to(reference)
        self.context.data = self.context.data.to(reference)
        self.backbone = backbone
        self._task: Tensor | None = None
        self.record = False
        self.last_gates: dict[str, Tensor] = {}
        for index, name in enumerate(names):
            modules[name].register_forward_hook(_GateHook(self, index))

    def forward(self, x: Tensor, task_embedding: Tensor | None = None) -> Tensor:
        if task_embedding is not None and task_embedding.shape != (self.task_dim,):
            raise ValueError(f"task_embedding must have shape ({self.task_dim},) (task_dim features), got "
                             f"{tuple(task_embedding.shape)}")
        task = self.context if task_embedding is None else task_embedding + self.context
        self._task = task
        try:
            return self.backbone(x)
        finally:
            self._task = None


class _GateHook:
    """Forward hook applying gate ``index`` of ``owner`` (an object, not a closure, so ``copy.deepcopy`` of
    the wrapper re-targets it to the copy)."""

    def __init__(self, owner: FiLMBackbone, index: int) -> None:
        self.owner, self.index = owner, index

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        owner = self.owner
        if owner._task is None:
            return output
        gated, gamma = owner.gates[self.index](output, owner._task)
        if owner.record:
            owner.last_gates[owner.block_names[self.index]] = gamma.detach()
        return gated


def _block_widths(backbone: nn.Module, blocks: list[nn.Module], in_shape: Sequence[int] | None) -> list[int]:
    if in_shape is None:
        if hasattr(backbone, "in_shape"):
            # plain attributes of the backbone, which Module.__getattr__ types as Tensor | Module
            in_shape = tuple(backbone.in_shape)  # type: ignore[arg-type]
        elif hasattr(backbone, "in_features"):
            in_shape = (int(backbone.in_features),)  # type: ignore[arg-type]
        else:
            raise ValueError(f"cannot infer the input shape of {type(backbone).__name__}; "
                             "pass in_shape=(...)")
    widths: dict[int, int] = {}
    handles = [b.register_forward_hook(lambda m, i, o, k=k: widths.__setitem__(k, o.shape[1]))
               for k, b in enumerate(blocks)]
    param = next(backbone.parameters())
    try:
        with torch.no_grad():
            backbone(torch.zeros(2, *in_shape, dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    if len(widths) != len(blocks):
        raise ValueError("some blocks were not called in the backbone's forward pass; check block_names")
    return [widths[k] for k in range(len(blocks))]


@dataclass(frozen=True)
class FeatureAttention:
    """Feature attention of ``AttentionMAML``: wrap the model in ``FiLMBackbone`` and embed every task's
    support set with a ``TaskEncoder`` (``make_task_encoder``) that drives the gates.

    Args:
        mode: ``"all"`` (every model parameter adapts in the inner loop) or ``"context"`` (only the
            ``task_dim`` context vector adapts, CAVIA-like; cheaper).
        task_dim: size of the task embedding / context vector.
        spatial: also gate spatial positions of 4-d block outputs (image backbones).
        block_names: submodules whose outputs are gated (default ``find_blocks``: ``blocks.i`` /
            ``layers.i``); any ``nn.Sequential`` works with e.g. ``("1", "3")`` (its activations).
        x_encoder: feature extractor of the task encoder (default: see ``make_task_encoder``).
    """

    mode: str = "all"
    task_dim: int = 32
    spatial: bool = False
    block_names: tuple[str, ...] | None = None
    x_encoder: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.mode not in FEATURE_MODES:
            raise ValueError(f"feature attention mode must be one of {FEATURE_MODES}, got {self.mode!r}")
        if isinstance(self.task_dim, bool) or not isinstance(self.task_dim, int) or self.task_dim < 1:
            raise ValueError(f"feature attention task_dim must be a positive int, got {self.task_dim!r}")
        if not isinstance(self.spatial, bool):
            raise ValueError(f"feature attention spatial must be true or false, got {self.spatial!r}")
        if self.block_names is not None:
            names = self.block_names
            if isinstance(names, str) or not all(isinstance(n, str) for n in names) or not names:
                raise ValueError(f"feature attention block_names must be a non-empty list of submodule "
                                 f"names, got {names!r}")
            object.__setattr__(self, "block_names", tuple(names))

    def wrap(self, backbone: nn.Module, in_shape: Sequence[int] | None = None) -> FiLMBackbone:
        """``backbone`` with FiLM gates on its blocks."""
        return FiLMBackbone(backbone, self.task_dim, block_names=self.block_names, spatial=self.spatial,
                            in_shape=in_shape)
