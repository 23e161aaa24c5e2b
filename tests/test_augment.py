"""RandomShift (per-example translation) and the glibc allocator setting used for training speed."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from attnmeta.tasks import RandomShift
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
