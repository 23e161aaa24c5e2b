"""RandomShift (per-example translation) and the glibc allocator setting used for training speed."""

from __future__ import annotations

import math
import platform

import pytest
import torch
import torch.nn.functional as F

from attnmeta.tasks import RandomAffine, RandomShift
from attnmeta.train.memory import retain_freed_memory


def _all_shifts(image: torch.Tensor, p: int) -> list[torch.Tensor]:
    """Every translation of one image [C, H, W] by (dy, dx) in -p..p, edge pixels repeated."""
    height, width = image.shape[-2:]
    padded = F.pad(image[None], (p, p, p, p), mode="replicate")[0]
    return [padded[:, dy:dy + height, dx:dx + width] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]


def test_each_example_is_a_translation_of_itself_by_at_most_max_pixels():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(40, 2, 9, 7, generator=generator)
    shifted = RandomShift(2, seed=3)(x)
    assert shifted.shape == x.shape and shifted.dtype == x.dtype
    found = set()
    for original, out in zip(x, shifted):
        matches = [i for i, candidate in enumerate(_all_shifts(original, 2)) if torch.equal(candidate, out)]
        assert len(matches) == 1
        found.add(matches[0])
    assert len(found) > 10  # offsets vary across examples (25 possible)


def test_seeded_reproducible_and_zero_is_identity():
    x = torch.rand(16, 1, 28, 28)
    assert torch.equal(RandomShift(3, seed=7)(x), RandomShift(3, seed=7)(x))
    assert not torch.equal(RandomShift(3, seed=7)(x), RandomShift(3, seed=8)(x))
    assert RandomShift(0)(x) is x
    uniform = torch.ones(4, 1, 10, 10)  # a blank page stays blank: the border repeats the edge
    assert torch.equal(RandomShift(2)(uniform), uniform)


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="max_pixels must be a non-negative integer"):
        RandomShift(-1)
    with pytest.raises(ValueError, match="max_pixels must be a non-negative integer"):
        RandomShift(1.5)
    with pytest.raises(ValueError, match=r"needs examples \[m, ..., H, W\]"):
        RandomShift(1)(torch.rand(3, 4))


def test_as_a_sampler_batch_transform_on_training_episodes():
    from attnmeta.tasks import EpisodeSampler

    images = torch.rand(30, 1, 8, 8)
    labels = torch.arange(30) // 5
    sampler = EpisodeSampler(images, labels, ways=3, shots=1, queries=2, batch_transform=RandomShift(1))
    task = sampler.sample()
    assert task.support_x.shape == (3, 1, 8, 8) and task.query_x.shape == (6, 1, 8, 8)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting exists on glibc only")
def test_retain_freed_memory_applies_on_glibc_and_restores():
    try:
        assert retain_freed_memory() is True
        big = torch.ones(4_000_000)  # 16 MB: served from the heap now, and still correct
        assert big.sum().item() == 4_000_000
        del big
    finally:
        assert retain_freed_memory(False) is True


def _dot_image(height: int, width: int, x: float, y: float) -> torch.Tensor:
    """A [1, 1, H, W] page (H, W odd) with a 3x3 dot whose centre is (x, y) whole pixels right of / below the
    centre."""
    image = torch.zeros(1, 1, height, width)
    col, row = width // 2 + int(x), height // 2 + int(y)
    image[..., row - 1 : row + 2, col - 1 : col + 2] = 1.0
    return image


