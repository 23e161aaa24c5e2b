"""Task attention: meta-batch weighting (objective, uniform special case, gradient routing) and selection."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnmeta.learners.attention_maml import AttentionMAML
from attnmeta.learners.maml import MAML
from attnmeta.learners.task_attention import (
    MetaBatchWeighting,
    TaskSelector,
    TaskWeighting,
    cosine_alignment,
    descriptor_stats,
    function_signature,
)
from attnmeta.nn.backbones import MLP
from attnmeta.tasks.regression import Multimodal, Sinusoid


def test_cosine_alignment_matches_formula():
    g = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    unit = g / g.norm(dim=1, keepdim=True)
    for t in range(4):
        target = unit.sum(0) - unit[t]
        expected = (g[t] @ target) / (g[t].norm() * target.norm())
        torch.testing.assert_close(cosine_alignment(g)[t], expected)
    heldout = torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(cosine_alignment(g, heldout), (unit @ heldout) / heldout.norm())
    with pytest.raises(ValueError, match="at least 2 tasks"):
        cosine_alignment(g[:1])


def test_weighting_starts_uniform_and_uniform_flag_is_exact():
    stats = torch.randn(8, 8)
    module = TaskWeighting()
    torch.testing.assert_close(module(stats), torch.ones(8))
    torch.testing.assert_close(TaskWeighting(standardize=False)(stats), torch.ones(8))
    assert torch.equal(TaskWeighting(uniform=True)(stats), torch.ones(8))


def test_objective_optimum_is_softmax_of_alignment_over_entropy():
    """Minimising J over free logits gives p = softmax(a / entropy)."""
    alignment = torch.tensor([0.5, -0.2, 0.1, 0.3])
    module = TaskWeighting(entropy=0.2)
    logits = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = module.objective(torch.softmax(logits, 0), alignment)
        loss.backward()
        return loss

    optimizer.step(closure)
    torch.testing.assert_close(torch.softmax(logits, 0), torch.softmax(alignment / 0.2, 0), atol=1e-4, rtol=0)


def test_gate_mode_starts_uniform_and_its_optimum_is_sigmoid_of_alignment_over_entropy():
    """Gate mode: every gate 0.5 at initialisation (uniform weights); minimising the gate objective over
    free logits gives g = sigmoid(a / (entropy * rms(a))), per task (not ranked against the others)."""
    stats = torch.randn(8, 8)
    module = TaskWeighting(mode="gate", entropy=0.2)
    torch.testing.assert_close(module.gates(stats), torch.full((8,), 0.5))
    torch.testing.assert_close(module(stats), torch.ones(8))
    alignment = torch.tensor([0.5, -0.2, 0.1, 0.3])
    logits = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = module.gate_objective(torch.sigmoid(logits), alignment)
        loss.backward()
        return loss

    optimizer.step(closure)
    rms = alignment.pow(2).mean().sqrt()
    expected = torch.sigmoid(alignment / (0.2 * rms))
    torch.testing.assert_close(torch.sigmoid(logits), expected, atol=1e-4, rtol=0)
    # the gates depend on the alignments' signs and relative sizes, not their overall scale
    assert torch.allclose(module.gate_objective(torch.sigmoid(logits), alignment),
                          module.gate_objective(torch.sigmoid(logits), 0.01 * alignment))


def test_gate_mode_learns_flat_weights_within_groups():
    """Synthetic descriptors as below, with alignments spread within each group: gate weights stay flat
    within the good group (the softmax's do not) and low on the bad one."""
    results = {}
    for mode in ("softmax", "gate"):
        torch.manual_seed(0)
        module = TaskWeighting(stats_dim=5, entropy=0.02 if mode == "softmax" else 0.1, temperature=0.1,
                               mode=mode)
        optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
        for _ in range(200):
            stats = torch.randn(10, 5)
            bad = stats[:, 0] > 0.5
            alignment = torch.where(bad, -0.3, 0.1 + 0.1 * stats[:, 1].clamp(-1, 1))  # good: 0..0.2
            objective = (module.gate_objective(module.gates(stats), alignment) if mode == "gate"
                         else module.objective(module.probabilities(stats), alignment))
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
        stats = torch.randn(200, 5)
        bad = stats[:, 0] > 0.5
        with torch.no_grad():
            weights = torch.cat([module(chunk) for chunk in stats.split(10)])
        good = weights[~bad]
        results[mode] = (weights[bad].mean() / good.mean(), good.std() / good.mean())
    assert results["gate"][0] < 0.1
    assert results["gate"][1] < 0.5 * results["softmax"][1]


def test_weighting_learns_to_down_weight_tasks_with_bad_alignment():
    """Synthetic descriptors: tasks whose first statistic is large have alignment -0.5, others +0.5."""
    torch.manual_seed(0)
    module = TaskWeighting(stats_dim=5, entropy=0.1, temperature=0.1)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    for _ in range(150):
        stats = torch.randn(10, 5)
        bad = stats[:, 0] > 0.5
        alignment = torch.where(bad, -0.5, 0.5) + 0.3 * torch.randn(10)
        loss = module.objective(module.probabilities(stats), alignment)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stats = torch.randn(200, 5)
    bad = stats[:, 0] > 0.5
    weights = torch.cat([module(chunk) for chunk in stats.split(10)])
    assert weights[bad].mean() < 0.3 * weights[~bad].mean()


def corrupted_batch(tasks=6):
    family = Sinusoid(shots=5, queries=5, corrupt_fraction=0.5, seed=3)
    return family.sample_batch(tasks).to("cpu", torch.float64)


@pytest.mark.parametrize("mode", ["softmax", "gate"])
def test_outer_gradient_is_maml_with_detached_weights_and_objective_trains_only_the_weighting(mode):
    torch.manual_seed(0)
    model = MLP(1, (8,), 1).double()
    learner = AttentionMAML(copy.deepcopy(model), "regression", inner_lr=0.05,
                            task_attention=MetaBatchWeighting(task_dim=8, mode=mode))
    with torch.no_grad():
        learner.task_weighting.score.weight.normal_()  # non-uniform weights
    batch = corrupted_batch()
    out = learner.meta_loss(batch)
    weights = learner.last_task_weights
    assert not torch.allclose(weights, torch.ones_like(weights))
    maml = MAML(copy.deepcopy(model), "regression", inner_lr=0.05)
    reference = maml.meta_loss(batch, task_weights=weights / len(weights))
    torch.testing.assert_close(out.metrics["loss"], reference.loss.item(), rtol=1e-12, atol=0)
    model_params = [p for _, p in learner.model.named_parameters()]
    ref_grads = torch.autograd.grad(reference.loss, list(maml.model.parameters()))
    grads = torch.autograd.grad(out.loss, model_params + list(learner.task_weighting.parameters()),
                                allow_unused=True)
    for g, r in zip(grads[:len(model_params)], ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert all(g is not None and torch.isfinite(g).all() for g in grads[len(model_params):])
    assert "weight_corrupted" in out.metrics and "weight_clean" in out.metrics


def test_descriptor_statistics():
    stats = descriptor_stats(torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([4.0]),
                             torch.tensor([1.0]))
    expected = torch.log(torch.tensor([[2.0, 0.5, 4.0, 1.0, 0.25]]) + 1e-8)
    expected[0, 4] = torch.log(torch.tensor(0.5 + 1e-8)) - torch.log(torch.tensor(2.0 + 1e-8))
    torch.testing.assert_close(stats, expected)
    one = torch.tensor
    full = descriptor_stats(one([2.0]), one([0.5]), one([4.0]), one([1.0]), one([3.0]), one([-0.25]))
    assert full.shape == (1, 8)
    torch.testing.assert_close(full[:, :5], expected)
    log_q = torch.log(torch.tensor(3.0 + 1e-8))
    torch.testing.assert_close(full[0, 5:], torch.stack([log_q, log_q - torch.log(torch.tensor(0.5 + 1e-8)),
                                                         torch.tensor(-0.25)]))
    # scale-free: multiplying every loss and the reference by c (gradients by sqrt(c)) changes nothing
    g = torch.Generator().manual_seed(0)
    lb, la, gb, ga, qa, ref = (torch.rand(5, generator=g) + 0.1 for _ in range(6))
    align = torch.rand(5, generator=g) - 0.5
    base = descriptor_stats(lb, la, gb, ga, qa, align, reference=ref)
    scaled = descriptor_stats(9 * lb, 9 * la, 3 * gb, 3 * ga, 9 * qa, align, reference=9 * ref)
    torch.testing.assert_close(scaled, base)
    torch.testing.assert_close(base[:, 1], torch.log(la / ref + 1e-8))
    with pytest.raises(ValueError, match="both query_after and alignment"):
        descriptor_stats(torch.ones(1), torch.ones(1), torch.ones(1), torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="expected 8 statistics"):
        TaskWeighting()(torch.randn(4, 5))


def test_heldout_gradient_is_the_mean_fomaml_gradient_and_drives_the_objective():
    """With a trusted held-out set the look-ahead alignment is cos(g_t, mean held-out FOMAML gradient)."""
    torch.manual_seed(0)
    heldout = Sinusoid(shots=5, queries=5, seed=9).fixed_tasks(4, seed=9)
    heldout = [t.to("cpu", torch.float64) for t in heldout]
    weighting = MetaBatchWeighting(task_dim=8, heldout=heldout, heldout_batch=3, mode="softmax")
    learner = AttentionMAML(MLP(1, (8,), 1).double(), "regression", task_attention=weighting, inner_lr=0.05)
    window = learner._heldout_window()
    assert len(window) == 3
    expected = []
    for task in window:  # FOMAML by hand: one SGD step on the support set, gradient of the query loss there
        params = {n: p.detach().clone().requires_grad_(True) for n, p in learner.model.named_parameters()}
        model = learner.model
        loss = torch.func.functional_call(model, params, (task.support_x,)).sub(task.support_y).pow(2).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        fast = {n: (p - 0.05 * g).detach().requires_grad_(True) for (n, p), g in zip(params.items(), grads)}
        query = torch.func.functional_call(model, fast, (task.query_x,)).sub(task.query_y).pow(2).mean()
        expected.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(query, list(fast.values()))]))
    expected = torch.stack(expected)
    expected = (expected / expected.norm(dim=1, keepdim=True)).mean(0)
    torch.testing.assert_close(learner.heldout_gradient(window), expected)
    learner.strategy = "vmap"
    torch.testing.assert_close(learner.heldout_gradient(window), expected)
    learner.strategy = "loop"
    with torch.no_grad():
        learner.task_weighting.score.weight.normal_()
    batch = corrupted_batch()
    out = learner.meta_loss(batch)
    _, _, trace = learner.task_outer_losses(batch)
    alignment = cosine_alignment(trace["task_grad"], learner.heldout_gradient(window))
    weights = learner.last_task_weights
    objective = learner.task_weighting.objective(weights / len(weights), alignment)
    torch.testing.assert_close(out.metrics["weighting_objective"], objective.item(), rtol=1e-10, atol=1e-12)
    # the window rotates with the meta-step: the next step uses the 4th task first
    assert torch.equal(learner._heldout_window().support_x[0], heldout[3].support_x)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), pool=st.integers(5, 40), share=st.floats(0.0, 1.0),
       temperature=st.floats(0.01, 2.0))
