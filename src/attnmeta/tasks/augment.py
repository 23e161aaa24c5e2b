"""Class augmentation: transformations that turn every base class into several new classes.

The classic example is Omniglot (Vinyals et al. 2016; MAML): each 90-degree rotation of a character is a
class of its own. A ``ClassAugmentation`` with ``V = len(augmentation)`` variants maps base class ``c`` to the
augmented classes ``c * V + v`` for ``v = 0..V-1``; variant ``v`` of an example is ``augmentation(x, v)``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class ClassAugmentation(Protocol):
    """Makes ``len(self)`` variants of every base class.

    ``__call__(x, variant)`` takes examples ``x`` ``[m, *input_shape]`` and int64 ``variant`` ``[m]``
    (values in ``0..len(self)-1``, on ``x.device``) and returns the transformed examples ``[m, *shape]``
    (all variants must give the same shape). It must be deterministic: the variant alone defines the class.
    An optional ``check_example_shape(shape)`` method may raise ``ValueError`` for inputs it cannot handle,
    and an optional ``gather(data, index, variant)`` computing ``self(data[index], variant)`` lets the
    sampler's tensor path skip one copy of the chosen examples.
    """

    def __len__(self) -> int: ...

    def __call__(self, x: Tensor, variant: Tensor) -> Tensor: ...


def augmented_class_id(base_label: int | Tensor, variant: int | Tensor, num_variants: int) -> int | Tensor:
    """Augmented class id ``base_label * num_variants + variant`` (works on ints and int64 tensors)."""
    return base_label * num_variants + variant


class Rotations:
    """Rotation of the last two (height, width) axes by multiples of 90 degrees, counter-clockwise.

    Variant ``v`` rotates by ``degrees[v]``, exactly ``torch.rot90(x, degrees[v] // 90, dims=(-2, -1))``
    (the same direction as ``numpy.rot90`` on an image displayed with row 0 at the top).

    Args:
        degrees: distinct multiples of 90 (e.g. ``(0, 90, 180, 270)``, the Omniglot protocol).
    """

    def __init__(self, degrees: Sequence[int] = (0, 90, 180, 270)) -> None:
        if isinstance(degrees, (str, bytes)) or not isinstance(degrees, Sequence):
            raise TypeError(
                f"rotations must be a sequence of degrees like (0, 90, 180, 270), got {degrees!r}"
            )
        if len(degrees) == 0:
            raise ValueError(
                "rotations is empty; pass e.g. (0, 90, 180, 270), or None for no rotation classes"
            )
        parsed = []
        for d in degrees:
            if isinstance(d, bool):
                raise TypeError(f"rotations must be integer degrees, got {d!r} in {tuple(degrees)}")
            try:
                d = operator.index(d)
            except TypeError:
                raise TypeError(f"rotations must be integer degrees, got {d!r} in {tuple(degrees)}") from None
            if d % 90 != 0:
                raise ValueError(f"rotations must be multiples of 90 degrees, got {d} in {tuple(degrees)}")
            parsed.append(d)
        turns = [d // 90 % 4 for d in parsed]
        if len(set(turns)) != len(turns):
            raise ValueError(
                f"rotations {tuple(parsed)} repeat an angle (modulo 360); each rotation must make a new class"
            )
        self.degrees = tuple(parsed)
        self.quarter_turns = tuple(turns)

    def __len__(self) -> int:
        return len(self.degrees)

    def __repr__(self) -> str:
        return f"Rotations({self.degrees})"

    def check_example_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless examples of ``shape`` can be rotated to one common shape."""
        if len(shape) < 2:
            raise ValueError(
                f"rotations need examples with at least 2 (height, width) axes, got shape {tuple(shape)}"
            )
        if any(k % 2 for k in self.quarter_turns) and shape[-1] != shape[-2]:
            raise ValueError(
                f"90/270-degree rotations need square images, got height x width = {shape[-2]} x "
                f"{shape[-1]}; crop or resize to a square, or use rotations=(0, 180)"
            )

    def __call__(self, x: Tensor, variant: Tensor) -> Tensor:
        """Rotate examples ``x`` ``[m, ..., H, W]`` by their variants ``[m]``."""
        return self.gather(x, torch.arange(x.shape[0], device=x.device), variant)

    def gather(self, data: Tensor, index: Tensor, variant: Tensor) -> Tensor:
        """``self(data[index], variant)`` in one pass over the chosen examples (the sampler's fast path).

        Each variant's examples are read with one ``index_select`` and rotated together. Floating data are
        written to their places with ``index_copy_``; other dtypes (where ``index_copy_`` is slow on CPU) are
        concatenated in variant order and put back in order with one more gather.
        """
        if data.is_floating_point():
            out = data.new_empty((index.shape[0], *data.shape[1:]))
            for v, k in enumerate(self.quarter_turns):
                rows = torch.nonzero(variant == v).squeeze(1)
                if rows.numel():
                    part = data.index_select(0, index[rows])
                    out.index_copy_(0, rows, torch.rot90(part, k, dims=(-2, -1)) if k else part)
            return out
        order = torch.argsort(variant, stable=True)
        counts = torch.bincount(variant, minlength=len(self)).tolist()
        grouped_index = index[order]
        parts, start = [], 0
        for k, count in zip(self.quarter_turns, counts):
            if count:
                segment = data.index_select(0, grouped_index[start : start + count])
                parts.append(torch.rot90(segment, k, dims=(-2, -1)) if k else segment)
                start += count
        return torch.cat(parts).index_select(0, torch.argsort(order))


class RandomShift:
    """Random translation of every example by up to ``max_pixels`` in each image axis (a batch transform).

    Each example ``[..., H, W]`` moves by its own integer offsets ``(dy, dx)``, drawn uniformly from
    ``-max_pixels..max_pixels``; the pixels that enter at the border repeat the edge (Omniglot's background
    is uniform, so the edge is background). Unlike ``Rotations`` this makes no new classes: it varies the
    examples of a class (Omniglot's characters are drawn by hand at slightly different positions). Use it as
    an ``EpisodeSampler`` ``batch_transform`` for training episodes only; test episodes stay untouched.

    Args:
        max_pixels: largest shift in pixels (0 leaves examples unchanged).
        seed: seeds the transform's own generator, so a training run is reproducible.
    """

    def __init__(self, max_pixels: int = 2, seed: int = 0) -> None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
            raise ValueError(f"max_pixels must be a non-negative integer, got {max_pixels!r}")
        self.max_pixels = max_pixels
        self.generator = torch.Generator().manual_seed(seed)

    def __repr__(self) -> str:
        return f"RandomShift(max_pixels={self.max_pixels})"

    def __call__(self, x: Tensor) -> Tensor:
        """Shift examples ``x`` ``[m, ..., H, W]`` -> same shape and dtype."""
        if x.dim() < 3:
            raise ValueError(f"RandomShift needs examples [m, ..., H, W], got shape {tuple(x.shape)}")
        p = self.max_pixels
        if p == 0:
            return x
        m, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        offsets = torch.randint(0, 2 * p + 1, (2, m), generator=self.generator).to(x.device)
        flat = x.reshape(m, -1, height, width)
        padded = torch.nn.functional.pad(flat, (p, p, p, p), mode="replicate")
        rows = (offsets[0, :, None] + torch.arange(height, device=x.device))[:, :, None]  # [m, H, 1]
        cols = (offsets[1, :, None] + torch.arange(width, device=x.device))[:, None, :]  # [m, 1, W]
        examples = torch.arange(m, device=x.device)[:, None, None]
        shifted = padded.permute(0, 2, 3, 1)[examples, rows, cols]  # [m, H, W, channels]
        return shifted.permute(0, 3, 1, 2).reshape(x.shape).contiguous()


class RandomAffine:
    """Random rotation, scaling, shear and translation of every example (a batch transform).

    Each example ``[..., H, W]`` gets its own affine map: a rotation by an angle drawn uniformly from
    ``[-degrees, degrees]``, a zoom by a factor from ``[1 - scale, 1 + scale]``, a horizontal shear of
    ``[-shear, shear]`` degrees and a translation by up to ``translate`` pixels along each axis, all about the
    image centre; pixels are resampled bilinearly and those that come from outside repeat the edge.
    Handwriting varies by such small slants, sizes and offsets (elastic and affine jitter are the classic
    augmentations of handwritten characters); like ``RandomShift`` it makes no new classes. Use it as an
    ``EpisodeSampler`` ``batch_transform`` for training episodes only.

    Args:
        degrees: largest rotation in degrees (0: none).
        scale: largest relative zoom, in ``[0, 1)`` (0.1: factors 0.9 to 1.1).
        shear: largest horizontal shear in degrees, below 90.
        translate: largest translation in pixels (may be fractional).
        seed: seeds the transform's own generator, so a training run is reproducible.
    """

    def __init__(
        self,
        degrees: float = 10.0,
        scale: float = 0.1,
        shear: float = 0.0,
        translate: float = 0.0,
        seed: int = 0,
    ) -> None:
        limits = (("degrees", degrees, 180.0), ("scale", scale, 1.0), ("shear", shear, 90.0))
        for name, value, upper in limits:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < upper:
                raise ValueError(f"{name} must be a number in [0, {upper:g}), got {value!r}")
        if isinstance(translate, bool) or not isinstance(translate, (int, float)) or translate < 0:
            raise ValueError(f"translate must be a non-negative number of pixels, got {translate!r}")
        self.degrees, self.scale, self.shear = float(degrees), float(scale), float(shear)
        self.translate = float(translate)
        self.generator = torch.Generator().manual_seed(seed)

    def __repr__(self) -> str:
        return (
            f"RandomAffine(degrees={self.degrees:g}, scale={self.scale:g}, shear={self.shear:g}, "
            f"translate={self.translate:g})"
        )

    def sample_parameters(self, m: int) -> dict[str, Tensor]:
        """Draw ``m`` maps: ``angle`` (radians, counter-clockwise on screen), ``zoom``, ``shear`` (slope) and
        ``shift`` ``[m, 2]`` (x, y pixels), each ``[m]`` float64 unless stated."""
        u = torch.rand(5, m, generator=self.generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1)
        return {
            "angle": torch.deg2rad(u[0] * self.degrees),
            "zoom": 1 + u[1] * self.scale,
            "shear": torch.tan(torch.deg2rad(u[2] * self.shear)),
            "shift": torch.stack([u[3], u[4]], -1) * self.translate,
        }

    @staticmethod
    def matrices(parameters: dict[str, Tensor], height: int, width: int) -> Tensor:
        """``affine_grid`` matrices ``[m, 2, 3]`` (output -> input, normalized coordinates) of the maps.

        In pixels about the image centre (x right, y down) an output point ``p`` reads the input at
        ``A p - shift`` with ``A = R(angle) @ [[1, -shear], [0, 1]] / zoom`` (``R``: the usual rotation):
        as displayed (rows run downwards) the content turns by ``angle`` counter-clockwise, grows by ``zoom``,
        slants by ``shear`` and moves by ``shift``.
        """
        zoom, shear = parameters["zoom"], parameters["shear"]
        cos, sin = torch.cos(parameters["angle"]) / zoom, torch.sin(parameters["angle"]) / zoom
        a = torch.stack(
            [torch.stack([cos, -sin - cos * shear], -1), torch.stack([sin, cos - sin * shear], -1)], -2
        )
        half = torch.tensor([width / 2, height / 2], dtype=torch.float64)  # (x, y) half sizes in pixels
        a = a * half[None, None, :] / half[None, :, None]
        shift = -parameters["shift"].to(torch.float64) / half
        return torch.cat([a, shift[:, :, None]], -1).float()

    def __call__(self, x: Tensor) -> Tensor:
        """Transform examples ``x`` ``[m, ..., H, W]`` (floating point) -> same shape and dtype."""
        if x.dim() < 3:
            raise ValueError(f"RandomAffine needs examples [m, ..., H, W], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(
                f"RandomAffine resamples pixels and needs floating-point examples, got {x.dtype}; "
                "convert first (e.g. with attnmeta.data.benchmarks.uint8_to_unit) and apply it to the result"
            )
        if self.degrees == self.scale == self.shear == self.translate == 0:
            return x
        m, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        flat = x.reshape(m, -1, height, width)
        theta = self.matrices(self.sample_parameters(m), height, width).to(device=x.device, dtype=x.dtype)
        grid = torch.nn.functional.affine_grid(theta, list(flat.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(
            flat, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.reshape(x.shape)
