"""Regression task families: the MAML sinusoid and the multimodal family of Vuorio et al. (2019).

A task family samples ``Task`` values whose inputs are ``[n, 1]`` and targets ``[n, 1]`` (float32).
``task.info`` records the function kind and parameters, and whether the task was corrupted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from attnmeta.tasks.episode import Task, TaskBatch

MULTIMODAL_KINDS = ("sinusoid", "linear", "quadratic", "abs", "tanh")


def _check_positive(name: str, value: int, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _uniform(generator: torch.Generator, low: float, high: float, shape: Sequence[int] = ()) -> Tensor:
    return low + (high - low) * torch.rand(tuple(shape), generator=generator, dtype=torch.float64)


class TaskFamily:
    """Base class of regression task families.

    Args:
        shots: support points per task (K).
        queries: query points per task.
        noise_std: Gaussian noise added to every target (label noise), in target units.
        corrupt_fraction: fraction of tasks whose targets are replaced by pure noise
            (``N(0, noise_of_corruption**2)``, independent of x); ``info["corrupted"]`` marks them.
        corruption_std: standard deviation of the noise that replaces a corrupted task's targets.
        seed: seed of the family's own generator (used when ``sample`` gets no generator).
    """

    def __init__(self, shots: int = 10, queries: int = 10, *, noise_std: float = 0.0,
                 corrupt_fraction: float = 0.0, corruption_std: float = 3.0, seed: int = 0) -> None:
        _check_positive("shots", shots)
        _check_positive("queries", queries)
        if not 0.0 <= corrupt_fraction <= 1.0:
            raise ValueError(f"corrupt_fraction must be in [0, 1], got {corrupt_fraction}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.shots, self.queries = shots, queries
        self.noise_std, self.corrupt_fraction, self.corruption_std = noise_std, corrupt_fraction, corruption_std
        self.generator = torch.Generator().manual_seed(seed)

    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample_function(self, generator: torch.Generator) -> tuple[dict[str, Any], Any]:
        """Return ``(info, f)`` with ``f`` mapping float64 ``[n, 1]`` inputs to targets."""
        raise NotImplementedError

    def sample(self, generator: torch.Generator | None = None) -> Task:
        g = self.generator if generator is None else generator
        info, f = self.sample_function(g)
        n = self.shots + self.queries
        x = _uniform(g, *self.x_range, (n, 1))
        y = f(x)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, generator=g, dtype=torch.float64)
        corrupted = bool(self.corrupt_fraction > 0 and torch.rand((), generator=g).item() < self.corrupt_fraction)
        if corrupted:
            y = self.corruption_std * torch.randn(y.shape, generator=g, dtype=torch.float64)
        info["corrupted"] = corrupted
        x, y = x.float(), y.float()
        k = self.shots
        return Task(x[:k], y[:k], x[k:], y[k:], torch.empty(0, dtype=torch.long), info)

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> TaskBatch:
        _check_positive("meta_batch", meta_batch)
        return TaskBatch.stack([self.sample(generator) for _ in range(meta_batch)])

    def fixed_tasks(self, n: int = 600, seed: int = 0) -> list[Task]:
        """``n`` test tasks drawn from ``seed`` alone: the same list for every run and algorithm."""
        _check_positive("n", n)
        g = torch.Generator().manual_seed(seed)
        return [self.sample(g) for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class Sinusoid(TaskFamily):
    """MAML section 5.1: ``y = A sin(x - phase)``, ``A ~ U[0.1, 5.0]``, ``phase ~ U[0, pi]``, ``x ~ U[-5, 5]``."""

    amplitude_range = (0.1, 5.0)
    phase_range = (0.0, math.pi)

    def sample_function(self, generator: torch.Generator) -> tuple[dict[str, Any], Any]:
        amplitude = _uniform(generator, *self.amplitude_range).item()
        phase = _uniform(generator, *self.phase_range).item()
        return ({"kind": "sinusoid", "amplitude": amplitude, "phase": phase},
                lambda x: amplitude * torch.sin(x - phase))


class Multimodal(TaskFamily):
    """Multimodal family of MMAML (Vuorio et al. 2019), ``x ~ U[-5, 5]``:

    sinusoid ``A sin(w x + b)`` (A ~ U[0.1, 5], w ~ U[0.8, 1.2], b ~ U[0, pi]); linear ``a x + b``
    (a, b ~ U[-3, 3]); quadratic ``a (x - c)^2 + b`` (a ~ U[-0.15, 0.15], c ~ U[-3, 3], b ~ U[-3, 3]);
    l1 norm ``a |x - c| + b`` (a ~ U[-0.15, 0.15], c, b ~ U[-3, 3]); tanh ``a tanh(x - c) + b``
    (a ~ U[-3, 3], c, b ~ U[-3, 3]). ``info["kind"]`` names the function kind.

    Args:
        kinds: the kinds to draw from (uniformly), default all five.
    """

    def __init__(self, shots: int = 10, queries: int = 10, *, kinds: Sequence[str] = MULTIMODAL_KINDS,
                 **kwargs: Any) -> None:
        super().__init__(shots, queries, **kwargs)
        unknown = [k for k in kinds if k not in MULTIMODAL_KINDS]
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {MULTIMODAL_KINDS}, got {list(kinds)}")
        self.kinds = tuple(kinds)

    def sample_function(self, generator: torch.Generator) -> tuple[dict[str, Any], Any]:
        kind = self.kinds[int(torch.randint(len(self.kinds), (), generator=generator))]
        u = lambda lo, hi: _uniform(generator, lo, hi).item()  # noqa: E731
        if kind == "sinusoid":
            a, w, b = u(0.1, 5.0), u(0.8, 1.2), u(0.0, math.pi)
            return {"kind": kind, "a": a, "w": w, "b": b}, lambda x: a * torch.sin(w * x + b)
        if kind == "linear":
            a, b = u(-3, 3), u(-3, 3)
            return {"kind": kind, "a": a, "b": b}, lambda x: a * x + b
        if kind == "quadratic":
            a, c, b = u(-0.15, 0.15), u(-3, 3), u(-3, 3)
            return {"kind": kind, "a": a, "c": c, "b": b}, lambda x: a * (x - c) ** 2 + b
        if kind == "abs":
            a, c, b = u(-0.15, 0.15), u(-3, 3), u(-3, 3)
            return {"kind": kind, "a": a, "c": c, "b": b}, lambda x: a * (x - c).abs() + b
        a, c, b = u(-3, 3), u(-3, 3), u(-3, 3)
        return {"kind": kind, "a": a, "c": c, "b": b}, lambda x: a * torch.tanh(x - c) + b
