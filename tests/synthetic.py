"""Small synthetic data sets for tests that must not need ../shared/data, and a one-line-error helper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch


def one_line_error(kind: type[BaseException], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of the ``kind`` error ``fn(*args, **kwargs)`` raises, checked to be one line."""
    with pytest.raises(kind) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


def synthetic_omniglot(characters: int, seed: int) -> dict:
    """Keyword arguments of ``Omniglot.from_tensors``: ``characters`` x 20 random 28x28 uint8 drawings."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (characters * 20, 1, 28, 28), generator=generator, dtype=torch.uint8)
    names = [f"Alphabet_{i % 3}/character{i:02d}" for i in range(characters)]
    return {"images": images, "labels": torch.arange(characters).repeat_interleave(20), "characters": names}
