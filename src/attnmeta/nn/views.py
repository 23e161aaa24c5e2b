"""Test-time view ensembles: one embedding network applied to several transformed copies of each input.

``RotationEnsemble(model)`` embeds an image and its 90/180/270-degree rotations with the same weights and
concatenates the four embeddings, ``[n, C, H, W] -> [n, 4 * D]``. Under the squared Euclidean distance of
Prototypical Networks this sums the four views' distances (an ensemble of logits); under the cosine of
Matching Networks it compares all views at once. On Omniglot, where rotated characters are trained as new
classes, every view is one the network has learned to embed (see the README for what it gains).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["RotationEnsemble", "check_quarter_turns", "rotate_images"]


def rotate_images(x: Tensor, quarter_turns: int) -> Tensor:
    """Square images ``[..., H, W]`` turned ``quarter_turns`` times counter-clockwise (a clear error if not
    square: a rotation would change their shape)."""
    if x.dim() < 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"a rotation ensemble needs square images [..., H, W] with H == W, got inputs of "
                         f"shape {tuple(x.shape)}")
    return torch.rot90(x, quarter_turns, dims=(-2, -1)) if quarter_turns else x


def check_quarter_turns(quarter_turns: Sequence[int]) -> tuple[int, ...]:
    """``quarter_turns`` as a tuple of distinct ints in 0..3, or a ``ValueError`` saying what is wrong."""
    turns = tuple(int(k) for k in quarter_turns)
    if not turns or len(set(turns)) != len(turns) or any(k not in range(4) for k in turns):
        raise ValueError(f"quarter_turns must be distinct values in 0..3 (e.g. (0, 1, 2, 3)), got "
                         f"{tuple(quarter_turns)}")
    return turns


class RotationEnsemble(nn.Module):
    """Concatenated embeddings of quarter-turn rotations of the input.

    Args:
        model: embedding network, ``[n, C, H, W] -> [n, ...]`` (outputs flattened to ``D``).
        quarter_turns: counter-clockwise quarter turns of the views, distinct values in 0..3.

    Shapes: ``[n, C, H, W]`` (square ``H == W``) -> ``[n, len(quarter_turns) * D]``.
    """

    def __init__(self, model: nn.Module, quarter_turns: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module embedding network, got {type(model).__name__}")
        self.model = model
        self.quarter_turns = check_quarter_turns(quarter_turns)

    def forward(self, x: Tensor) -> Tensor:
        views = [self.model(rotate_images(x, k)) for k in self.quarter_turns]
        return torch.cat([view.flatten(1) for view in views], dim=-1)

    def extra_repr(self) -> str:
        return f"quarter_turns={self.quarter_turns}"
