"""Meta-RL for control: 2D navigation and HalfCheetah task families, Gaussian MLP policy, MAML-RL (TRPO)."""

from attnmeta.rl.envs import HalfCheetahEnv, Navigation2DEnv, Rollout, rollout
from attnmeta.rl.evaluate import AdaptationCurve, evaluate_adaptation
from attnmeta.rl.maml_rl import MAMLRL
from attnmeta.rl.policy import GaussianMLPPolicy, LinearFeatureBaseline, discounted_returns, gae
from attnmeta.rl.tasks import (
    HalfCheetahTask,
    HalfCheetahTasks,
    NavigationTask,
    NavigationTasks,
)

__all__ = [
    "AdaptationCurve", "GaussianMLPPolicy", "HalfCheetahEnv", "HalfCheetahTask", "HalfCheetahTasks",
    "LinearFeatureBaseline", "MAMLRL", "Navigation2DEnv",
    "NavigationTask", "NavigationTasks", "Rollout", "discounted_returns", "evaluate_adaptation", "gae",
    "rollout",
]
