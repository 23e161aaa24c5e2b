"""The strategies (loop, accumulate, vmap, threads) give the same meta-gradient; buffers, dropout and torch BN
in user models; accumulate keeps one task's graph at a time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnmeta.learners import build
from attnmeta.learners.maml import MAML
from attnmeta.nn.backbones import MLP
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


def test_auto_strategy_is_accumulate_on_cpu_and_loop_where_a_learner_needs_every_graph():
    learner = MAML(ScaledConvNet(), "classification")
    assert learner.resolved_strategy() == "accumulate"
    assert MAML(ScaledConvNet(), "classification", strategy="vmap").resolved_strategy() == "vmap"
    from attnmeta.learners.attention_maml import AttentionMAML
    from attnmeta.learners.task_attention import MetaBatchWeighting

    def mlp() -> nn.Module:
        return MLP(4, (8,), 3)

    weighted = AttentionMAML(mlp(), "classification", ways=3, in_shape=(4,),
                             task_attention=MetaBatchWeighting())
    assert weighted.resolved_strategy() == "loop"
    assert AttentionMAML(mlp(), "classification", ways=3, in_shape=(4,),
                         feature_attention=True).resolved_strategy() == "accumulate"
    forced = AttentionMAML(mlp(), "classification", ways=3, in_shape=(4,),
                           task_attention=MetaBatchWeighting(), strategy="accumulate")
    labels = torch.arange(3).repeat(2, 1)
    vectors = TaskBatch(torch.randn(2, 3, 4), labels, torch.randn(2, 3, 4), labels, labels)
    with pytest.raises(ValueError, match="strategy='accumulate' is not available for AttentionMAML with "
                                         "these options; use strategy='loop'"):
        forced.meta_loss(vectors)


@pytest.mark.parametrize("name", LEARNERS + ["reptile"])
def test_accumulate_strategy_gives_the_loop_meta_gradient(name):
    losses_loop, loop = _grads(name, "loop", torch.float64)
    losses_acc, accumulated = _grads(name, "accumulate", torch.float64)
    torch.testing.assert_close(losses_acc, losses_loop, rtol=1e-12, atol=1e-12)
    assert loop.keys() == accumulated.keys()
    for key in loop:
        torch.testing.assert_close(accumulated[key], loop[key], rtol=1e-10, atol=1e-12, msg=key)
    assert sum(g.abs().sum() for g in loop.values()) > 1e-3


@pytest.mark.parametrize("head_init", ["shared", "zero", "prototypes"])
def test_accumulate_strategy_with_a_head_built_from_the_meta_parameters(head_init):
    grads = {}
    for strategy in ("loop", "accumulate"):
        torch.manual_seed(0)
        learner = MAML(ScaledConvNet().double(), "classification", ways=3, inner_lr=0.4, head_init=head_init,
                       strategy=strategy)
        grads[strategy] = learner.meta_gradient(_batch(torch.float64))[1]
    for key, value in grads["loop"].items():
        torch.testing.assert_close(grads["accumulate"][key], value, rtol=1e-10, atol=1e-12, msg=key)


def _peak_saved_bytes(strategy: str, tasks: int) -> int:
    """Peak bytes of tensors saved for backward and alive at once during ``meta_loss``."""
    alive, peak = [0], [0]

    class Saved:
        def __init__(self, tensor: torch.Tensor) -> None:
            self.tensor, self.size = tensor, tensor.numel() * tensor.element_size()
            alive[0] += self.size
            peak[0] = max(peak[0], alive[0])

        def __del__(self) -> None:
            alive[0] -= self.size

    torch.manual_seed(0)
    learner = MAML(ScaledConvNet().double(), "classification", ways=3, inner_lr=0.4, strategy=strategy)
    with torch.autograd.graph.saved_tensors_hooks(Saved, lambda saved: saved.tensor):
        out = learner.meta_loss(_batch(torch.float64, tasks=tasks))
    out.loss.backward()
    return peak[0]


def test_accumulate_strategy_holds_one_task_graph_at_a_time():
    one = _peak_saved_bytes("accumulate", tasks=1)
    assert _peak_saved_bytes("accumulate", tasks=8) == one
    assert _peak_saved_bytes("loop", tasks=8) >= 7 * one


def test_accumulate_strategy_runs_as_the_loop_when_the_inputs_need_gradients():
    """A meta-loss differentiated w.r.t. its input images (e.g. a learned augmentation upstream) gets the
    loop's exact input gradient: precomputed per-task gradients only cover the learner's parameters."""
    grads = {}
    for strategy in ("loop", "accumulate"):
        torch.manual_seed(0)
        learner = MAML(ScaledConvNet().double(), "classification", ways=3, inner_lr=0.4, strategy=strategy)
        batch = _batch(torch.float64)
        query_x = batch.query_x.clone().requires_grad_(True)
        batch = TaskBatch(batch.support_x, batch.support_y, query_x, batch.query_y, batch.classes)
        (grads[strategy],) = torch.autograd.grad(learner.meta_loss(batch).loss, [query_x])
    torch.testing.assert_close(grads["accumulate"], grads["loop"], rtol=1e-12, atol=1e-14)
    assert grads["loop"].abs().sum() > 0
    threaded = MAML(ScaledConvNet().double(), "classification", ways=3, strategy="threads")
    with pytest.raises(ValueError, match="^strategy='threads' takes gradients for the learner's parameters "
                                         "only, but the batch's tensors require grad; use strategy='loop' "
                                         "or 'accumulate'$"):
        threaded.meta_loss(batch)
