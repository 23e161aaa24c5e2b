"""MAML for reinforcement learning (Finn et al. 2017, section 5.3) on the shared functional inner loop.

Inner loop: ``attnmeta.learners.inner.adapt`` with the REINFORCE loss (``policy_gradient_loss``) on the
task's *support* episodes (sampled with the meta-policy). Outer loop: the policy-gradient surrogate on
*query* episodes sampled with the adapted policy, differentiated through the inner step (second order by
default), optimised with TRPO (conjugate gradient on the Fisher/KL Hessian + backtracking line search on the
KL constraint) or, cheaper, with a few Adam epochs on the PPO clipped surrogate. ``inner_steps=0`` is plain
multi-task TRPO/PPO (the "pre-trained on all tasks jointly" baseline).

With ``inner_steps = K > 1`` every inner step gets fresh episodes sampled with the policy adapted so far
(the evaluation protocol, and the MAML paper's code):
``theta_k = theta_{k-1} - alpha grad L(theta_{k-1}; D_{k-1})`` with ``D_{k-1}`` sampled from
``pi_{theta_{k-1}}``; the outer gradient flows through the chain of updates (as in the paper's code, not
through the sampling distributions of ``D_1 .. D_{K-1}``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn
from torch.func import functional_call

from attnmeta.learners.inner import Params, SGDRule, StepRule, adapt
from attnmeta.learners.task_attention import TaskWeighting, cosine_alignment
from attnmeta.rl.envs import EnvFactory, Navigation2DEnv, Rollout, rollout
from attnmeta.rl.policy import (
    LinearFeatureBaseline,
    advantages,
    gaussian_kl,
    gaussian_log_prob,
    pg_targets,
    policy_gradient_loss,
)


@dataclass
class MetaBatchData:
    """Everything one outer step needs: per-task support data, query data, and the old query policy.

    ``support_x[i]`` / ``support_y[i]``: task ``i``'s support data of the first inner step;
    ``extra_support[k - 1][i]``: ``(x, y)`` of inner step ``k >= 1`` (empty for one inner step)."""

    support_x: list[Tensor]
    support_y: list[Tensor]
    query_x: list[Tensor]
    query_actions: list[Tensor]
    query_adv: list[Tensor]
    query_mask: list[Tensor]
    old_outputs: list[Tensor]
    support_return: float
    query_return: float
    extra_support: list[list[tuple[Tensor, Tensor]]] = field(default_factory=list)
    step_returns: list[float] = field(default_factory=list)
    task_stats: Tensor | None = None
    task_weights: Tensor | None = None
    task_grads: Tensor | None = None


class MAMLRL(nn.Module):
    """MAML-RL learner. Its parameters (the policy's, plus learnable inner rates if any) are meta-parameters.

    Args:
        policy: any ``nn.Module`` ``obs -> [.., 2 * act_dim]`` (e.g. ``GaussianMLPPolicy``).
        inner_lr: inner policy-gradient step size (0.1 in the MAML paper for 2D navigation).
        inner_steps: inner gradient steps during meta-training (1 in the paper; 0 = no adaptation).
        episodes: episodes per task for the support set and for the query set (20 in the paper).
        horizon: episode length (100 for 2D navigation).
        first_order: ignore second derivatives through the inner step.
        outer: ``"trpo"`` (the paper) or ``"ppo"`` (clipped surrogate with Adam).
        fisher_first_order: TRPO's KL Hessian-vector products ignore the inner step's second derivatives
            (the gradient stays second order and the line search checks the exact KL); ~10x cheaper on CPU.
            ``False`` differentiates the KL three times through the inner step, as the paper's code.
        env_factory: ``factory(task_params [E, k], horizon)`` (``Navigation2DEnv``; see ``envs``).
        task_weighting: optional task attention over the meta-batch (``TaskWeighting(stats_dim=4)``): the
            outer surrogate becomes ``mean_t(w_t L_t)`` with weights from the per-task descriptors of
            ``rl_task_stats`` (``w`` constant in the outer step); after each outer step the module takes one
            Adam step (``weighting_lr``) on its look-ahead objective with leave-one-out cosine alignments of
            the per-task policy gradients at the adapted parameters (``attnmeta.learners.task_attention``).
    """

    def __init__(self, policy: nn.Module, inner_lr: float = 0.1, inner_steps: int = 1, episodes: int = 20,
                 horizon: int = 100, gamma: float = 0.99, gae_lambda: float = 1.0, first_order: bool = False,
                 outer: str = "trpo", max_kl: float = 0.01, cg_iters: int = 10, cg_damping: float = 1e-5,
                 ls_steps: int = 15, ls_backtrack: float = 0.5, ppo_lr: float = 3e-4, ppo_epochs: int = 5,
                 ppo_clip: float = 0.2, fisher_first_order: bool = True,
                 rule: StepRule | None = None, env_factory: EnvFactory = Navigation2DEnv,
                 task_weighting: TaskWeighting | None = None, weighting_lr: float = 1e-3) -> None:
        super().__init__()
        if not isinstance(policy, nn.Module):
            raise TypeError(f"policy must be an nn.Module, got {type(policy).__name__}")
        if outer not in ("trpo", "ppo"):
            raise ValueError(f"outer must be 'trpo' or 'ppo', got {outer!r}")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
        self.policy = policy
        self.rule = rule if rule is not None else SGDRule(inner_lr)
        self.inner_steps, self.episodes, self.horizon = inner_steps, episodes, horizon
        self.gamma, self.gae_lambda, self.first_order, self.outer = gamma, gae_lambda, first_order, outer
        self.max_kl, self.cg_iters, self.cg_damping = max_kl, cg_iters, cg_damping
        self.ls_steps, self.ls_backtrack = ls_steps, ls_backtrack
        self.fisher_first_order = fisher_first_order
        self.env_factory = env_factory
        self.ppo_epochs, self.ppo_clip = ppo_epochs, ppo_clip
        self.baseline = LinearFeatureBaseline()
        self.ppo_optimizer = torch.optim.Adam(self.policy.parameters(), lr=ppo_lr) if outer == "ppo" else None
        if task_weighting is not None and not isinstance(task_weighting, TaskWeighting):
            raise TypeError(f"task_weighting must be a TaskWeighting, got {type(task_weighting).__name__}")
        self.task_weighting = task_weighting
        self.weighting_optimizer = (torch.optim.Adam(task_weighting.parameters(), lr=weighting_lr)
                                    if task_weighting is not None and not task_weighting.uniform else None)

    # -- functional pieces -------------------------------------------------------------------------------
    def params(self) -> Params:
        return dict(self.policy.named_parameters())

    def forward_fn(self, params: Mapping[str, Tensor], obs: Tensor) -> Tensor:
        return functional_call(self.policy, dict(params), (obs,))  # functional_call takes only dicts

    def adapt_params(self, params: Params, support_x: Tensor, support_y: Tensor, steps: int | None = None,
                     create_graph: bool = False) -> Params:
        """Adapted parameters after ``steps`` policy-gradient steps on one task's support data (shared
        ``adapt``); differentiable w.r.t. ``params`` when ``create_graph`` (second order unless
        ``first_order``)."""
        steps = self.inner_steps if steps is None else steps
        adapted, _ = adapt(self.forward_fn, params, support_x, support_y, loss_fn=policy_gradient_loss,
                           rule=self.rule, steps=steps, first_order=self.first_order or not create_graph,
                           inner_grad="autograd")
        return adapted

    def support_data(self, batch: Rollout) -> tuple[list[Tensor], list[Tensor]]:
        """Per-task flattened ``(obs [H*N, d], targets [H*N, a+2])`` with GAE advantages."""
        adv = advantages(batch, self.baseline, self.gamma, self.gae_lambda)
        xs = [batch.obs[i].flatten(0, 1) for i in range(batch.obs.shape[0])]
        ys = [pg_targets(batch.task(i), adv[i:i + 1]) for i in range(batch.obs.shape[0])]
        return xs, ys

    # -- sampling ----------------------------------------------------------------------------------------
    def sample(self, goals: Tensor, generator: torch.Generator | None = None) -> MetaBatchData:
        """Support episodes with the meta-policy, inner adaptation, query episodes with the adapted
        policies."""
        params = {n: p.detach() for n, p in self.params().items()}
        num_tasks = goals.shape[0]
        support_x: list[Tensor] = []
        support_y: list[Tensor] = []
        support_return = float("nan")
        extra: list[list[tuple[Tensor, Tensor]]] = []
        step_returns: list[float] = []
        if self.inner_steps > 0:
            support = rollout(self.policy, params, goals, self.episodes, self.horizon, generator,
                              env_factory=self.env_factory)
            support_return = support.returns().mean().item()
            step_returns.append(support_return)
            support_x, support_y = self.support_data(support)
            adapted = [self.adapt_params(params, support_x[i], support_y[i], steps=1)
                       for i in range(num_tasks)]
            for _ in range(1, self.inner_steps):  # fresh episodes with the policy adapted so far
                stacked = {n: torch.stack([a[n].detach() for a in adapted]) for n in params}
                batch = rollout(self.policy, stacked, goals, self.episodes, self.horizon, generator,
                                per_task_params=True, env_factory=self.env_factory)
                step_returns.append(batch.returns().mean().item())
                xs, ys = self.support_data(batch)
                extra.append(list(zip(xs, ys)))
                adapted = [self.adapt_params(adapted[i], xs[i], ys[i], steps=1) for i in range(num_tasks)]
            stacked = {n: torch.stack([a[n].detach() for a in adapted]) for n in params}
            query = rollout(self.policy, stacked, goals, self.episodes, self.horizon, generator,
                            per_task_params=True, env_factory=self.env_factory)
        else:
            adapted = [params] * num_tasks
            query = rollout(self.policy, params, goals, self.episodes, self.horizon, generator,
                            env_factory=self.env_factory)
        adv = advantages(query, self.baseline, self.gamma, self.gae_lambda)
        with torch.no_grad():
            old = [self.forward_fn(adapted[i], query.obs[i]) for i in range(num_tasks)]
        data = MetaBatchData(support_x, support_y, [query.obs[i] for i in range(num_tasks)],
                             [query.actions[i] for i in range(num_tasks)], [adv[i] for i in range(num_tasks)],
                             [query.mask[i] for i in range(num_tasks)], old, support_return,
                             query.returns().mean().item(), extra, step_returns)
        if self.task_weighting is not None:
            first = (support if self.inner_steps > 0 else query).returns().mean(dim=1)
            step = [torch.sqrt(cast(Tensor, sum(((adapted[i][n] - params[n]) ** 2).sum() for n in params)))
                    for i in range(num_tasks)]
            lr = float(getattr(self.rule, "lr", torch.tensor(1.0)).detach().mean())
            data.task_stats = rl_task_stats(first, query.returns().mean(dim=1), torch.stack(step) / lr,
                                            self.horizon).detach()
            with torch.no_grad():
                data.task_weights = self.task_weighting(data.task_stats)
            data.task_grads = torch.stack([self._task_gradient(adapted[i], data, i)
                                           for i in range(num_tasks)])
        return data

    def _task_gradient(self, adapted: Params, data: MetaBatchData, i: int) -> Tensor:
        """First-order policy gradient of task ``i``'s query surrogate at its adapted parameters, flat."""
        leaves = {n: t.detach().requires_grad_(True) for n, t in adapted.items()}
        mask = data.query_mask[i]
        log_prob = gaussian_log_prob(self.forward_fn(leaves, data.query_x[i]), data.query_actions[i])
        loss = -(log_prob * data.query_adv[i] * mask).sum() / mask.sum().clamp_min(1.0)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return torch.cat([(torch.zeros_like(t) if g is None else g).reshape(-1)
                          for g, t in zip(grads, leaves.values())])

    def weighting_step(self, data: MetaBatchData) -> dict[str, float]:
        """One Adam step of the task-attention module on its look-ahead objective (see ``task_weighting``)."""
        assert self.task_weighting is not None and data.task_stats is not None
        assert data.task_weights is not None
        out = {"weight_min": data.task_weights.min().item(), "weight_max": data.task_weights.max().item()}
        if self.weighting_optimizer is None or data.task_grads is None or len(data.query_x) < 2:
            return out
        _, objective = self.task_weighting.weigh(data.task_stats, alignment=cosine_alignment(data.task_grads))
        self.weighting_optimizer.zero_grad()
        objective.backward()
        self.weighting_optimizer.step()
        return {**out, "weighting_objective": objective.item()}

    # -- outer objective ---------------------------------------------------------------------------------
    def surrogate(self, params: Params, data: MetaBatchData, create_graph: bool,
                  clip: float | None = None) -> tuple[Tensor, Tensor]:
        """Mean over tasks of the query surrogate loss ``-E[ratio * A]`` (clipped when ``clip``) and of
        ``KL(old || new)``, both as functions of the meta-parameters ``params``."""
        losses, kls = [], []
        for i in range(len(data.query_x)):
            adapted = self.adapted_for_task(params, data, i, create_graph)
            out = self.forward_fn(adapted, data.query_x[i])
            mask = data.query_mask[i]
            n = mask.sum().clamp_min(1.0)
            log_ratio = gaussian_log_prob(out, data.query_actions[i]) - gaussian_log_prob(
                data.old_outputs[i], data.query_actions[i])
            ratio = torch.exp(log_ratio)
            adv = data.query_adv[i]
            objective = ratio * adv
            if clip is not None:
                objective = torch.minimum(objective, ratio.clamp(1 - clip, 1 + clip) * adv)
            losses.append(-(objective * mask).sum() / n)
            kls.append((gaussian_kl(data.old_outputs[i], out) * mask).sum() / n)
        losses_t = torch.stack(losses)
        if data.task_weights is not None:
            losses_t = losses_t * data.task_weights.to(losses_t.dtype)
        return losses_t.mean(), torch.stack(kls).mean()

    def adapted_for_task(self, params: Params, data: MetaBatchData, i: int, create_graph: bool) -> Params:
        """Task ``i``'s query policy: ``inner_steps`` chained single steps on its stored support data."""
        if self.inner_steps == 0:
            return params
        adapted = self.adapt_params(params, data.support_x[i], data.support_y[i], steps=1,
                                    create_graph=create_graph)
        for step_data in data.extra_support[: self.inner_steps - 1]:
            x, y = step_data[i]
            adapted = self.adapt_params(adapted, x, y, steps=1, create_graph=create_graph)
        return adapted

    def trpo_step(self, data: MetaBatchData) -> dict[str, float]:
        """One TRPO update of the meta-parameters (conjugate gradient + backtracking line search)."""
        names = [n for n, p in self.policy.named_parameters() if p.requires_grad]
        base = {n: p.detach().requires_grad_(True) for n, p in self.params().items()}
        inputs = [base[n] for n in names]
        loss, kl = self.surrogate(base, data, create_graph=True)
        grads = torch.autograd.grad(loss, inputs, retain_graph=not self.fisher_first_order)
        g = torch.cat([x.reshape(-1) for x in grads]).detach()
        if self.fisher_first_order:  # KL Hessian with the inner step's Jacobian taken as identity
            first_order, self.first_order = self.first_order, True
            try:
                _, kl = self.surrogate(base, data, create_graph=True)
            finally:
                self.first_order = first_order
        grad_kl = torch.autograd.grad(kl, inputs, create_graph=True)
        flat_grad_kl = torch.cat([x.reshape(-1) for x in grad_kl])

        def fisher_vector(v: Tensor) -> Tensor:
            hv = torch.autograd.grad(flat_grad_kl @ v, inputs, retain_graph=True)
            return torch.cat([x.reshape(-1) for x in hv]).detach() + self.cg_damping * v

        step_dir = conjugate_gradient(fisher_vector, g, self.cg_iters)
        shs = 0.5 * step_dir @ fisher_vector(step_dir)
        full_step = step_dir * torch.sqrt(2 * self.max_kl / shs.clamp_min(1e-12)) if shs > 0 else step_dir * 0
        old_vec = torch.cat([base[n].detach().reshape(-1) for n in names])
        old_loss = loss.item()
        accepted, new_loss, new_kl, frac = False, old_loss, 0.0, 1.0
        for _ in range(self.ls_steps):
            candidate = self._unflatten(old_vec - frac * full_step, names)
            with torch.no_grad():
                trial_loss, trial_kl = self.surrogate({**base, **candidate}, data, create_graph=False)
            if trial_loss.item() < old_loss and trial_kl.item() < self.max_kl:
                accepted, new_loss, new_kl = True, trial_loss.item(), trial_kl.item()
                with torch.no_grad():
                    for n in names:
                        dict(self.policy.named_parameters())[n].copy_(candidate[n])
                break
            frac *= self.ls_backtrack
        return {"surrogate_before": old_loss, "surrogate_after": new_loss, "kl": new_kl,
                "step_accepted": float(accepted), "step_fraction": frac if accepted else 0.0}

    def ppo_step(self, data: MetaBatchData) -> dict[str, float]:
        """``ppo_epochs`` Adam steps on the clipped surrogate through the inner loop (cheaper than TRPO)."""
        assert self.ppo_optimizer is not None
        loss = kl = torch.zeros(())
        for _ in range(self.ppo_epochs):
            loss, kl = self.surrogate(self.params(), data, create_graph=True, clip=self.ppo_clip)
            self.ppo_optimizer.zero_grad()
            loss.backward()
            self.ppo_optimizer.step()
        return {"surrogate_after": loss.item(), "kl": kl.item()}

    def _unflatten(self, vec: Tensor, names: list[str]) -> Params:
        params, out, offset = self.params(), {}, 0
        for n in names:
            size = params[n].numel()
            out[n] = vec[offset:offset + size].view_as(params[n])
            offset += size
        return out

    def train_iteration(self, goals: Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """Sample a meta-batch on ``goals [T, 2]`` and take one outer step; returns metrics (returns are
        mean undiscounted episode returns before and after adaptation)."""
        data = self.sample(goals, generator)
        metrics = self.trpo_step(data) if self.outer == "trpo" else self.ppo_step(data)
        if data.task_weights is not None:
            metrics.update(self.weighting_step(data))
        steps = {f"return_step{k}": r for k, r in enumerate(data.step_returns[1:], start=1)}
        return {"return_before": data.support_return, "return_after": data.query_return, **steps, **metrics}


RL_TASK_STATS = 4


def rl_task_stats(return_before: Tensor, return_after: Tensor, step_norm: Tensor, horizon: int) -> Tensor:
    """``[T, 4]`` task descriptors for task attention in meta-RL: mean return per step before and after
    adaptation, their difference, and ``log`` of the inner update's norm divided by the inner rate (all
    inputs ``[T]``)."""
    before, after = return_before / horizon, return_after / horizon
    return torch.stack([before, after, after - before, torch.log(step_norm + 1e-8)], dim=-1).float()


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
                       tol: float = 1e-10) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given ``matvec(v) = A v``."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / (p @ ap).clamp_min(1e-20)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x
