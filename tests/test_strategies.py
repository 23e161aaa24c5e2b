"""Loop and vmap strategies give the same meta-gradient; buffers, dropout and torch BN in user models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnmeta.learners import build
from attnmeta.learners.maml import MAML
from attnmeta.nn.norm import MetaBatchNorm2d
from attnmeta.tasks.episode import TaskBatch

LEARNERS = ["maml", "fomaml", "meta-sgd", "anil", "maml++"]


class ScaledConvNet(nn.Module):
    """Conv -> BN -> ReLU -> pool -> linear, with a constant buffer (any user module must work)."""

    def __init__(self, ways: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = MetaBatchNorm2d(4)
        self.head = nn.Linear(4 * 3 * 3, ways)
        self.register_buffer("input_scale", torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x * self.input_scale)))
        return self.head(nn.functional.max_pool2d(h, 2).flatten(1))


def _batch(dtype: torch.dtype, tasks: int = 4, ways: int = 3, shots: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    n = ways * shots
    labels = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    return TaskBatch(torch.randn(tasks, n, 1, 6, 6, generator=g, dtype=dtype), labels,
                     torch.randn(tasks, n, 1, 6, 6, generator=g, dtype=dtype), labels.clone(),
                     torch.arange(ways).repeat(tasks, 1))


def _grads(name: str, strategy: str, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = ScaledConvNet().to(dtype)
    learner = build(name, model=model, task_type="classification", ways=3, inner_lr=0.4, inner_steps=2,
                    strategy=strategy)
    out, grads = learner.meta_gradient(_batch(dtype))
    return out.task_losses.detach(), grads


@pytest.mark.parametrize("name", LEARNERS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_loop_and_vmap_give_the_same_meta_gradient(name, dtype, tol):
    losses_loop, loop = _grads(name, "loop", dtype)
    losses_vmap, vmapped = _grads(name, "vmap", dtype)
    torch.testing.assert_close(losses_vmap, losses_loop, rtol=tol, atol=tol)
    assert loop.keys() == vmapped.keys()
    for key in loop:
        scale = loop[key].abs().max().clamp(min=1.0)
        assert (loop[key] - vmapped[key]).abs().max() <= tol * scale, key
    # the gradient is not trivially zero (so the comparison means something)
    assert sum(g.abs().sum() for g in loop.values()) > 1e-3


def test_auto_strategy_is_loop_on_cpu():
    learner = MAML(ScaledConvNet(), "classification")
    assert learner.resolved_strategy() == "loop"
    assert MAML(ScaledConvNet(), "classification", strategy="vmap").resolved_strategy() == "vmap"


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_dropout_randomness_differs_per_task(strategy):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 1))
    learner = MAML(model, "regression", inner_lr=0.01, inner_steps=1, strategy=strategy)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 8, 2, generator=g), torch.randn(1, 8, 1, generator=g)
    same = TaskBatch(x.repeat(6, 1, 1), y.repeat(6, 1, 1), x.repeat(6, 1, 1), y.repeat(6, 1, 1),
                     torch.empty(6, 0, dtype=torch.long))
    losses = learner.meta_loss(same).task_losses.detach()
    assert losses.unique().numel() == 6  # six identical tasks, six different dropout masks
    learner.eval()  # no dropout: identical tasks give identical losses
    losses = learner.meta_loss(same).task_losses.detach()
    torch.testing.assert_close(losses, losses[:1].expand(6))


def test_torch_batch_norm_in_a_user_model_is_converted_and_strategies_agree():
    def learner(strategy):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * 4 * 4, 3)).double()
        return MAML(model, "classification", inner_lr=0.5, strategy=strategy)

    loop, vmapped = learner("loop"), learner("vmap")
    assert isinstance(loop.model[1], MetaBatchNorm2d)
    g_loop = loop.meta_gradient(_batch(torch.float64))[1]
    g_vmap = vmapped.meta_gradient(_batch(torch.float64))[1]
    for key in g_loop:
        torch.testing.assert_close(g_vmap[key], g_loop[key], rtol=1e-10, atol=1e-12)


def test_vmap_refuses_torch_batch_norm_with_running_statistics_with_a_clear_message():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    learner = MAML(model, "classification", strategy="vmap", convert_bn=False)
    with pytest.raises(ValueError, match="'1' is a torch BatchNorm with running statistics"):
        learner.meta_loss(_batch(torch.float32))


@pytest.mark.parametrize("name", LEARNERS)
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_threads_strategy_gives_the_loop_meta_gradient(name, workers):
    previous = torch.get_num_threads()
    torch.set_num_threads(workers)
    try:
        losses_threads, threaded = _grads(name, "threads", torch.float64)
        assert torch.get_num_threads() == workers  # restored after the worker threads
    finally:
        torch.set_num_threads(previous)
    losses_loop, loop = _grads(name, "loop", torch.float64)
    torch.testing.assert_close(losses_threads, losses_loop, rtol=1e-12, atol=1e-12)
    assert loop.keys() == threaded.keys()
    for key in loop:
        torch.testing.assert_close(threaded[key], loop[key], rtol=1e-10, atol=1e-12, msg=key)
    assert sum(g.abs().sum() for g in loop.values()) > 1e-3


def test_threads_strategy_task_weights_and_backward():
    """Per-task losses carry their own gradients: any weighting of them backpropagates correctly."""
    weights = torch.tensor([0.1, 0.5, 0.0, 2.0], dtype=torch.float64)
    grads = {}
    for strategy in ("loop", "threads"):
        torch.manual_seed(0)
        learner = MAML(ScaledConvNet().double(), "classification", ways=3, inner_lr=0.4, strategy=strategy)
        learner.meta_loss(_batch(torch.float64), task_weights=weights).loss.backward()
        grads[strategy] = {n: p.grad.clone() for n, p in learner.named_parameters()}
    for key, value in grads["loop"].items():
        torch.testing.assert_close(grads["threads"][key], value, rtol=1e-10, atol=1e-12, msg=key)


def test_threads_strategy_refuses_what_it_cannot_do():
    learner = MAML(ScaledConvNet().double(), "classification", ways=3, strategy="threads")
    loss = learner.meta_loss(_batch(torch.float64)).loss
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(loss, list(learner.parameters()), create_graph=True)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 3))
    torch_bn = MAML(model.double(), "classification", ways=3, strategy="threads", convert_bn=False)
    with pytest.raises(ValueError, match="running statistics.*parallel threads"):
        torch_bn.meta_loss(_batch(torch.float64))
    from attnmeta.learners.attention_maml import AttentionMAML

    attention = AttentionMAML(ScaledConvNet(), "classification", ways=3, strategy="threads")
    with pytest.raises(ValueError, match="not available for AttentionMAML"):
        attention.meta_loss(_batch(torch.float32))


def test_threads_strategy_without_grad_mode_only_evaluates():
    learner = MAML(ScaledConvNet().double(), "classification", ways=3, inner_lr=0.4, strategy="threads")
    reference = MAML(ScaledConvNet().double(), "classification", ways=3, inner_lr=0.4, strategy="loop")
    reference.load_state_dict(learner.state_dict())
    with torch.no_grad():
        out = learner.meta_loss(_batch(torch.float64))
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, reference.meta_loss(_batch(torch.float64)).loss.detach())
