"""Strategies of the MAML family that take each task's meta-gradient as soon as its loss exists.

``strategy="accumulate"`` (the CPU default): a Python loop over the tasks of a meta-batch; after each task
its meta-gradient is computed (``torch.autograd.grad``) and its graph freed, so the peak memory is one task's
graph, not the whole meta-batch's (learn2learn's usual ``backward()`` per task does the same).

``strategy="threads"`` (CPU): contiguous chunks of tasks, one per worker thread; each worker evaluates its
tasks with its own copy of the model's modules (``functional_call`` swaps module attributes, so two threads
must never share a module) and one intra-op thread.

Both return per-task losses that carry those gradients (``LossWithGradient``): any function of them (the mean,
task weights) backpropagates exactly, but only to first order (no ``create_graph=True`` on the outer loss;
``strategy="loop"`` keeps the whole graph for that).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnmeta.tasks.episode import TaskBatch

if TYPE_CHECKING:
    from attnmeta.learners.maml import MAML

TaskResult = tuple[Tensor, Tensor, dict[str, Tensor], tuple]


def accumulated_outer_losses(learner: MAML, batch: TaskBatch, buffers: dict[str, Tensor],
                             kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Per-task outer losses ``[T]`` (carrying their meta-gradients), query outputs ``[T, n_query, ...]`` and
    the inner-loop trace ``{key: [T, steps]}``, one task at a time (peak memory: one task's graph)."""
    meta_params = [p for p in learner.parameters() if p.requires_grad]
    results = []
    for parts in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        # the initial parameters are rebuilt per task: a graph shared between tasks would be freed by the
        # first task's gradient
        loss, outputs, trace = learner._task_outer(learner.initial_params(), buffers, *parts, **kwargs)
        results.append(_detached(loss, outputs, trace, torch.autograd.grad(loss, meta_params,
                                                                           allow_unused=True)))
    return _assemble(results, meta_params)


def threaded_outer_losses(learner: MAML, batch: TaskBatch, params: dict[str, Tensor],
                          buffers: dict[str, Tensor],
                          kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """As ``accumulated_outer_losses``, with the tasks split over ``torch.get_num_threads()`` threads."""
    model = learner.model
    tasks = list(zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y))
    workers = max(1, min(torch.get_num_threads(), len(tasks)))
    # frozen parameters and buffers are passed explicitly, so the copies' own tensors are never read
    extra = {**{n: p for n, p in model.named_parameters() if not p.requires_grad}, **buffers}
    meta_params = [p for p in learner.parameters() if p.requires_grad]
    models = [model] + [copy.deepcopy(model) for _ in range(workers - 1)]
    bounds = [round(i * len(tasks) / workers) for i in range(workers + 1)]
    need_grads = torch.is_grad_enabled()  # grad mode is per thread: the workers' own is always on

    def run(worker: int) -> list[TaskResult]:
        torch.set_num_threads(1)
        results = []
        for parts in tasks[bounds[worker]:bounds[worker + 1]]:
            loss, outputs, trace = learner._task_outer(params, extra, *parts, model=models[worker], **kwargs)
            grads = torch.autograd.grad(loss, meta_params, allow_unused=True) if need_grads else ()
            results.append(_detached(loss, outputs, trace, grads))
        return results

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers) as pool:
            results = [r for chunk in pool.map(run, range(workers)) for r in chunk]
    finally:
        torch.set_num_threads(threads)
    return _assemble(results, meta_params)


def _detached(loss: Tensor, outputs: Tensor, trace: dict[str, Tensor], grads: tuple) -> TaskResult:
    return loss.detach(), outputs.detach(), {k: v.detach() for k, v in trace.items()}, grads


def _assemble(results: list[TaskResult],
              meta_params: Sequence[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    losses = torch.stack([LossWithGradient.apply(r[0], r[3], *meta_params) for r in results])
    outputs = torch.stack([r[1] for r in results])
    trace = {k: torch.stack([r[2][k] for r in results]) for k in results[0][2]}
    return losses, outputs, trace


class LossWithGradient(torch.autograd.Function):
    """A task's loss value whose gradient w.r.t. ``params`` was already computed (``strategy="accumulate"`` or
    ``"threads"``): the backward pass returns ``grad_output * grads``. First derivatives only."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, grads: tuple, *params: Tensor) -> Tensor:  # noqa: ARG004
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError("the outer loss of strategy='accumulate' or 'threads' supports first "
                               "derivatives only (no create_graph=True); use strategy='loop' for higher-order"
                               " outer gradients")
        grads = [None if g is None else grad_output * g for g in ctx.grads]
        return (None, None, *grads)
