"""Meta-RL for control: 2D navigation and HalfCheetah task families, Gaussian MLP policy, MAML-RL (TRPO)
with optional task attention, and SNAIL as an attention-over-the-trajectory meta-RL policy."""

from attnmeta.rl.envs import HalfCheetahEnv, Navigation2DEnv, Rollout, rollout
from attnmeta.rl.evaluate import AdaptationCurve, evaluate_adaptation
from attnmeta.rl.maml_rl import MAMLRL
from attnmeta.rl.policy import GaussianMLPPolicy, LinearFeatureBaseline, discounted_returns, gae
from attnmeta.rl.snail_policy import SNAILRL, SNAILPolicy, Trial, rollout_trial
from attnmeta.rl.tasks import (
    HalfCheetahTask,
    HalfCheetahTasks,
    NavigationTask,
    NavigationTasks,
)

__all__ = [
    "AdaptationCurve", "GaussianMLPPolicy", "HalfCheetahEnv", "HalfCheetahTask", "HalfCheetahTasks",
    "LinearFeatureBaseline", "MAMLRL", "Navigation2DEnv",
    "NavigationTask", "NavigationTasks", "Rollout", "SNAILPolicy", "SNAILRL", "Trial", "discounted_returns",
    "evaluate_adaptation", "gae", "rollout", "rollout_trial",
]
