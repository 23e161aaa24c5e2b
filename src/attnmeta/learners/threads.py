"""``strategy="threads"`` of the MAML family: the tasks of a meta-batch split over Python threads on a CPU.

Contiguous chunks of tasks, one per worker thread; each worker evaluates its tasks with its own copy of the
model's modules (``functional_call`` swaps module attributes, so two threads must never share a module) and
computes each task's meta-gradient with ``torch.autograd.grad``. The returned per-task losses carry those
gradients (``LossWithGradient``), so the outer loss supports first derivatives only.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnmeta.tasks.episode import TaskBatch

if TYPE_CHECKING:
    from attnmeta.learners.maml import MAML


def threaded_outer_losses(learner: MAML, batch: TaskBatch, params: dict[str, Tensor],
                          buffers: dict[str, Tensor],
                          kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Per-task outer losses ``[T]`` (carrying their meta-gradients), query outputs ``[T, n_query, ...]`` and
    the inner-loop trace ``{key: [T, steps]}`` of ``learner._task_outer`` over ``batch``."""
    model = learner.model
    tasks = list(zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y))
    workers = max(1, min(torch.get_num_threads(), len(tasks)))
    # frozen parameters and buffers are passed explicitly, so the copies' own tensors are never read
    extra = {**{n: p for n, p in model.named_parameters() if not p.requires_grad}, **buffers}
    meta_params = [p for p in learner.parameters() if p.requires_grad]
    models = [model] + [copy.deepcopy(model) for _ in range(workers - 1)]
    bounds = [round(i * len(tasks) / workers) for i in range(workers + 1)]
    need_grads = torch.is_grad_enabled()  # grad mode is per thread: the workers' own is always on

    def run(worker: int) -> list[tuple[Tensor, Tensor, dict[str, Tensor], tuple]]:
        torch.set_num_threads(1)
        results = []
        for parts in tasks[bounds[worker]:bounds[worker + 1]]:
            loss, outputs, trace = learner._task_outer(params, extra, *parts, model=models[worker], **kwargs)
            grads = torch.autograd.grad(loss, meta_params, allow_unused=True) if need_grads else ()
            detached = {k: v.detach() for k, v in trace.items()}
            results.append((loss.detach(), outputs.detach(), detached, grads))
        return results

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers) as pool:
            results = [r for chunk in pool.map(run, range(workers)) for r in chunk]
    finally:
        torch.set_num_threads(threads)
    losses = torch.stack([LossWithGradient.apply(r[0], r[3], *meta_params) for r in results])
    outputs = torch.stack([r[1] for r in results])
    trace = {k: torch.stack([r[2][k] for r in results]) for k in results[0][2]}
    return losses, outputs, trace


class LossWithGradient(torch.autograd.Function):
    """A task's loss value whose gradient w.r.t. ``params`` was already computed (``strategy="threads"``):
    the backward pass returns ``grad_output * grads``. First derivatives only."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, grads: tuple, *params: Tensor) -> Tensor:  # noqa: ARG004
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError("the outer loss of strategy='threads' supports first derivatives only "
                               "(no create_graph=True); use strategy='loop' for higher-order outer gradients")
        grads = [None if g is None else grad_output * g for g in ctx.grads]
        return (None, None, *grads)
