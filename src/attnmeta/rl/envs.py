"""Vectorized 2D navigation environment (torch) and batched policy rollouts over many tasks at once.

``Navigation2DEnv`` follows the gymnasium API (``reset(seed=) -> (obs, info)``,
``step(action) -> (obs, reward, terminated, truncated, info)``) on a batch of ``E`` environments, each with
its own goal. Dynamics as in the MAML paper's point robot: the action (a displacement, clipped to
``[-0.1, 0.1]`` per coordinate) is added to the position; reward is minus the Euclidean distance to the
goal after the move; an episode terminates when both coordinates are within 0.01 of the goal, and is
truncated at ``horizon`` steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap


class Navigation2DEnv:
    """``E`` point robots in the plane; ``goals`` is ``[E, 2]``. Observations are positions ``[E, 2]``."""

    observation_dim = 2
    action_dim = 2
    max_action = 0.1

    def __init__(self, goals: Tensor, horizon: int = 100) -> None:
        goals = torch.as_tensor(goals)
        if goals.ndim != 2 or goals.shape[1] != 2:
            raise ValueError(f"goals must have shape [num_envs, 2], got {tuple(goals.shape)}")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        self.goals = goals.to(torch.float32)
        self.horizon = horizon
        self.num_envs = goals.shape[0]
        self.state = torch.zeros_like(self.goals)
        self.done = torch.zeros(self.num_envs, dtype=torch.bool)
        self.t = 0

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        """All robots back at the origin (``seed`` is accepted for API compatibility; the start is fixed)."""
        self.state = torch.zeros_like(self.goals)
        self.done = torch.zeros(self.num_envs, dtype=torch.bool)
        self.t = 0
        return self.state.clone(), {}

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Move by ``clip(action)`` (``[E, 2]``); returns obs ``[E, 2]``, reward ``[E]``, terminated ``[E]``,
        truncated ``[E]`` (bool) and info. Already-terminated robots stay put and get reward 0."""
        action = torch.as_tensor(action, dtype=torch.float32)
        if action.shape != self.state.shape:
            raise ValueError(f"action must have shape {tuple(self.state.shape)}, got {tuple(action.shape)}")
        active = ~self.done
        move = action.clamp(-self.max_action, self.max_action) * active.unsqueeze(-1)
        self.state = self.state + move
        offset = self.state - self.goals
        reward = -offset.norm(dim=-1) * active
        terminated = self.done | (offset.abs() < 0.01).all(dim=-1)
        self.done = terminated
        self.t += 1
        truncated = torch.full_like(terminated, self.t >= self.horizon)
        return self.state.clone(), reward, terminated, truncated, {}


class VectorEnv(Protocol):
    """What ``rollout`` needs: ``E`` environments stepped together, observations/rewards as tensors."""

    num_envs: int

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]: ...

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]: ...


EnvFactory = Callable[[Tensor, int], VectorEnv]
"""``factory(task_params [E, k], horizon) -> VectorEnv`` (``Navigation2DEnv`` itself is one)."""


_CHEETAH_POOL: dict[int, list[Any]] = {}
"""Per-process pool of gymnasium HalfCheetah simulators by horizon, shared by ``HalfCheetahEnv`` instances
(``rollout`` uses one at a time; creating 100s of MuJoCo models per rollout costs seconds)."""


class HalfCheetahEnv:
    """``E`` gymnasium MuJoCo HalfCheetah-v5 robots with MAML-paper task rewards (horizon 200).

    ``kind="direction"``: ``task_values [E]`` in ``{-1, +1}``, reward ``direction * forward_velocity``;
    ``kind="velocity"``: goal velocities (m/s), reward ``-|forward_velocity - goal|``; both minus the control
    cost ``0.05 * |a|^2`` (``a`` clipped to ``[-1, 1]``). Needs the ``rl`` extra (gymnasium, mujoco).
    Simulators come from a per-process pool: two live instances with the same horizon share them, so step
    one at a time (as ``rollout`` does) and call ``reset`` before stepping.
    """

    action_dim = 6
    observation_dim = 17

    def __init__(self, task_values: Tensor, horizon: int = 200, kind: str = "direction",
                 seed: int = 0) -> None:
        try:
            import gymnasium
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("HalfCheetahEnv needs gymnasium and mujoco: "
                              "pip install 'attnmeta[rl]'") from err
        if kind not in ("direction", "velocity"):
            raise ValueError(f"kind must be 'direction' or 'velocity', got {kind!r}")
        values = torch.as_tensor(task_values, dtype=torch.float64).reshape(-1)
        self.task_values, self.kind, self.horizon, self.seed = values, kind, horizon, seed
        self.num_envs = values.numel()
        _quiet_mujoco()
        pool = _CHEETAH_POOL.setdefault(horizon, [])
        while len(pool) < self.num_envs:  # simulators are reused across rollouts (reset re-seeds them)
            pool.append(gymnasium.make("HalfCheetah-v5", max_episode_steps=horizon))
        self.envs = pool[:self.num_envs]
        self.t = 0

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        base = self.seed if seed is None else seed
        obs = [env.reset(seed=base + i)[0] for i, env in enumerate(self.envs)]
        self.t = 0
        return torch.as_tensor(np.stack(obs), dtype=torch.float32), {}

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        action = torch.as_tensor(action, dtype=torch.float64).clamp(-1.0, 1.0)
        if action.shape != (self.num_envs, self.action_dim):
            raise ValueError(f"action must have shape {(self.num_envs, self.action_dim)}, got "
                             f"{tuple(action.shape)}")
        obs, velocity = [], []
        for env, a in zip(self.envs, action.numpy()):
            o, _, _, _, info = env.step(a)
            obs.append(o)
            velocity.append(info["x_velocity"])
        v = torch.as_tensor(np.array(velocity), dtype=torch.float64)
        task_reward = self.task_values * v if self.kind == "direction" else -(v - self.task_values).abs()
        reward = (task_reward - 0.05 * action.pow(2).sum(-1)).to(torch.float32)
        self.t += 1
        done = torch.zeros(self.num_envs, dtype=torch.bool)
        truncated = torch.full_like(done, self.t >= self.horizon)
        return torch.as_tensor(np.stack(obs), dtype=torch.float32), reward, done, truncated, {"x_velocity": v}


