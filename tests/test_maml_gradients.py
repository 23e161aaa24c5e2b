"""Meta-gradients (float64) against an independent hand-unrolled reference and central finite differences.

The reference below uses only ``torch.autograd.grad(create_graph=True)`` and hand-written layers (no
``functional_call``, no ``torch.func``, no attnmeta code), on a small net with batch norm.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnmeta.learners.heads import initialise_head
from attnmeta.learners.maml import MAML
from attnmeta.nn.norm import MetaBatchNorm1d
from attnmeta.tasks.episode import Task, TaskBatch

WAYS, IN, HIDDEN, LR = 3, 4, 5, 0.3


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), MetaBatchNorm1d(HIDDEN), nn.Tanh(),
                         nn.Linear(HIDDEN, WAYS)).double()


def _batch(tasks: int = 2, shots: int = 6, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(torch.randn(tasks, shots, IN, generator=g, dtype=torch.float64),
                     torch.randint(0, WAYS, (tasks, shots), generator=g),
                     torch.randn(tasks, shots, IN, generator=g, dtype=torch.float64),
                     torch.randint(0, WAYS, (tasks, shots), generator=g), torch.arange(WAYS).repeat(tasks, 1))


def _reference_forward(p: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, gamma, beta, w2, b2 = p
    h = x @ w1.T + b1
    mean = h.sum(0) / h.shape[0]
    var = ((h - mean) ** 2).sum(0) / h.shape[0]
    h = (h - mean) / torch.sqrt(var + 1e-5) * gamma + beta
    return torch.tanh(h) @ w2.T + b2


def _reference_meta_gradient(params: list[torch.Tensor], batch: TaskBatch, steps: int, *,
                             first_order: bool = False, lrs: list[torch.Tensor] | None = None,
                             adapt: tuple[int, ...] = (0, 1, 2, 3, 4, 5)) -> list[torch.Tensor]:
    """MAML meta-gradient by explicit unrolling. ``lrs``: per-parameter LR tensors (Meta-SGD) or None."""
    params = [p.detach().clone().requires_grad_(True) for p in params]
    lrs = None if lrs is None else [lr.detach().clone().requires_grad_(True) for lr in lrs]
    ce = nn.functional.cross_entropy
    outer = 0.0
    for t in range(len(batch)):
        fast = list(params)
        for _ in range(steps):
            loss = ce(_reference_forward(fast, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(loss, [fast[i] for i in adapt], create_graph=not first_order)
            for j, i in enumerate(adapt):
                g = grads[j].detach() if first_order else grads[j]
                rate = LR if lrs is None else lrs[j]
                fast[i] = fast[i] - rate * g
        outer = outer + ce(_reference_forward(fast, batch.query_x[t]), batch.query_y[t])
    outer = outer / len(batch)
    wrt = params + (lrs or [])
    return list(torch.autograd.grad(outer, wrt, allow_unused=True))


def _learner_grads(learner: MAML, batch: TaskBatch) -> list[torch.Tensor]:
    _, grads = learner.meta_gradient(batch)
    return list(grads.values())


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_second_order_gradient_equals_hand_unrolled_reference(steps, strategy):
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=steps, strategy=strategy)
    batch = _batch()
    ours = _learner_grads(learner, batch)
    ref = _reference_meta_gradient([p for p in learner.model.parameters()], batch, steps)
    assert len(ours) == len(ref) == 6
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and second order really differs from first order here (the test could tell them apart)
    first = _reference_meta_gradient([p for p in learner.model.parameters()], batch, steps, first_order=True)
    assert max((a - b).abs().max().item() for a, b in zip(ours, first)) > 1e-3


def assert_meta_gradient_matches_finite_differences(learner: MAML, batch: TaskBatch, seed: int) -> dict:
    """The learner's meta-gradient at 4 random entries of every model tensor against central differences of
    its meta-loss (float64); returns the gradients by name."""
    learner.eval()  # no meta-step counting; the nets here have no dropout, so outputs are unchanged
    _, grads = learner.meta_gradient(batch)
    eps, g = 1e-6, torch.Generator().manual_seed(seed)
    for name, param in learner.model.named_parameters():
        flat = param.data.view(-1)
        entries = torch.randperm(flat.numel(), generator=g)[:4].tolist()  # 4 entries of each tensor
        numeric = []
        for i in entries:
            orig = flat[i].item()
            flat[i] = orig + eps
            plus = learner.meta_loss(batch).loss.item()
            flat[i] = orig - eps
            minus = learner.meta_loss(batch).loss.item()
            flat[i] = orig
            numeric.append((plus - minus) / (2 * eps))
        analytic = grads[f"model.{name}"].view(-1)[entries]
        torch.testing.assert_close(analytic, torch.tensor(numeric, dtype=torch.float64), rtol=1e-6, atol=1e-8,
                                   msg=name)
    return grads


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_gradient_equals_central_finite_differences(steps):
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=steps, strategy="loop")
    assert_meta_gradient_matches_finite_differences(learner, _batch(), seed=steps)


def test_first_order_gradient_equals_reference_first_order():
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=2, first_order=True)
    batch = _batch()
    ref = _reference_meta_gradient(list(learner.model.parameters()), batch, 2, first_order=True)
    for a, b in zip(_learner_grads(learner, batch), ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_meta_sgd_gradient_including_learning_rates_equals_reference():
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=2, rule="meta-sgd")
    with torch.no_grad():  # distinct per-parameter rates, so keying by name matters
        for i, lr in enumerate(learner.rule.lrs.values()):
            lr.uniform_(0.1, 0.5, generator=torch.Generator().manual_seed(i))
    batch = _batch()
    lrs = [learner.rule.lrs[n.replace(".", ":")] for n, _ in learner.model.named_parameters()]
    ref = _reference_meta_gradient(list(learner.model.parameters()), batch, 2, lrs=lrs)
    _, grads = learner.meta_gradient(batch)
    ours = [grads[f"model.{n}"] for n, _ in learner.model.named_parameters()]
    ours += [grads[f"rule.lrs.{n.replace('.', ':')}"] for n, _ in learner.model.named_parameters()]
    assert len(ours) == len(ref) == 12
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_anil_gradient_equals_reference_with_only_the_head_adapted():
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=3, adapt="head")
    assert learner.adapt_names == ["3.weight", "3.bias"]
    batch = _batch()
    ref = _reference_meta_gradient(list(learner.model.parameters()), batch, 3, adapt=(4, 5))
    for a, b in zip(_learner_grads(learner, batch), ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_first_to_second_order_annealing_switches_by_meta_step_count():
    batch = _batch()
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=1, first_order_until=2)
    params = list(learner.model.parameters())
    first = _reference_meta_gradient(params, batch, 1, first_order=True)
    second = _reference_meta_gradient(params, batch, 1)
    for expected in (first, first, second, second):  # meta-steps 0, 1 first order; then second order
        for a, b in zip(_learner_grads(learner, batch), expected):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert int(learner.meta_steps) == 4


def test_multi_step_loss_weights_and_gradient():
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=3, multi_step_loss=True,
                   msl_anneal_steps=10)
    torch.testing.assert_close(learner.step_loss_weights(3), torch.full((3,), 1 / 3, dtype=torch.float64))
    learner.meta_steps.fill_(5)
    w = learner.step_loss_weights(3)
    assert abs(w.sum().item() - 1.0) < 1e-12 and w[-1] > w[0] > 0
    learner.meta_steps.fill_(10)
    final_only = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(learner.step_loss_weights(3), final_only)
    # at t=0 the outer loss is the mean over steps k=1..3 of the k-step MAML losses
    learner.meta_steps.fill_(0)
    learner.eval()
    batch = _batch()
    out = learner.meta_loss(batch)
    expected = sum(MAML(_net(), "classification", inner_lr=LR, inner_steps=k).meta_loss(batch).loss
                   for k in (1, 2, 3)) / 3
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)


# --- head_init: the zeroing trick and UnicornMAML's shared head ---------------------------------------

def test_initialise_head_replaces_only_the_head():
    params = {"body": torch.randn(3), "head.weight": torch.randn(4, 2, requires_grad=True),
              "head.bias": torch.randn(4, requires_grad=True)}
    head = ["head.weight", "head.bias"]
    assert initialise_head(params, head, "learned") == params
    zero = initialise_head(params, head, "zero")
    assert zero["body"] is params["body"]
    assert torch.equal(zero["head.weight"], torch.zeros(4, 2)) and not zero["head.weight"].requires_grad
    shared = initialise_head(params, head, "shared")
    assert torch.equal(shared["head.weight"], params["head.weight"][:1].expand(4, 2))
    assert torch.equal(shared["head.bias"], params["head.bias"][0].expand(4))
    with pytest.raises(ValueError, match="head_init must be one of"):
        initialise_head(params, head, "random")


@pytest.mark.parametrize("strategy", ["loop", "vmap", "threads"])
@pytest.mark.parametrize("steps", [1, 2])
def test_shared_head_meta_gradient_is_the_reference_summed_over_the_rows(strategy, steps):
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=steps, strategy=strategy,
                   head_init="shared")
    batch = _batch()
    w1, b1, gamma, beta, w2, b2 = learner.model.parameters()
    start = [w1, b1, gamma, beta, w2[:1].expand_as(w2), b2[:1].expand_as(b2)]
    ref = _reference_meta_gradient(start, batch, steps)
    ours = _learner_grads(learner, batch)
    for a, b in zip(ours[:4], ref[:4]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(ours[4:], ref[4:]):  # row 0 receives the whole head's gradient, the other rows none
        torch.testing.assert_close(a[0], b.sum(0), rtol=1e-10, atol=1e-12)
        assert torch.count_nonzero(a[1:]) == 0
    assert ref[4].abs().sum() > 1e-3


@pytest.mark.parametrize("strategy", ["loop", "vmap", "threads"])
def test_zero_head_meta_gradient_is_the_reference_from_a_zero_head(strategy):
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=2, strategy=strategy, head_init="zero")
    batch = _batch()
    w1, b1, gamma, beta, w2, b2 = learner.model.parameters()
    zero_head = [torch.zeros_like(w2), torch.zeros_like(b2)]
    ref = _reference_meta_gradient([w1, b1, gamma, beta, *zero_head], batch, 2)
    ours = _learner_grads(learner, batch)
    for a, b in zip(ours[:4], ref[:4]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert all(torch.count_nonzero(g) == 0 for g in ours[4:])  # the zero head is not meta-learned
    assert sum(g.abs().sum() for g in ref[:4]) > 1e-3


def test_zero_head_predicts_uniformly_before_adapting_and_ignores_the_model_head():
    learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=1, head_init="zero")
    task = _batch()[0]
    assert torch.count_nonzero(learner.predict(task, inner_steps=0)) == 0
    adapted = learner.predict(task)
    with torch.no_grad():
        learner.model[3].weight.add_(5.0)
    torch.testing.assert_close(learner.predict(task), adapted)


def test_shared_head_is_invariant_to_the_order_of_the_labels():
    """A permutation of the class ids permutes the predictions (a learned head breaks this)."""
    batch = _batch(tasks=1, shots=9)
    task = batch[0]
    perm = torch.tensor([2, 0, 1])
    permuted = Task(task.support_x, perm[task.support_y], task.query_x, perm[task.query_y], task.classes)
    for head_init, invariant in (("shared", True), ("learned", False)):
        learner = MAML(_net(), "classification", inner_lr=LR, inner_steps=2, head_init=head_init)
        out, out_permuted = learner.predict(task), learner.predict(permuted)
        assert torch.allclose(out_permuted[:, perm], out, atol=1e-12) == invariant, head_init


def test_head_init_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="head_init must be one of"):
        MAML(_net(), "classification", head_init="random")
    with pytest.raises(ValueError, match="needs the head .*3.weight, 3.bias.* to adapt"):
        MAML(_net(), "classification", head_init="zero", adapt=["0"])
    with pytest.raises(ValueError, match="for classification"):
        MAML(nn.Linear(1, 1), "regression", head_init="shared")
    conv_head = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, WAYS, 1), nn.Flatten(1))
    with pytest.raises(ValueError, match="needs a linear output layer"):
        MAML(conv_head, "classification", head_init="shared")


def test_zero_head_works_for_regression():
    learner = MAML(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), "regression", inner_lr=0.1,
                   head_init="zero")
    x = torch.linspace(-1, 1, 10)[:, None]
    task = Task(x, 2 * x, x, 2 * x)
    assert torch.count_nonzero(learner.predict(task, inner_steps=0)) == 0
    assert learner.predict(task).abs().sum() > 0
