"""Meta-RL benchmarks and learners by name, so that configs and the CLI build them like any other run.

Benchmarks: ``navigation`` (2D point robot, MAML paper section 5.3), ``halfcheetah-dir`` and
``halfcheetah-vel`` (MuJoCo, the ``rl`` extra). Learners: ``maml-rl`` (``MAMLRL`` on a ``GaussianMLPPolicy``;
``inner_steps=0`` is the policy pre-trained on all tasks jointly) and ``snail-rl`` (``SNAILRL``).
``build_rl_learner(algo, benchmark, options)`` takes the options a config's ``algo_options`` hold.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from attnmeta.learners.task_attention import TaskWeighting
from attnmeta.rl.envs import EnvFactory, HalfCheetahEnv, Navigation2DEnv
from attnmeta.rl.maml_rl import MAMLRL, RL_TASK_STATS
from attnmeta.rl.policy import GaussianMLPPolicy
from attnmeta.rl.snail_policy import SNAILRL, SNAILPolicy
from attnmeta.rl.tasks import HalfCheetahTasks, NavigationTasks


@dataclass(frozen=True)
class RLBenchmark:
    """A task family's shape: observation and action sizes, episode length, and how to build it."""

    name: str
    obs_dim: int
    act_dim: int
    horizon: int
    make_family: Callable[[int], Any]  # seed -> task family (sample_batch, fixed_tasks, state_dict)
    env_factory: EnvFactory  # (task parameters [E, k], horizon) -> vectorized environment
    needs_mujoco: bool = False


RL_BENCHMARKS: dict[str, RLBenchmark] = {
    "navigation": RLBenchmark(
        "navigation", 2, 2, 100, lambda seed: NavigationTasks(seed=seed), Navigation2DEnv
    ),
    "halfcheetah-dir": RLBenchmark(
        "halfcheetah-dir", 17, 6, 200, lambda seed: HalfCheetahTasks("direction", seed=seed),
        partial(HalfCheetahEnv, kind="direction"), True
    ),
    "halfcheetah-vel": RLBenchmark(
        "halfcheetah-vel", 17, 6, 200, lambda seed: HalfCheetahTasks("velocity", seed=seed),
        partial(HalfCheetahEnv, kind="velocity"), True
    ),
}

#: Options of ``maml-rl`` beyond ``MAMLRL``'s own: the policy's hidden widths and task attention.
MAML_RL_EXTRA = {"hidden": (100, 100), "task_attention": False}
#: Options of ``snail-rl`` beyond ``SNAILRL``'s own: the ``SNAILPolicy`` widths.
SNAIL_RL_EXTRA = {"dim": 32, "filters": 16, "key_size": 32, "value_size": 32}
_NOT_OPTIONS = {"self", "policy", "env_factory", "rule", "task_weighting", "horizon"}

RL_LEARNERS = {
    "maml-rl": "MAML for meta-RL (Finn et al. 2017): policy-gradient inner loop, TRPO or PPO outer step",
    "snail-rl": "SNAIL (Mishra et al. 2018): attention over the trial's experience, trained with PPO",
}


def rl_benchmark(name: str) -> RLBenchmark:
    if name not in RL_BENCHMARKS:
        raise ValueError(f"unknown meta-RL benchmark {name!r}; choose one of: {', '.join(RL_BENCHMARKS)}")
    bench = RL_BENCHMARKS[name]
    if bench.needs_mujoco:
        _require_mujoco(name)
    return bench


def valid_rl_options(algo: str) -> list[str]:
    """The ``algo_options`` keys ``algo`` takes."""
    cls, extra = (MAMLRL, MAML_RL_EXTRA) if algo == "maml-rl" else (SNAILRL, SNAIL_RL_EXTRA)
    own = [p for p in inspect.signature(cls.__init__).parameters if p not in _NOT_OPTIONS]
    return sorted(set(own) | set(extra))


def check_rl_options(algo: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming an option ``algo`` does not take (with the valid ones)."""
    if algo not in RL_LEARNERS:
        raise ValueError(f"unknown meta-RL learner {algo!r}; choose one of: {', '.join(RL_LEARNERS)}")
    valid = valid_rl_options(algo)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"config key 'algo_options': {algo} takes no option {unknown[0]!r}; valid: {', '.join(valid)}"
        )


def build_rl_learner(algo: str, benchmark: str, options: dict[str, Any]) -> MAMLRL | SNAILRL:
    """``maml-rl`` or ``snail-rl`` for ``benchmark`` with ``options`` (a config's ``algo_options``); the
    policy is initialised from the global torch RNG (seed it first)."""
    check_rl_options(algo, options)
    bench = rl_benchmark(benchmark)
    env_factory = bench.env_factory
    if algo == "maml-rl":
        opts = {**MAML_RL_EXTRA, **options}
        policy: nn.Module = GaussianMLPPolicy(bench.obs_dim, bench.act_dim, tuple(opts.pop("hidden")))
        weighting = TaskWeighting(stats_dim=RL_TASK_STATS) if opts.pop("task_attention") else None
        return MAMLRL(policy, horizon=bench.horizon, env_factory=env_factory, task_weighting=weighting,
                      **opts)
    opts = {**SNAIL_RL_EXTRA, **options}
    widths = {key: opts.pop(key) for key in SNAIL_RL_EXTRA}
    episodes_per_trial = opts.get("episodes_per_trial", 2)
    policy = SNAILPolicy(bench.obs_dim, bench.act_dim, episodes_per_trial * bench.horizon, **widths)
    return SNAILRL(policy, horizon=bench.horizon, env_factory=env_factory, **opts)


def _require_mujoco(name: str) -> None:
    import importlib.util

    if importlib.util.find_spec("gymnasium") is None or importlib.util.find_spec("mujoco") is None:
        from attnmeta.errors import UserError

        raise UserError(
            f"benchmark {name!r} simulates HalfCheetah with MuJoCo, which is not installed: "
            "pip install 'attnmeta[rl]' (gymnasium and mujoco)"
        )