def test_selection_probabilities_are_a_distribution_that_starves_nothing(seed, pool, share, temperature):
    g = torch.Generator().manual_seed(seed)
    targets, candidates = torch.randn(3, 6, generator=g), torch.randn(pool, 6, generator=g)
    selector = TaskSelector(temperature=temperature, uniform_share=share)
    probs = selector.probabilities(targets, candidates)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    assert torch.all(probs >= share / pool - 1e-7)
    index = selector.sample(targets, candidates, min(4, pool), generator=g)
    assert len(set(index.tolist())) == min(4, pool)


def test_selection_prefers_the_target_kind():
    family = Multimodal(shots=10, queries=5, seed=0)
    pool = family.fixed_tasks(200, seed=1)
    targets = Multimodal(shots=10, queries=5, kinds=("sinusoid",), seed=0).fixed_tasks(5, seed=2)
    selector = TaskSelector(temperature=0.05, uniform_share=0.2)
    probs = selector.probabilities(targets, pool)
    is_target = torch.tensor([t.info["kind"] == "sinusoid" for t in pool])
    mass = probs[is_target].sum().item()
    assert mass > 0.5 > is_target.float().mean().item()  # base rate is about 0.2
    index = selector.sample(targets, pool, 20, generator=torch.Generator().manual_seed(0))
    assert is_target[index].float().mean() > 0.4


