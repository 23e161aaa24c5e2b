"""Proto-MAML (``MAML(head_init="prototypes")``): the head starts at each task's prototypes.

References: a Prototypical Network with squared Euclidean distance (the start), one step of plain
``torch.optim.SGD`` on a copy of the model whose head holds the prototypes (the inner loop: the head is a
variable of its own, not a function of the body), and central finite differences (the meta-gradient,
which reaches the body through the prototypes too).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnmeta.learners.heads import prototype_rows
from attnmeta.learners.maml import MAML
from attnmeta.tasks.episode import Task, TaskBatch
from test_maml_gradients import assert_meta_gradient_matches_finite_differences

WAYS, IN, HIDDEN, FEATURES, LR = 3, 4, 6, 5, 0.3


def _net(outputs: int = WAYS) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, FEATURES), nn.Tanh(),
                         nn.Linear(FEATURES, outputs)).double()


def _batch(tasks: int = 2, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.tensor([0, 1, 2, 0, 1, 2]).repeat(tasks, 1)
    return TaskBatch(torch.randn(tasks, 6, IN, generator=g, dtype=torch.float64), support_y,
                     torch.randn(tasks, 9, IN, generator=g, dtype=torch.float64),
                     torch.randint(0, WAYS, (tasks, 9), generator=g), torch.arange(WAYS).repeat(tasks, 1))


def _learner(steps: int = 1, **options) -> MAML:
    return MAML(_net(options.pop("outputs", WAYS)), "classification", inner_lr=LR, inner_steps=steps,
                head_init="prototypes", **options)


def test_prototype_rows_score_squared_distances_and_leave_extra_rows_zero():
    features, labels = torch.randn(7, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 2])
    weight, bias = prototype_rows(features, labels, 3, outputs=5)
    centres = torch.stack([features[labels == k].mean(0) for k in range(3)])
    x = torch.randn(4, 4, dtype=torch.float64)
    expected = -torch.cdist(x, centres).pow(2) + x.pow(2).sum(-1, keepdim=True)
    torch.testing.assert_close((x @ weight.T + bias)[:, :3], expected)
    assert weight.shape == (5, 4)
    assert torch.count_nonzero(weight[3:]) == 0 and torch.count_nonzero(bias[3:]) == 0


def test_without_inner_steps_it_is_a_prototypical_network():
    learner, task = _learner(), _batch()[0]
    embed = learner.model[:4]
    with torch.no_grad():
        support, query = embed(task.support_x), embed(task.query_x)
        centres = torch.stack([support[task.support_y == k].mean(0) for k in range(WAYS)])
        expected = (-torch.cdist(query, centres).pow(2)).softmax(-1)
    torch.testing.assert_close(learner.predict(task, inner_steps=0).softmax(-1), expected)
    with torch.no_grad():
        learner.model[4].weight.add_(5.0)  # the model's own head is never read
    torch.testing.assert_close(learner.predict(task, inner_steps=0).softmax(-1), expected)


def test_one_inner_step_is_plain_sgd_from_the_prototype_head():
    learner, task = _learner(), _batch()[0]
    reference = copy.deepcopy(learner.model)
    with torch.no_grad():
        weight, bias = prototype_rows(reference[:4](task.support_x), task.support_y, WAYS, WAYS)
        reference[4].weight.copy_(weight)
        reference[4].bias.copy_(bias)
    optimiser = torch.optim.SGD(reference.parameters(), lr=LR)
    nn.functional.cross_entropy(reference(task.support_x), task.support_y).backward()
    optimiser.step()
    adapted, _ = learner.adapt_task(task)
    for name, value in reference.named_parameters():
        torch.testing.assert_close(adapted[name], value.detach(), rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_equals_central_finite_differences(steps):
    grads = assert_meta_gradient_matches_finite_differences(_learner(steps, strategy="loop"), _batch(), steps)
    assert torch.count_nonzero(grads["model.4.weight"]) == 0  # the model's head is not meta-learned


def test_every_strategy_computes_the_same_meta_gradient():
    batch, reference = _batch(tasks=3), None
    for strategy in ("loop", "accumulate", "vmap", "threads"):
        out, grads = _learner(2, strategy=strategy).meta_gradient(batch)
        flat = torch.cat([out.loss.reshape(1), *[g.reshape(-1) for g in grads.values()]])
        if reference is None:
            reference = flat
        torch.testing.assert_close(flat, reference, rtol=1e-10, atol=1e-12, msg=strategy)
    assert reference is not None and reference[1:].abs().sum() > 1e-3


def test_a_permutation_of_the_labels_permutes_the_predictions():
    task = _batch(tasks=1)[0]
    perm = torch.tensor([2, 0, 1])
    permuted = Task(task.support_x, perm[task.support_y], task.query_x, perm[task.query_y], task.classes)
    learner = _learner(2)
    torch.testing.assert_close(learner.predict(permuted)[:, perm], learner.predict(task), rtol=0, atol=1e-12)


def test_a_model_with_more_outputs_serves_fewer_ways():
    learner, task = _learner(outputs=7), _batch()[0]
    assert learner.head_rows_shared
    out = learner.predict(task)
    assert out.shape == (9, WAYS)
    torch.testing.assert_close(out, _learner().predict(task))


def test_head_init_prototypes_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="^head_init='prototypes' builds class rows from prototypes: it is "
                                         "for classification; use 'zero' or 'learned' for regression$"):
        MAML(nn.Linear(1, 1), "regression", head_init="prototypes")
    with pytest.raises(ValueError, match=r"^head_init='prototypes' needs a linear output layer \(weight "
                                         r"\[outputs, features\], bias \[outputs\]\); the last layer has "
                                         r"1.weight \(3, 4\)$"):
        MAML(nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 3, bias=False)), "classification",
             head_init="prototypes")
    flat_input = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 3))  # the head sees [n, 2, H, 2]
    learner = MAML(flat_input, "classification", head_init="prototypes")
    labels = torch.tensor([0, 1, 2])
    task = Task(torch.randn(3, 1, 5, 4), labels, torch.randn(3, 1, 5, 4), labels)
    with pytest.raises(ValueError, match=r"^head_init='prototypes' needs the output layer's input to be "
                                         r"\[examples, features\], got shape \(3, 2, 3, 2\)$"):
        learner.predict(task)
