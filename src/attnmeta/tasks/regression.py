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


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "create one with torch.Generator().manual_seed(seed)"
        )


def _uniform(generator: torch.Generator, low: float, high: float, shape: Sequence[int] = ()) -> Tensor:
    return low + (high - low) * torch.rand(tuple(shape), generator=generator, dtype=torch.float64)


class TaskFamily:
    """Base class of regression task families.

    Args:
        shots: support points per task (K).
        queries: query points per task.
        noise_std: standard deviation of Gaussian noise added to every target, support and query
            (label noise), in target units.
        corrupt_fraction: probability that a task is corrupted: all its targets are replaced by pure noise
            ``N(0, corruption_std**2)``, independent of x. Each task is corrupted independently, so this is
            the expected fraction; ``info["corrupted"]`` marks them.
        corruption_std: standard deviation of the noise that replaces a corrupted task's targets.
        seed: seed of the family's own generator (used when ``sample`` gets no generator).
    """

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        *,
        noise_std: float = 0.0,
        corrupt_fraction: float = 0.0,
        corruption_std: float = 3.0,
        seed: int = 0,
    ) -> None:
        _check_positive("shots", shots)
        _check_positive("queries", queries)
        if not 0.0 <= corrupt_fraction <= 1.0:
            raise ValueError(
                f"corrupt_fraction must be in [0, 1] (a fraction of tasks), got {corrupt_fraction}"
            )
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0 (0 for noise-free targets), got {noise_std}")
        if not corruption_std > 0:
            raise ValueError(f"corruption_std must be > 0, got {corruption_std}")
        self.shots, self.queries = shots, queries
        self.noise_std = noise_std
        self.corrupt_fraction = corrupt_fraction
        self.corruption_std = corruption_std
        self.generator = torch.Generator().manual_seed(seed)

    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample_function(self, generator: torch.Generator) -> tuple[dict[str, Any], Any]:
        """Return ``(info, f)`` with ``f`` mapping float64 ``[n, 1]`` inputs to targets."""
        raise NotImplementedError

    def sample(self, generator: torch.Generator | None = None) -> Task:
        """One task: ``support_x/y`` ``[K, 1]``, ``query_x/y`` ``[Q, 1]`` (float32)."""
        _check_generator(generator)
        g = self.generator if generator is None else generator
        info, f = self.sample_function(g)
        n = self.shots + self.queries
        x = _uniform(g, *self.x_range, (n, 1))
        y = f(x)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, generator=g, dtype=torch.float64)
        corrupted = bool(
            self.corrupt_fraction > 0 and torch.rand((), generator=g).item() < self.corrupt_fraction
        )
        if corrupted:
            y = self.corruption_std * torch.randn(y.shape, generator=g, dtype=torch.float64)
        info["corrupted"] = corrupted
        x, y = x.float(), y.float()
        k = self.shots
        return Task(x[:k], y[:k], x[k:], y[k:], torch.empty(0, dtype=torch.long), info)

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> TaskBatch:
        """``meta_batch`` successive tasks stacked: ``[T, K, 1]`` and ``[T, Q, 1]``."""
        _check_positive("meta_batch", meta_batch)
        _check_generator(generator)
        return TaskBatch.stack([self.sample(generator) for _ in range(meta_batch)])

    def fixed_tasks(self, n: int = 600, seed: int = 0) -> list[Task]:
        """``n`` test tasks drawn from ``seed`` alone: the same list for every run and algorithm."""
        _check_positive("n", n)
        g = torch.Generator().manual_seed(seed)
        return [self.sample(g) for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        """The generator state, for exact resume."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; the next tasks are those that followed the saved state."""
        if not isinstance(state, dict) or "generator" not in state:
            raise TypeError("state must be a dict from TaskFamily.state_dict() (with a 'generator' entry)")
        self.generator.set_state(state["generator"])


class Sinusoid(TaskFamily):
    """MAML section 5.1: ``y = A sin(x - phase)``, ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, x ~ U[-5, 5]."""

    amplitude_range = (0.1, 5.0)
    phase_range = (0.0, math.pi)

    def sample_function(self, generator: torch.Generator) -> tuple[dict[str, Any], Any]:
        amplitude = _uniform(generator, *self.amplitude_range).item()
        phase = _uniform(generator, *self.phase_range).item()
        return (
            {"kind": "sinusoid", "amplitude": amplitude, "phase": phase},
            lambda x: amplitude * torch.sin(x - phase),
        )


class Multimodal(TaskFamily):
    """Five-mode family of multimodal MAML (Vuorio et al. 2019), ``x ~ U[-5, 5]``, the kind uniform per task.

    Parameter ranges follow the authors' code (``vuoristo/MMAML-Regression``,
    ``maml/datasets/simple_functions.py``, ``FiveFunctionsMetaDataset``):

    - ``sinusoid``: ``A sin(x - phase)``, ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``;
    - ``linear``: ``slope x + intercept``, ``slope, intercept ~ U[-3, 3]``;
    - ``quadratic``: ``scale (x - center)^2 + bias``, ``|scale| ~ U[0.02, 0.15]`` with a random sign,
      ``center, bias ~ U[-3, 3]``;
    - ``abs`` (l1 norm): ``slope |x - center| + bias``, ``slope, center, bias ~ U[-3, 3]``;
    - ``tanh``: ``slope tanh(x - center) + bias``, ``slope, center, bias ~ U[-3, 3]``.

    ``info["kind"]`` names the kind and ``info["kind_index"]`` is its index in ``MULTIMODAL_KINDS``; the
    parameters are recorded under the names above. The paper adds Gaussian noise to targets: pass
    ``noise_std`` (the authors' code defaults to 0).

    Args:
        kinds: the kinds to draw from (uniformly), default all five.
    """

    def __init__(
        self, shots: int = 10, queries: int = 10, *, kinds: Sequence[str] = MULTIMODAL_KINDS, **kwargs: Any
    ) -> None:
        super().__init__(shots, queries, **kwargs)
        if isinstance(kinds, str):
            kinds = (kinds,)
        unknown = [k for k in kinds if k not in MULTIMODAL_KINDS]
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {MULTIMODAL_KINDS}, got {list(kinds)}")
        self.kinds = tuple(kinds)

    def sample_function(self, generator: torch.Generator) -> tuple[dict[str, Any], Any]:
        kind = self.kinds[int(torch.randint(len(self.kinds), (), generator=generator))]
        info: dict[str, Any] = {"kind": kind, "kind_index": MULTIMODAL_KINDS.index(kind)}

        def u(low: float, high: float) -> float:
            return _uniform(generator, low, high).item()

        if kind == "sinusoid":
            amplitude, phase = u(0.1, 5.0), u(0.0, math.pi)
            info.update(amplitude=amplitude, phase=phase)
            return info, lambda x: amplitude * torch.sin(x - phase)
        if kind == "linear":
            slope, intercept = u(-3.0, 3.0), u(-3.0, 3.0)
            info.update(slope=slope, intercept=intercept)
            return info, lambda x: slope * x + intercept
        if kind == "quadratic":
            center, bias, magnitude = u(-3.0, 3.0), u(-3.0, 3.0), u(0.02, 0.15)
            scale = magnitude if u(0.0, 1.0) < 0.5 else -magnitude
            info.update(scale=scale, center=center, bias=bias)
            return info, lambda x: scale * (x - center) ** 2 + bias
        slope, center, bias = u(-3.0, 3.0), u(-3.0, 3.0), u(-3.0, 3.0)
        info.update(slope=slope, center=center, bias=bias)
        if kind == "abs":
            return info, lambda x: slope * (x - center).abs() + bias
        return info, lambda x: slope * torch.tanh(x - center) + bias