def _dot_centre(image: torch.Tensor) -> tuple[float, float]:
    """Intensity-weighted centre (x, y) of [1, 1, H, W] relative to the image centre, in pixels."""
    height, width = image.shape[-2:]
    weights = image[0, 0] / image.sum()
    ys = torch.arange(height, dtype=torch.float32) - (height / 2 - 0.5)
    xs = torch.arange(width, dtype=torch.float32) - (width / 2 - 0.5)
    return float((weights.sum(0) * xs).sum()), float((weights.sum(1) * ys).sum())


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        # a quarter turn counter-clockwise as displayed: right of centre -> above it
        ({"angle": math.pi / 2, "zoom": 1.0, "shear": 0.0, "shift": (0.0, 0.0)}, (0.0, -8.0)),
        ({"angle": 0.0, "zoom": 1.5, "shear": 0.0, "shift": (0.0, 0.0)}, (12.0, 0.0)),  # zoom moves it out
        ({"angle": 0.0, "zoom": 1.0, "shear": 0.0, "shift": (-3.0, 2.0)}, (5.0, 2.0)),  # plain translation
    ],
)
def test_random_affine_moves_content_as_documented(parameters, expected):
    image = _dot_image(33, 33, 8.0, 0.0)
    drawn = {k: torch.tensor([v], dtype=torch.float64) for k, v in parameters.items() if k != "shift"}
    drawn["shift"] = torch.tensor([parameters["shift"]], dtype=torch.float64)
    theta = RandomAffine.matrices(drawn, 33, 33)
    grid = F.affine_grid(theta, [1, 1, 33, 33], align_corners=False)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x, y = _dot_centre(out)
    assert x == pytest.approx(expected[0], abs=0.3) and y == pytest.approx(expected[1], abs=0.3)


def test_random_affine_shear_slants_horizontally_with_the_row():
    drawn = {"angle": torch.zeros(1, dtype=torch.float64), "zoom": torch.ones(1, dtype=torch.float64),
             "shear": torch.tensor([0.5], dtype=torch.float64),
             "shift": torch.zeros(1, 2, dtype=torch.float64)}
    grid = F.affine_grid(RandomAffine.matrices(drawn, 33, 33), [1, 1, 33, 33], align_corners=False)
    for y in (-8.0, 8.0):
        out = F.grid_sample(_dot_image(33, 33, 0.0, y), grid, padding_mode="border", align_corners=False)
        assert _dot_centre(out) == pytest.approx((0.5 * y, y), abs=0.3)  # x moves by shear * y


def test_random_affine_draws_within_its_ranges_is_seeded_and_keeps_shape():
    transform = RandomAffine(degrees=15, scale=0.2, shear=10, translate=2.5, seed=4)
    drawn = transform.sample_parameters(2000)
    assert drawn["angle"].abs().max() <= math.radians(15) and drawn["angle"].abs().max() > math.radians(14)
    assert ((drawn["zoom"] >= 0.8) & (drawn["zoom"] <= 1.2)).all()
    assert drawn["shear"].abs().max() <= math.tan(math.radians(10))
    assert drawn["shift"].shape == (2000, 2) and drawn["shift"].abs().max() <= 2.5
    x = torch.rand(12, 3, 20, 24)
    out = RandomAffine(10, 0.1, seed=1)(x)
    assert out.shape == x.shape and out.dtype == x.dtype and not torch.equal(out, x)
    assert torch.equal(out, RandomAffine(10, 0.1, seed=1)(x))
    assert not torch.equal(out, RandomAffine(10, 0.1, seed=2)(x))
    assert RandomAffine(0, 0, 0, 0)(x) is x
    uniform = torch.full((4, 1, 10, 10), 0.25)  # a blank page stays blank: outside pixels repeat the edge
    assert torch.allclose(RandomAffine(30, 0.3, 20, 3)(uniform), uniform)


def test_random_affine_refuses_bad_arguments_clearly():
    with pytest.raises(ValueError, match=r"degrees must be a number in \[0, 180\)"):
        RandomAffine(degrees=-1)
    with pytest.raises(ValueError, match=r"scale must be a number in \[0, 1\)"):
        RandomAffine(scale=1.0)
    with pytest.raises(ValueError, match="translate must be a non-negative number"):
        RandomAffine(translate=-2)
    with pytest.raises(ValueError, match=r"needs examples \[m, ..., H, W\]"):
        RandomAffine()(torch.rand(3, 4))
    with pytest.raises(TypeError, match="needs floating-point examples"):
        RandomAffine()(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
