"""Gaussian MLP policy, linear feature baseline, returns / GAE, and the policy-gradient losses.

The policy is any ``nn.Module`` mapping observations ``[..., obs_dim]`` to ``[..., 2 * act_dim]``
(mean, log standard deviation); ``GaussianMLPPolicy`` is the MAML paper's (2 hidden layers of 100 ReLU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnmeta.rl.envs import Rollout, gaussian_split


class GaussianMLPPolicy(nn.Module):
    """``obs [..., obs_dim] -> [..., 2 * act_dim]``: MLP mean and a state-independent learnable log std."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (100, 100),
                 init_log_std: float = 0.0) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {obs_dim}, {act_dim}")
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, act_dim))
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: Tensor) -> Tensor:
        mean = self.mean(obs)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)


def gaussian_log_prob(outputs: Tensor, actions: Tensor) -> Tensor:
    """Log density of ``actions [..., act_dim]`` under the diagonal Gaussian ``outputs``; ``[...]``."""
    mean, log_std = gaussian_split(outputs)
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(old: Tensor, new: Tensor) -> Tensor:
    """KL(old || new) of diagonal Gaussians given as policy outputs ``[..., 2 * act_dim]``; ``[...]``."""
    mean0, log_std0 = gaussian_split(old)
    mean1, log_std1 = gaussian_split(new)
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1).pow(2)) / (2 * var1) - 0.5).sum(-1)


def pg_targets(batch: Rollout, advantages: Tensor) -> Tensor:
    """Flattened ``[n, act_dim + 2]`` targets (action, advantage, mask) for ``policy_gradient_loss``."""
    targets = torch.cat([batch.actions, advantages.unsqueeze(-1), batch.mask.unsqueeze(-1)], dim=-1)
    return targets.flatten(0, -2)


def policy_gradient_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """REINFORCE loss ``-mean_valid(log pi(a|s) * A)``: the inner loss of MAML-RL.

    ``outputs [n, 2 * act_dim]`` from the policy, ``targets [n, act_dim + 2]`` from ``pg_targets``."""
    actions, advantages, mask = targets[:, :-2], targets[:, -2], targets[:, -1]
    log_prob = gaussian_log_prob(outputs, actions)
    return -(log_prob * advantages * mask).sum() / mask.sum().clamp_min(1.0)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``sum_k gamma^k r_{t+k}`` along axis 0 (time), zero after termination; same shape."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] * mask[t] + gamma * running
        out[t] = running * mask[t]
    return out


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalized advantage estimates along axis 0 (time); value after the last step is 0."""
    values = values * mask
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
    deltas = rewards * mask + gamma * next_values - values
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * running
        out[t] = running * mask[t]
    return out


class LinearFeatureBaseline:
    """Ridge regression of returns on ``[o, o^2, t, t^2, t^3, 1]`` (Duan et al. 2016), fit per task.

    ``fit_predict(obs [H, N, d], returns [H, N], mask [H, N]) -> values [H, N]``.
    """

    def __init__(self, reg: float = 1e-5) -> None:
        self.reg = reg

    @staticmethod
    def features(obs: Tensor, mask: Tensor) -> Tensor:
        horizon, n = obs.shape[:2]
        o = obs.clamp(-10, 10).to(torch.float64)
        t = (torch.arange(horizon, dtype=torch.float64) / 100.0).view(horizon, 1, 1).expand(horizon, n, 1)
        feats = torch.cat([o, o * o, t, t ** 2, t ** 3, torch.ones_like(t)], dim=-1)
        return feats * mask.unsqueeze(-1).to(torch.float64)

    def fit_predict(self, obs: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
        feats = self.features(obs, mask).flatten(0, 1)
        target = returns.to(torch.float64).flatten()
        gram, rhs = feats.T @ feats, feats.T @ target
        reg = self.reg
        for _ in range(5):
            coef = torch.linalg.solve(gram + reg * torch.eye(gram.shape[0], dtype=gram.dtype), rhs)
            if torch.isfinite(coef).all():
                break
            reg *= 10
        return (feats @ coef).view_as(returns).to(returns.dtype)


def advantages(batch: Rollout, baseline: LinearFeatureBaseline, gamma: float = 0.99, lam: float = 1.0,
               normalize: bool = True) -> Tensor:
    """GAE advantages ``[T, H, N]`` with the baseline fit separately on each task's episodes."""
    out = []
    for i in range(batch.obs.shape[0]):
        rew, mask = batch.rewards[i], batch.mask[i]
        values = baseline.fit_predict(batch.obs[i], discounted_returns(rew, mask, gamma), mask)
        adv = gae(rew, values, mask, gamma, lam)
        if normalize:
            n = mask.sum().clamp_min(1.0)
            mean = (adv * mask).sum() / n
            std = (((adv - mean) * mask).pow(2).sum() / n).sqrt()
            adv = (adv - mean) / (std + 1e-8) * mask
        out.append(adv)
    return torch.stack(out)
