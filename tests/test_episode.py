"""Task / TaskBatch values: stacking, indexing, splitting, moving, bad input."""

from __future__ import annotations

import pytest
import torch

from attnmeta.tasks import Task, TaskBatch


def make_task(offset: float, ways: int = 3, shots: int = 2, queries: int = 4) -> Task:
    support_x = torch.arange(ways * shots * 5, dtype=torch.float32).reshape(ways * shots, 5) + offset
    query_x = torch.arange(ways * queries * 5, dtype=torch.float32).reshape(ways * queries, 5) - offset
    return Task(
        support_x,
        torch.arange(ways).repeat_interleave(shots),
        query_x,
        torch.arange(ways).repeat_interleave(queries),
        torch.tensor([7, 3, 9])[:ways] + int(offset),
        {"offset": offset},
    )


def test_stack_index_iterate_and_split():
    tasks = [make_task(float(i)) for i in range(5)]
    batch = TaskBatch.stack(tasks)
    assert len(batch) == 5 and batch.ways == 3 and batch.is_classification
    assert (
        batch.support_x.shape == (5, 6, 5)
        and batch.query_y.shape == (5, 12)
        and batch.classes.shape == (5, 3)
    )
    for original, restored in zip(tasks, batch):
        assert torch.equal(original.support_x, restored.support_x) and torch.equal(
            original.classes, restored.classes
        )
        assert restored.info == original.info and restored.ways == 3
    parts = batch.split(2)
    assert [len(p) for p in parts] == [3, 2]
    assert torch.equal(parts[1].query_x[1], tasks[4].query_x) and parts[1].infos[1]["offset"] == 4.0
    with pytest.raises(ValueError, match="cannot split a meta-batch of 5 tasks into 6 parts"):
        batch.split(6)


def test_to_changes_floating_tensors_only():
    batch = TaskBatch.stack([make_task(1.0), make_task(2.0)]).to("cpu", torch.float64)
    assert batch.support_x.dtype == torch.float64 and batch.support_y.dtype == torch.long
    task = make_task(0.0).to("cpu", torch.float16)
    assert task.query_x.dtype == torch.float16 and task.query_y.dtype == torch.long


def test_regression_task_is_not_classification():
    task = Task(torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(6, 1), torch.zeros(6, 1))
    assert not task.is_classification and task.ways == 0 and task.info == {}


def test_stack_rejects_empty_and_mismatched_tasks():
    with pytest.raises(ValueError, match="cannot stack an empty list of tasks"):
        TaskBatch.stack([])
    with pytest.raises(ValueError, match="identical shapes.*same ways/shots/queries"):
        TaskBatch.stack([make_task(0.0), make_task(0.0, shots=1)])