def _quiet_mujoco() -> None:
    """Send MuJoCo's warnings (e.g. the HalfCheetah model's deprecated ``settotalmass``) to the
    ``attnmeta.rl`` logger at debug level: by default MuJoCo prints them and appends them to
    ``MUJOCO_LOG.TXT`` in the current folder."""
    import mujoco

    if mujoco.get_mju_user_warning() is not _log_mujoco_warning:
        mujoco.set_mju_user_warning(_log_mujoco_warning)


def _log_mujoco_warning(message: str) -> None:
    logging.getLogger("attnmeta.rl").debug("MuJoCo: %s", message)


@dataclass
class Rollout:
    """Trajectories of ``T`` tasks x ``N`` episodes x ``H`` steps.

    ``obs [T, H, N, obs_dim]``, ``actions [T, H, N, act_dim]`` (unclipped samples), ``rewards [T, H, N]``,
    ``mask [T, H, N]`` (1 for steps taken before termination, 0 after).
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    def returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[T, N]``."""
        return (self.rewards * self.mask).sum(dim=1)

    def task(self, i: int) -> Rollout:
        """The trajectories of task ``i`` with a leading task axis of size 1."""
        return Rollout(self.obs[i:i + 1], self.actions[i:i + 1], self.rewards[i:i + 1], self.mask[i:i + 1])


def gaussian_split(outputs: Tensor) -> tuple[Tensor, Tensor]:
    """Split policy outputs ``[..., 2 * act_dim]`` into mean and log standard deviation."""
    if outputs.shape[-1] % 2:
        raise ValueError(f"policy outputs must be [..., 2 * action_dim] (mean, log_std), got last dim "
                         f"{outputs.shape[-1]}")
    mean, log_std = outputs.chunk(2, dim=-1)
    return mean, log_std


@torch.no_grad()
def rollout(policy: nn.Module, params: Mapping[str, Tensor], goals: Tensor, episodes: int, horizon: int = 100,
            generator: torch.Generator | None = None, per_task_params: bool = False,
            env_factory: EnvFactory = Navigation2DEnv) -> Rollout:
    """Sample ``episodes`` episodes on each of ``T`` tasks in one vectorized environment.

    ``goals [T, k]``: the task parameters (2D goals for navigation), passed to ``env_factory``.
    ``params``: the policy parameters, shared by all tasks, or (``per_task_params=True``) stacked with a
    leading ``[T]`` axis (one adapted policy per task; evaluated with ``vmap``).
    """
    goals = torch.as_tensor(goals)
    if goals.ndim != 2:
        raise ValueError(f"goals (task parameters) must be [num_tasks, k], got shape {tuple(goals.shape)}")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    num_tasks = goals.shape[0]
    env = env_factory(goals.repeat_interleave(episodes, dim=0), horizon)
    obs, _ = env.reset(seed=int(torch.randint(2 ** 31 - 1, (), generator=generator)))
    done = torch.zeros(num_tasks * episodes, dtype=torch.bool)

    def forward(p: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(policy, dict(p), (x,))

    batched = vmap(forward) if per_task_params else forward
    obs_t, act_t, rew_t, mask_t = [], [], [], []
    for _ in range(horizon):
        x = obs.view(num_tasks, episodes, -1)
        mean, log_std = gaussian_split(batched(params, x) if per_task_params else forward(params, x))
        noise = torch.randn(mean.shape, generator=generator)
        action = mean + log_std.exp() * noise
        alive = (~done).to(torch.float32)
        obs_t.append(x)
        act_t.append(action)
        mask_t.append(alive.view(num_tasks, episodes))
        obs, reward, terminated, _, _ = env.step(action.reshape(num_tasks * episodes, -1))
        done = done | terminated
        rew_t.append(reward.view(num_tasks, episodes))
    return Rollout(torch.stack(obs_t, 1), torch.stack(act_t, 1), torch.stack(rew_t, 1),
                   torch.stack(mask_t, 1))
