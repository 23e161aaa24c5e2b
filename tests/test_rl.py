"""Meta-RL for control: 2D navigation env, returns/GAE, policy-gradient losses, MAML-RL outer step."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnmeta.rl import (
    MAMLRL,
    GaussianMLPPolicy,
    LinearFeatureBaseline,
    Navigation2DEnv,
    NavigationTasks,
    discounted_returns,
    evaluate_adaptation,
    gae,
    rollout,
)
from attnmeta.rl.maml_rl import MetaBatchData, conjugate_gradient
from attnmeta.rl.policy import gaussian_kl, gaussian_log_prob, policy_gradient_loss


# -- environment and tasks ---------------------------------------------------------------------------------
def test_navigation_env_dynamics_reward_and_termination():
    env = Navigation2DEnv(torch.tensor([[0.05, 0.0], [0.3, -0.4]]), horizon=3)
    obs, _ = env.reset()
    assert torch.equal(obs, torch.zeros(2, 2))
    obs, reward, terminated, truncated, _ = env.step(torch.tensor([[0.05, 0.0], [1.0, -1.0]]))
    assert torch.allclose(obs, torch.tensor([[0.05, 0.0], [0.1, -0.1]]))  # second action clipped to 0.1
    assert torch.allclose(reward, torch.tensor([0.0, -(0.2 ** 2 + 0.3 ** 2) ** 0.5]))
    assert terminated.tolist() == [True, False] and truncated.tolist() == [False, False]
    obs, reward, terminated, _, _ = env.step(torch.tensor([[0.1, 0.1], [0.0, 0.0]]))
    assert torch.allclose(obs[0], torch.tensor([0.05, 0.0])) and reward[0] == 0  # terminated robot stays
    *_, truncated, _ = env.step(torch.zeros(2, 2))
    assert truncated.all()


def test_navigation_env_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"goals must have shape \[num_envs, 2\]"):
        Navigation2DEnv(torch.zeros(3))
    env = Navigation2DEnv(torch.zeros(2, 2))
    env.reset()
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(torch.zeros(3, 2))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), episodes=st.integers(1, 4))
def test_rollout_invariants(seed, episodes):
    goals = NavigationTasks(seed=seed).sample_batch(3)
    goals = torch.stack([t.goal for t in goals])
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, hidden=(8,))
    batch = rollout(policy, dict(policy.named_parameters()), goals, episodes, horizon=20,
                    generator=torch.Generator().manual_seed(seed))
    assert batch.obs.shape == (3, 20, episodes, 2) and batch.rewards.shape == (3, 20, episodes)
    assert (batch.mask[:, 1:] <= batch.mask[:, :-1]).all()  # once terminated, always terminated
    assert (batch.rewards[batch.mask == 0] == 0).all() and (batch.rewards <= 0).all()
    # positions are cumulative clipped actions, and reward is minus the distance after the move
    pos = torch.cumsum(batch.actions.clamp(-0.1, 0.1) * batch.mask.unsqueeze(-1), dim=1)
    assert torch.allclose(batch.obs[:, 1:], pos[:, :-1], atol=1e-5)
    dist = (pos - goals.float().view(3, 1, 1, 2)).norm(dim=-1)
    assert torch.allclose(batch.rewards, -dist * batch.mask, atol=1e-5)


def test_navigation_tasks_seeded_in_range_and_resumable():
    family = NavigationTasks(seed=3)
    goals = torch.stack([t.goal for t in family.sample_batch(500)])
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and goals.std() > 0.25
    a, b = NavigationTasks(seed=1).fixed_tasks(40), NavigationTasks(seed=2).fixed_tasks(40)
    assert all(torch.equal(x.goal, y.goal) for x, y in zip(a, b)) and a[0].horizon == 100
    state = family.state_dict()
    first = family.sample().goal
    family.load_state_dict(state)
    assert torch.equal(family.sample().goal, first)
    with pytest.raises(ValueError, match="low < high"):
        NavigationTasks(low=1.0, high=0.0)
    with pytest.raises(TypeError, match="torch.Generator"):
        family.sample(generator=0)


# -- returns, GAE, baseline ----------------------------------------------------------------------------
def test_discounted_returns_and_gae_match_reference():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 3, generator=g, dtype=torch.float64)
    values = torch.randn(6, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(6, 3, dtype=torch.float64)
    mask[4:, 1] = 0
    gamma, lam = 0.9, 0.7
    returns = discounted_returns(rewards, mask, gamma)
    for n in range(3):
        length = int(mask[:, n].sum())
        for t in range(length):
            expected = sum(gamma ** k * rewards[t + k, n] for k in range(length - t))
            assert returns[t, n].item() == pytest.approx(expected.item(), abs=1e-12)
        assert (returns[length:, n] == 0).all()
    advantage = gae(rewards, values, mask, gamma, lam)
    for n in range(3):
        length = int(mask[:, n].sum())
        v = torch.cat([values[:length, n], torch.zeros(1, dtype=torch.float64)])
        deltas = rewards[:length, n] + gamma * v[1:] - v[:-1]
        for t in range(length):
            expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(length - t))
            assert advantage[t, n].item() == pytest.approx(expected.item(), abs=1e-12)
    # lambda = 1 with a zero baseline is the reward-to-go
    assert torch.allclose(gae(rewards, torch.zeros_like(values), mask, gamma, 1.0), returns)


def test_linear_baseline_fits_returns_in_its_feature_span():
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(10, 4, 2, generator=g)
    mask = torch.ones(10, 4)
    feats = LinearFeatureBaseline.features(obs, mask)
    coef = torch.randn(feats.shape[-1], generator=g, dtype=torch.float64)
    returns = (feats @ coef).float()
    fitted = LinearFeatureBaseline(reg=1e-9).fit_predict(obs, returns, mask)
    assert torch.allclose(fitted, returns, atol=1e-3)


# -- losses and gradients ------------------------------------------------------------------------------
def test_gaussian_log_prob_and_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(2)
    old, new = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    actions = torch.randn(5, 2, generator=g)
    d_old = torch.distributions.Normal(old[:, :2], old[:, 2:].exp())
    d_new = torch.distributions.Normal(new[:, :2], new[:, 2:].exp())
    assert torch.allclose(gaussian_log_prob(old, actions), d_old.log_prob(actions).sum(-1), atol=1e-5)
    assert torch.allclose(gaussian_kl(old, new), torch.distributions.kl_divergence(d_old, d_new).sum(-1),
                          atol=1e-5)


def test_policy_gradient_loss_gradient_is_the_reinforce_formula():
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    actions = torch.randn(6, 2, generator=g, dtype=torch.float64)
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    mask = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.float64)
    targets = torch.cat([actions, adv[:, None], mask[:, None]], dim=1)
    loss = policy_gradient_loss(torch.cat([mean, log_std.expand(6, 2)], dim=1), targets)
    d_mean, d_log_std = torch.autograd.grad(loss, [mean, log_std])
    var = torch.exp(2 * log_std.detach())
    expected_mean = -((actions - mean.detach()) / var) * (adv * mask)[:, None] / mask.sum()
    z2 = (actions - mean.detach()) ** 2 / var
    expected_log_std = -((z2 - 1) * (adv * mask)[:, None]).sum(0) / mask.sum()
    assert torch.allclose(d_mean, expected_mean) and torch.allclose(d_log_std, expected_log_std)


def _double_meta_batch(learner: MAMLRL, goals: torch.Tensor) -> MetaBatchData:
    data = learner.sample(goals, torch.Generator().manual_seed(0))
    names = ("support_x", "support_y", "query_x", "query_actions", "query_adv", "query_mask", "old_outputs")
    for name in names:
        setattr(data, name, [t.double() for t in getattr(data, name)])
    data.extra_support = [[(x.double(), y.double()) for x, y in step] for step in data.extra_support]
    return data


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(inner_steps):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=(6,))
    learner = MAMLRL(policy, inner_lr=0.3, inner_steps=inner_steps, episodes=3, horizon=15)
    goals = torch.stack([t.goal for t in NavigationTasks(seed=4).sample_batch(2)])
    data = _double_meta_batch(learner, goals)
    params = {n: p.detach().double().requires_grad_(True) for n, p in policy.named_parameters()}
    policy.double()
    loss, _ = learner.surrogate(params, data, create_graph=True)
    grads = torch.autograd.grad(loss, list(params.values()))
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    analytic = sum((g * direction[n]).sum() for g, n in zip(grads, params))
    eps = 1e-5
    with torch.no_grad():
        plus = {n: p + eps * direction[n] for n, p in params.items()}
        minus = {n: p - eps * direction[n] for n, p in params.items()}
        numeric = (learner.surrogate(plus, data, create_graph=False)[0]
                   - learner.surrogate(minus, data, create_graph=False)[0]) / (2 * eps)
    assert analytic.item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9)
    # first-order MAML drops the inner Hessian term, so its gradient differs
    learner.first_order = True
    fo_loss, _ = learner.surrogate(params, data, create_graph=True)
    fo_grads = torch.autograd.grad(fo_loss, list(params.values()))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, fo_grads))


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64)
    a = a @ a.T + 8 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=20)
    assert torch.allclose(a @ x, b, atol=1e-6)


def test_trpo_step_decreases_surrogate_within_kl_limit():
    torch.manual_seed(0)
    learner = MAMLRL(GaussianMLPPolicy(2, 2, hidden=(32, 32)), episodes=6, horizon=30, max_kl=0.01)
    goals = torch.stack([t.goal for t in NavigationTasks(seed=5).sample_batch(3)])
    data = learner.sample(goals, torch.Generator().manual_seed(0))
    metrics = learner.trpo_step(data)
    assert metrics["step_accepted"] == 1.0
    assert metrics["surrogate_after"] < metrics["surrogate_before"] and 0 < metrics["kl"] < 0.01


def test_bad_learner_options_raise_clear_errors():
    policy = GaussianMLPPolicy(2, 2)
    with pytest.raises(ValueError, match="outer must be 'trpo' or 'ppo'"):
        MAMLRL(policy, outer="sgd")
    with pytest.raises(ValueError, match="inner_steps must be an int >= 0"):
        MAMLRL(policy, inner_steps=-1)
    with pytest.raises(TypeError, match="policy must be an nn.Module"):
        MAMLRL("mlp")
    with pytest.raises(ValueError, match="at least one task"):
        evaluate_adaptation(policy, [])


# -- learning ------------------------------------------------------------------------------------------
def test_policy_gradient_adaptation_improves_return_on_2d_navigation():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2)
    tasks = NavigationTasks().fixed_tasks(8)
    curve = evaluate_adaptation(policy, tasks, steps=2, inner_lr=0.1, episodes=20, seed=0)
    before, _, after = (s.mean for s in curve.summary)
    print("adaptation", [str(s) for s in curve.summary])
    assert after > before + 5.0  # measured gains: +13.9 (seed 0), +22.8 (an earlier random stream)


def test_ppo_outer_step_lowers_clipped_surrogate():
    torch.manual_seed(0)
    learner = MAMLRL(GaussianMLPPolicy(2, 2, hidden=(32, 32)), episodes=6, horizon=30, outer="ppo",
                     ppo_lr=1e-3, ppo_epochs=5)
    goals = torch.stack([t.goal for t in NavigationTasks(seed=6).sample_batch(3)])
    data = learner.sample(goals, torch.Generator().manual_seed(0))
    before, _ = learner.surrogate(learner.params(), data, create_graph=False, clip=0.2)
    learner.ppo_step(data)
    after, kl = learner.surrogate(learner.params(), data, create_graph=False, clip=0.2)
    assert after.item() < before.item() - 1e-3 and kl.item() > 0


# -- HalfCheetah (needs the rl extra: gymnasium + mujoco) ---------------------------------------------------
def test_halfcheetah_task_families_are_seeded_and_in_range():
    from attnmeta.rl import HalfCheetahTasks

    directions = [t.value for t in HalfCheetahTasks("direction", seed=0).sample_batch(200)]
    assert set(directions) == {1.0, -1.0} and 70 < directions.count(1.0) < 130
    fixed = HalfCheetahTasks("direction").fixed_tasks(40)
    assert sum(t.value for t in fixed) == 0 and fixed[0].horizon == 200
    velocities = [t.value for t in HalfCheetahTasks("velocity", seed=0).sample_batch(200)]
    assert 0 <= min(velocities) and max(velocities) <= 2 and max(velocities) - min(velocities) > 1.5
    assert [t.value for t in HalfCheetahTasks("velocity").fixed_tasks(5)] == \
        [t.value for t in HalfCheetahTasks("velocity", seed=9).fixed_tasks(5)]
    with pytest.raises(ValueError, match="'direction' or 'velocity'"):
        HalfCheetahTasks("jump")


def test_halfcheetah_env_rewards_follow_maml_paper():
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    from attnmeta.rl import HalfCheetahEnv

    env = HalfCheetahEnv(torch.tensor([1.0, -1.0]), kind="direction", horizon=3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 17)
    action = torch.full((2, 6), 2.0)  # clipped to 1 -> control cost 0.05 * 6
    obs, reward, terminated, truncated, info = env.step(action)
    v = info["x_velocity"]
    expected = torch.tensor([1.0, -1.0], dtype=torch.float64) * v - 0.3
    assert torch.allclose(reward.double(), expected, atol=1e-5)
    assert not terminated.any() and not truncated.any()
    velocity_env = HalfCheetahEnv(torch.tensor([0.5]), kind="velocity", horizon=2)
    velocity_env.reset(seed=0)
    _, reward, _, _, info = velocity_env.step(torch.zeros(1, 6))
    assert reward.item() == pytest.approx(-abs(info["x_velocity"].item() - 0.5), abs=1e-5)
    with pytest.raises(ValueError, match="action must have shape"):
        velocity_env.step(torch.zeros(2, 6))
    # the task's factory plugs into the batched rollout: returns are sums of the per-step rewards
    from attnmeta.rl import HalfCheetahTasks

    task = HalfCheetahTasks("velocity").fixed_tasks(2)[1]
    policy = GaussianMLPPolicy(17, 6, hidden=(8,))
    batch = rollout(policy, dict(policy.named_parameters()), task.env_params.view(1, 1), episodes=2,
                    horizon=4, generator=torch.Generator().manual_seed(0), env_factory=task.env_factory())
    assert batch.obs.shape == (1, 4, 2, 17) and batch.mask.all()
    assert (batch.rewards <= 0).all() and torch.allclose(batch.returns(), batch.rewards.sum(1))


def test_multi_step_training_samples_fresh_episodes_for_every_inner_step():
    torch.manual_seed(0)
    learner = MAMLRL(GaussianMLPPolicy(2, 2, hidden=(16,)), inner_steps=3, episodes=4, horizon=20)
    goals = torch.stack([t.goal for t in NavigationTasks(seed=7).sample_batch(2)])
    data = learner.sample(goals, torch.Generator().manual_seed(0))
    assert len(data.extra_support) == 2 and all(len(step) == 2 for step in data.extra_support)
    assert len(data.step_returns) == 3
    # the stored chain reproduces the query policy that generated the query episodes (ratio 1 at start)
    params = {n: p.detach() for n, p in learner.params().items()}
    adapted = learner.adapted_for_task(params, data, 1, create_graph=False)
    out = learner.forward_fn(adapted, data.query_x[1])
    assert torch.allclose(out, data.old_outputs[1], atol=1e-5)
    assert not torch.equal(data.extra_support[0][1][0], data.support_x[1])  # fresh episodes, not reused
    metrics = learner.train_iteration(goals, torch.Generator().manual_seed(1))
    assert {"return_step1", "return_step2"} <= metrics.keys()


# -- task attention and SNAIL for meta-RL ---------------------------------------------------------------
def test_task_attention_weights_the_meta_rl_surrogate_and_learns():
    from attnmeta.learners.task_attention import TaskWeighting
    from attnmeta.rl.maml_rl import RL_TASK_STATS

    torch.manual_seed(0)
    goals = torch.stack([t.goal for t in NavigationTasks(seed=8).sample_batch(4)])
    weighting = TaskWeighting(RL_TASK_STATS, dim=8, heads=1, temperature=0.5)
    learner = MAMLRL(GaussianMLPPolicy(2, 2, hidden=(16,)), episodes=4, horizon=20, task_weighting=weighting,
                     weighting_lr=0.05)
    data = learner.sample(goals, torch.Generator().manual_seed(0))
    assert data.task_stats.shape == (4, RL_TASK_STATS) and torch.isfinite(data.task_stats).all()
    assert data.task_grads.shape == (4, sum(p.numel() for p in learner.policy.parameters()))
    # the module starts uniform (zero score layer): the surrogate equals plain MAML-RL's
    assert torch.allclose(data.task_weights, torch.ones(4))
    params = {n: p.detach() for n, p in learner.params().items()}
    weighted, _ = learner.surrogate(params, data, create_graph=False)
    data.task_weights = torch.tensor([2.0, 0.0, 1.0, 1.0])
    per_task = []
    for i in range(4):
        one = MetaBatchData([data.support_x[i]], [data.support_y[i]], [data.query_x[i]],
                            [data.query_actions[i]], [data.query_adv[i]], [data.query_mask[i]],
                            [data.old_outputs[i]], 0.0, 0.0)
        per_task.append(learner.surrogate(params, one, create_graph=False)[0])
    assert weighted.item() == pytest.approx(torch.stack(per_task).mean().item(), abs=1e-6)
    reweighted, _ = learner.surrogate(params, data, create_graph=False)
    expected = (torch.stack(per_task) * data.task_weights).mean()
    assert reweighted.item() == pytest.approx(expected.item(), abs=1e-6)
    # one outer step also trains the weighting module: its weights move away from uniform, mean stays 1
    metrics = learner.train_iteration(goals, torch.Generator().manual_seed(1))
    assert "weighting_objective" in metrics
    new_weights = weighting(learner.sample(goals, torch.Generator().manual_seed(2)).task_stats)
    assert new_weights.mean().item() == pytest.approx(1.0, abs=1e-5) and new_weights.std() > 1e-4
    with pytest.raises(TypeError, match="TaskWeighting"):
        MAMLRL(GaussianMLPPolicy(2, 2), task_weighting=torch.nn.Linear(4, 1))


def test_snail_policy_is_causal_and_its_rollout_matches_one_sequence_pass():
    from attnmeta.rl.policy import gaussian_log_prob
    from attnmeta.rl.snail_policy import SNAILPolicy, rollout_trial

    torch.manual_seed(0)
    policy = SNAILPolicy(2, 2, max_len=24, dim=8, filters=4, key_size=8, value_size=8)
    seq = torch.randn(3, 24, policy.input_dim)
    out = policy(seq)
    changed = seq.clone()
    changed[:, 10:] += 1.0
    assert torch.equal(policy(changed)[:, :10], out[:, :10]) and not torch.allclose(policy(changed)[:, 10:],
                                                                                     out[:, 10:])
    goals = torch.stack([t.goal for t in NavigationTasks(seed=9).sample_batch(2)])
    trial = rollout_trial(policy, goals, trials=3, episodes_per_trial=2, horizon=12,
                          generator=torch.Generator().manual_seed(0))
    assert trial.seq.shape == (6, 24, 6) and trial.episode_returns().shape == (2, 3, 2)
    # the step-by-step rollout (re-reading the trial so far) equals one causal pass over the whole trial
    assert torch.allclose(gaussian_log_prob(policy(trial.seq), trial.actions), trial.log_prob, atol=1e-4)
    # episode starts are flagged, and previous reward/action inputs are what the environment returned
    starts = trial.seq[:, :, -1]
    assert starts[:, 0].eq(1).all() and starts[:, 12].eq(1).all() and starts[:, 5].eq(0).all()
    assert torch.allclose(trial.seq[:, 1:12, -2], trial.rewards[:, :11])
    with pytest.raises(ValueError, match="exceeds max_len"):
        policy(torch.zeros(1, 25, policy.input_dim))
    with pytest.raises(ValueError, match=r"seq must be \[batch, length, 6\]"):
        policy(torch.zeros(1, 5, 3))


def test_snail_rl_ppo_iteration_lowers_the_surrogate_and_uses_the_reward_input():
    from attnmeta.rl.snail_policy import SNAILRL, SNAILPolicy

    torch.manual_seed(0)
    policy = SNAILPolicy(2, 2, max_len=30, dim=8, filters=4, key_size=8, value_size=8)
    learner = SNAILRL(policy, episodes_per_trial=2, trials=4, horizon=15, lr=3e-3, epochs=3)
    goals = torch.stack([t.goal for t in NavigationTasks(seed=10).sample_batch(3)])
    trial = learner.sample(goals, torch.Generator().manual_seed(0))
    adv = learner.advantages(trial)
    assert adv.shape == (12, 30)
    before = learner.surrogate(trial, adv)
    before.backward()
    reward_column = policy.embed.weight.grad[:, -2]
    assert reward_column.abs().sum() > 0  # the policy reads the previous reward
    for _ in range(3):
        loss = learner.surrogate(trial, adv)
        learner.optimizer.zero_grad()
        loss.backward()
        learner.optimizer.step()
    assert learner.surrogate(trial, adv).item() < before.item() - 1e-3
    metrics = learner.train_iteration(goals, torch.Generator().manual_seed(1))
    assert {"return_ep0", "return_ep1", "surrogate"} <= metrics.keys()
    with pytest.raises(ValueError, match="exceeds the policy's max_len"):
        SNAILRL(policy, episodes_per_trial=3, horizon=15)
