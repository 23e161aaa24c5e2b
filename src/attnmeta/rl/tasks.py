"""Seeded task families for meta-RL: a task is an environment parameter (e.g. a 2D goal)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from attnmeta.rl.envs import EnvFactory, HalfCheetahEnv, Navigation2DEnv


@dataclass(frozen=True)
class NavigationTask:
    """One 2D navigation task: reach ``goal`` (``[2]`` float64, plane units) within ``horizon`` steps."""

    goal: Tensor
    horizon: int = 100

    @property
    def env_params(self) -> Tensor:
        """Task parameters passed to the environment factory, ``[2]``."""
        return self.goal

    def env_factory(self) -> EnvFactory:
        return Navigation2DEnv


@dataclass(frozen=True)
class HalfCheetahTask:
    """One HalfCheetah task: ``value`` is the direction (+1/-1) or the goal velocity (m/s)."""

    value: float
    kind: str = "direction"
    horizon: int = 200

    @property
    def env_params(self) -> Tensor:
        return torch.tensor([self.value], dtype=torch.float64)

    def env_factory(self) -> EnvFactory:
        return partial(HalfCheetahEnv, kind=self.kind)


def _check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
                        "create one with torch.Generator().manual_seed(seed)")


class NavigationTasks:
    """2D navigation (MAML paper, section 5.3): goals uniform in ``[low, high]^2``, horizon 100.

    Same contract as the other task sources: ``sample``, ``sample_batch``, ``fixed_tasks`` and
    ``state_dict``/``load_state_dict`` (the generator position, for exact resume).
    """

    def __init__(self, low: float = -0.5, high: float = 0.5, horizon: int = 100, seed: int = 0) -> None:
        if not low < high:
            raise ValueError(f"goal range must satisfy low < high, got low={low}, high={high}")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        self.low, self.high, self.horizon = float(low), float(high), horizon
        self.generator = torch.Generator().manual_seed(seed)

    def _goals(self, n: int, generator: torch.Generator) -> Tensor:
        unit = torch.rand((n, 2), generator=generator, dtype=torch.float64)
        return self.low + (self.high - self.low) * unit

    def sample(self, generator: torch.Generator | None = None) -> NavigationTask:
        """One task, from ``generator`` or the family's own generator."""
        _check_generator(generator)
        return NavigationTask(self._goals(1, generator or self.generator)[0], self.horizon)

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> list[NavigationTask]:
        """``meta_batch`` independent tasks."""
        if isinstance(meta_batch, bool) or not isinstance(meta_batch, int) or meta_batch < 1:
            raise ValueError(f"meta_batch must be an int >= 1, got {meta_batch!r}")
        _check_generator(generator)
        return [NavigationTask(g, self.horizon) for g in self._goals(meta_batch, generator or self.generator)]

    def fixed_tasks(self, n: int = 40, seed: int = 0) -> list[NavigationTask]:
        """``n`` test tasks that depend only on ``seed`` (identical for every run and algorithm)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        goals = self._goals(n, torch.Generator().manual_seed(10_000 + seed))
        return [NavigationTask(g, self.horizon) for g in goals]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "generator" not in state:
            raise TypeError("state must be a dict from NavigationTasks.state_dict() "
                            "(with a 'generator' entry)")
        self.generator.set_state(state["generator"])


class HalfCheetahTasks:
    """HalfCheetah direction (forward/backward, equally likely) or goal velocity (``U[0, 2]`` m/s),
    horizon 200 (MAML paper). Same contract as ``NavigationTasks``; the environment needs the ``rl`` extra."""

    def __init__(self, kind: str = "direction", horizon: int = 200, seed: int = 0,
                 velocity_range: tuple[float, float] = (0.0, 2.0)) -> None:
        if kind not in ("direction", "velocity"):
            raise ValueError(f"kind must be 'direction' or 'velocity', got {kind!r}")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        self.kind, self.horizon, self.velocity_range = kind, horizon, velocity_range
        self.generator = torch.Generator().manual_seed(seed)

    def _values(self, n: int, generator: torch.Generator) -> list[float]:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        if self.kind == "direction":
            return [1.0 if x < 0.5 else -1.0 for x in u.tolist()]
        low, high = self.velocity_range
        return (low + (high - low) * u).tolist()

    def sample(self, generator: torch.Generator | None = None) -> HalfCheetahTask:
        _check_generator(generator)
        return HalfCheetahTask(self._values(1, generator or self.generator)[0], self.kind, self.horizon)

    def sample_batch(self, meta_batch: int,
                     generator: torch.Generator | None = None) -> list[HalfCheetahTask]:
        if isinstance(meta_batch, bool) or not isinstance(meta_batch, int) or meta_batch < 1:
            raise ValueError(f"meta_batch must be an int >= 1, got {meta_batch!r}")
        _check_generator(generator)
        return [HalfCheetahTask(v, self.kind, self.horizon)
                for v in self._values(meta_batch, generator or self.generator)]

    def fixed_tasks(self, n: int = 40, seed: int = 0) -> list[HalfCheetahTask]:
        """``n`` test tasks depending only on ``seed``; for "direction", half forward and half backward."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if self.kind == "direction":
            values = [1.0 if i % 2 == 0 else -1.0 for i in range(n)]
        else:
            values = self._values(n, torch.Generator().manual_seed(10_000 + seed))
        return [HalfCheetahTask(v, self.kind, self.horizon) for v in values]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "generator" not in state:
            raise TypeError("state must be a dict from HalfCheetahTasks.state_dict() "
                            "(with a 'generator' entry)")
        self.generator.set_state(state["generator"])
