"""SNAIL as a meta-RL policy (Mishra et al. 2018, section 4.2): attention over the trajectory so far.

Instead of a gradient step, the policy adapts in its activations: a *trial* is ``episodes_per_trial``
consecutive episodes on the same task, and at every step the policy reads the whole trial so far,
``(obs_t, a_{t-1}, r_{t-1}, episode_start_t)`` for every earlier step ``t``, through SNAIL's causal temporal
convolutions and causal attention (the blocks of ``attnmeta.learners.snail``). It is trained with the PPO
clipped surrogate on whole trials (advantages across episode boundaries, as RL^2/SNAIL), and evaluated by
the mean return of the 1st, 2nd, ... episode of a trial (the analogue of 0, 1, ... adaptation steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnmeta.learners.snail import AttentionBlock, TCBlock, episode_attention_mask
from attnmeta.rl.envs import EnvFactory, Navigation2DEnv, Rollout, gaussian_split
from attnmeta.rl.policy import LinearFeatureBaseline, advantages, gaussian_log_prob

__all__ = ["SNAILPolicy", "SNAILRL", "Trial", "rollout_trial"]


class SNAILPolicy(nn.Module):
    """Causal sequence policy ``[B, L, obs + act + 2] -> [B, L, 2 * act_dim]`` (mean, log std).

    Input step ``t``: ``[obs_t, a_{t-1}, r_{t-1}, first_t]`` (zeros for ``a``/``r`` at the first step of an
    episode; ``first_t = 1`` there). Layout: linear embedding -> TC -> attention -> TC -> attention ->
    linear mean head; a state-independent learnable log std. Output ``t`` depends on inputs ``<= t`` only.

    Args:
        max_len: longest trial (sizes the dilations of the TC blocks: ``ceil(log2(max_len))`` blocks).
        dim / filters / key_size / value_size: widths (small defaults for CPU).
    """

    def __init__(self, obs_dim: int, act_dim: int, max_len: int, *, dim: int = 32, filters: int = 16,
                 key_size: int = 32, value_size: int = 32, init_log_std: float = 0.0) -> None:
        super().__init__()
        if min(obs_dim, act_dim, max_len) < 1:
            raise ValueError(f"obs_dim, act_dim and max_len must be >= 1, got {obs_dim}, {act_dim}, "
                             f"{max_len}")
        self.obs_dim, self.act_dim, self.max_len = obs_dim, act_dim, max_len
        self.input_dim = obs_dim + act_dim + 2
        self.embed = nn.Linear(self.input_dim, dim)
        self.tc1 = TCBlock(dim, max_len, filters)
        self.att1 = AttentionBlock(self.tc1.out_channels, key_size, value_size)
        self.tc2 = TCBlock(self.att1.out_channels, max_len, filters)
        self.att2 = AttentionBlock(self.tc2.out_channels, key_size, value_size)
        self.head = nn.Linear(self.att2.out_channels, act_dim)
        nn.init.zeros_(self.head.bias)
        self.head.weight.data.mul_(0.1)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, seq: Tensor) -> Tensor:
        if seq.dim() != 3 or seq.shape[-1] != self.input_dim:
            raise ValueError(f"seq must be [batch, length, {self.input_dim}] (obs, prev action, prev reward, "
                             f"episode start), got {tuple(seq.shape)}")
        length = seq.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}; build the policy "
                             "with max_len = episodes_per_trial * horizon")
        mask = episode_attention_mask(length, 0, seq.device)  # causal
        h = torch.relu(self.embed(seq))
        h = self.att1(self.tc1(h, length), mask)
        h = self.att2(self.tc2(h, length), mask)
        mean = self.head(h)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)


@dataclass
class Trial:
    """``B = tasks * trials`` trials of ``E`` episodes x ``H`` steps, flattened in time (``L = E * H``).

    ``seq [B, L, in]`` (policy inputs), ``obs [B, L, d]``, ``actions [B, L, a]``, ``rewards [B, L]``,
    ``mask [B, L]`` (1 before termination within each episode), ``log_prob [B, L]`` (of the sampling policy),
    ``tasks`` = number of tasks (rows are task-major: ``b = task * trials + n``), ``episodes``, ``horizon``.
    """

    seq: Tensor
    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    log_prob: Tensor
    tasks: int
    episodes: int
    horizon: int

    def episode_returns(self) -> Tensor:
        """Return of every episode of every trial, ``[tasks, trials, E]``."""
        per_step = (self.rewards * self.mask).view(self.tasks, -1, self.episodes, self.horizon)
        return per_step.sum(-1)

    def as_rollout(self) -> Rollout:
        """The trials as a ``Rollout`` ``[tasks, L, trials, ...]`` (for ``advantages``)."""
        def regroup(t: Tensor) -> Tensor:
            t = t.view(self.tasks, -1, *t.shape[1:])
            return t.transpose(1, 2)
        return Rollout(regroup(self.obs), regroup(self.actions), regroup(self.rewards), regroup(self.mask))


@torch.no_grad()
def rollout_trial(policy: SNAILPolicy, goals: Tensor, trials: int, episodes_per_trial: int, horizon: int,
                  generator: torch.Generator | None = None,
                  env_factory: EnvFactory = Navigation2DEnv) -> Trial:
    """Run ``trials`` trials of ``episodes_per_trial`` episodes on each task of ``goals [T, k]``; the policy
    re-reads the whole trial so far at every step (exact; ``O(L^2)``)."""
    goals = torch.as_tensor(goals)
    if goals.ndim != 2:
        raise ValueError(f"goals (task parameters) must be [num_tasks, k], got shape {tuple(goals.shape)}")
    if min(trials, episodes_per_trial, horizon) < 1:
        raise ValueError(f"trials, episodes_per_trial and horizon must be >= 1, got {trials}, "
                         f"{episodes_per_trial}, {horizon}")
    num_tasks, b = goals.shape[0], goals.shape[0] * trials
    env = env_factory(goals.repeat_interleave(trials, dim=0), horizon)
    seq = torch.zeros(b, 0, policy.input_dim)
    obs_t, act_t, rew_t, mask_t, logp_t = [], [], [], [], []
    for _ in range(episodes_per_trial):
        obs, _ = env.reset(seed=int(torch.randint(2 ** 31 - 1, (), generator=generator)))
        done = torch.zeros(b, dtype=torch.bool)
        prev_a, prev_r, first = torch.zeros(b, policy.act_dim), torch.zeros(b, 1), torch.ones(b, 1)
        for _ in range(horizon):
            step_in = torch.cat([obs.float(), prev_a, prev_r, first], dim=-1)
            seq = torch.cat([seq, step_in.unsqueeze(1)], dim=1)
            out = policy(seq)[:, -1]
            mean, log_std = gaussian_split(out)
            action = mean + log_std.exp() * torch.randn(mean.shape, generator=generator)
            alive = (~done).float()
            obs_t.append(obs.float())
            act_t.append(action)
            mask_t.append(alive)
            logp_t.append(gaussian_log_prob(out, action))
            obs, reward, terminated, _, _ = env.step(action)
            done = done | terminated
            rew_t.append(reward.float())
            prev_a, prev_r, first = action * alive[:, None], reward.float()[:, None], torch.zeros(b, 1)
    stack = lambda xs: torch.stack(xs, 1)  # noqa: E731
    return Trial(seq, stack(obs_t), stack(act_t), stack(rew_t), stack(mask_t), stack(logp_t), num_tasks,
                 episodes_per_trial, horizon)


class SNAILRL(nn.Module):
    """Trains a ``SNAILPolicy`` on trials with the PPO clipped surrogate (Adam).

    Args:
        policy: the ``SNAILPolicy`` (``max_len >= episodes_per_trial * horizon``).
        episodes_per_trial: episodes on the same task the policy sees in sequence (2 in the SNAIL paper's
            navigation experiments); trials: trials per task per iteration.
    """

    def __init__(self, policy: SNAILPolicy, episodes_per_trial: int = 2, trials: int = 10, horizon: int = 100,
                 gamma: float = 0.99, gae_lambda: float = 0.95, lr: float = 3e-4, epochs: int = 4,
                 clip: float = 0.2, env_factory: EnvFactory = Navigation2DEnv) -> None:
        super().__init__()
        if not isinstance(policy, SNAILPolicy):
            raise TypeError(f"policy must be a SNAILPolicy, got {type(policy).__name__}")
        if episodes_per_trial * horizon > policy.max_len:
            raise ValueError(f"episodes_per_trial * horizon = {episodes_per_trial * horizon} exceeds the "
                             f"policy's max_len={policy.max_len}")
        self.policy = policy
        self.episodes_per_trial, self.trials, self.horizon = episodes_per_trial, trials, horizon
        self.gamma, self.gae_lambda, self.epochs, self.clip = gamma, gae_lambda, epochs, clip
        self.env_factory = env_factory
        self.baseline = LinearFeatureBaseline()
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=lr)

    def sample(self, goals: Tensor, generator: torch.Generator | None = None) -> Trial:
        return rollout_trial(self.policy, goals, self.trials, self.episodes_per_trial, self.horizon,
                             generator, self.env_factory)

    def advantages(self, trial: Trial) -> Tensor:
        """Normalised GAE advantages over whole trials, ``[B, L]`` (baseline fit per task)."""
        adv = advantages(trial.as_rollout(), self.baseline, self.gamma, self.gae_lambda)  # [T, L, N]
        return adv.transpose(1, 2).reshape(trial.rewards.shape)

    def surrogate(self, trial: Trial, adv: Tensor) -> Tensor:
        """PPO clipped surrogate loss (to minimise) of the current policy on ``trial``."""
        log_prob = gaussian_log_prob(self.policy(trial.seq), trial.actions)
        ratio = torch.exp(log_prob - trial.log_prob)
        objective = torch.minimum(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
        return -(objective * trial.mask).sum() / trial.mask.sum().clamp_min(1.0)

    def train_iteration(self, goals: Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """Sample trials on ``goals [T, k]`` and take ``epochs`` Adam steps; returns the mean return of each
        episode position in the trial (``return_ep0`` = before any experience of the task)."""
        trial = self.sample(goals, generator)
        adv = self.advantages(trial)
        loss = torch.zeros(())
        for _ in range(self.epochs):
            loss = self.surrogate(trial, adv)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        returns = trial.episode_returns().mean(dim=(0, 1))
        return {**{f"return_ep{k}": r for k, r in enumerate(returns.tolist())}, "surrogate": loss.item()}