def test_function_signature_is_order_invariant_and_separates_shapes():
    task = Multimodal(shots=10, queries=5, kinds=("sinusoid",), seed=0).sample()
    perm = torch.randperm(10)
    shuffled = type(task)(task.support_x[perm], task.support_y[perm], task.query_x, task.query_y)
    torch.testing.assert_close(function_signature(shuffled), function_signature(task))
    assert function_signature(task).shape == (16,)
    with pytest.raises(ValueError, match="1-d regression"):
        function_signature(type(task)(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.randn(2, 2),
                                      torch.zeros(2, dtype=torch.long), torch.arange(2)))


def test_bad_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TaskSelector(temperature=0)
    with pytest.raises(ValueError, match="uniform_share"):
        TaskSelector(uniform_share=1.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        TaskWeighting(mode="sparsemax")
    with pytest.raises(ValueError, match="cannot draw 5 distinct tasks"):
        TaskSelector().sample(torch.randn(1, 3), torch.randn(4, 3), 5)
    with pytest.raises(TypeError, match="task_attention must be a MetaBatchWeighting"):
        AttentionMAML(MLP(1, (4,), 1), "regression", task_attention=Sinusoid().fixed_tasks(2))
    with pytest.raises(TypeError, match="non-empty list of Task"):
        MetaBatchWeighting(heldout=[])
    with pytest.raises(ValueError, match="same shapes"):
        MetaBatchWeighting(heldout=[Sinusoid(shots=3).sample(), Sinusoid(shots=4).sample()])
    learner = AttentionMAML(MLP(1, (4,), 1), "regression", task_attention=MetaBatchWeighting(task_dim=8))
    with pytest.raises(ValueError, match="do not pass task_weights"):
        learner.meta_loss(Sinusoid(shots=3, queries=3).sample_batch(2), task_weights=torch.ones(2))
