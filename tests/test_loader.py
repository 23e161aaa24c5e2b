"""DataLoader path: per-worker seeding, reproducibility, collation, sharding, bad input."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from attnmeta.tasks import (
    EpisodeSampler,
    Sinusoid,
    TaskBatch,
    TaskStream,
    collate_tasks,
    derive_seed,
    task_loader,
)


def make_sampler() -> EpisodeSampler:
    labels = torch.arange(30).repeat_interleave(4)
    data = torch.arange(120, dtype=torch.float32)[:, None]  # example i holds i: tasks are identifiable
    return EpisodeSampler(data, labels, 5, 1, 2, seed=0)


def task_keys(batches) -> list[tuple]:
    return [
        tuple(task.support_x.flatten().tolist() + task.query_x.flatten().tolist())
        for batch in batches
        for task in batch
    ]


def test_two_workers_give_distinct_tasks_and_the_same_stream_as_one_process():
    sampler = make_sampler()
    in_process = list(task_loader(sampler, 4, num_batches=6, seed=3, num_workers=0))
    workers = list(task_loader(sampler, 4, num_batches=6, seed=3, num_workers=2))
    again = list(task_loader(sampler, 4, num_batches=6, seed=3, num_workers=2))
    assert len(workers) == 6 and all(isinstance(b, TaskBatch) and len(b) == 4 for b in workers)
    keys = task_keys(workers)
    assert len(set(keys)) == len(keys) == 24  # no duplicate task within or across workers
    assert keys == task_keys(in_process) == task_keys(again)  # reproducible, independent of worker count
    # the workers really produced different streams: batch i is item i of the seeded stream
    stream = TaskStream(sampler, 4, num_items=6, seed=3)
    assert task_keys([stream.item(1)]) == task_keys(workers[1:2])
    assert task_keys(list(task_loader(sampler, 4, num_batches=6, seed=4))) != keys
    # the sampler's own generator is not used by the loader
    assert torch.equal(sampler.generator.get_state(), make_sampler().generator.get_state())


def test_task_items_with_collate_and_epochs():
    sampler = make_sampler()
    stream = TaskStream(sampler, num_items=8, seed=1)
    loader = DataLoader(stream, batch_size=4, collate_fn=collate_tasks, num_workers=2)
    first = list(loader)
    assert [len(b) for b in first] == [4, 4] and first[0].support_x.shape == (4, 5, 1)
    assert len(set(task_keys(first))) == 8
    assert task_keys(list(loader)) == task_keys(first)
    stream.set_epoch(1)
    second = list(loader)
    assert not set(task_keys(second)) & set(task_keys(first))


def test_ranks_take_disjoint_items_and_regression_sources_work():
    family = Sinusoid(shots=5, queries=5)
    ranks = [list(TaskStream(family, 2, num_items=7, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert (
        [len(r) for r in ranks]
        == [4, 3]
        == [len(TaskStream(family, 2, num_items=7, rank=r, world_size=2)) for r in range(2)]
    )
    single = list(TaskStream(family, 2, num_items=7, seed=0))
    assert torch.equal(ranks[0][1].support_x, single[2].support_x)
    assert torch.equal(ranks[1][2].query_y, single[5].query_y)


def test_derive_seed_mixes_all_keys():
    seeds = {derive_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 450 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(7, 1, 2) == derive_seed(7, 1, 2) != derive_seed(7, 2, 1)


def test_bad_loader_input():
    with pytest.raises(TypeError, match="source must be a task source with sample"):
        TaskStream([1, 2, 3])
    with pytest.raises(ValueError, match="meta_batch must be >= 1"):
        TaskStream(make_sampler(), 0)
    with pytest.raises(ValueError, match=r"rank must be in 0..world_size-1 = 0..1, got 2"):
        TaskStream(make_sampler(), 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="task_loader sets batch_size itself"):
        task_loader(make_sampler(), 2, batch_size=3)
    with pytest.raises(TypeError, match="endless TaskStream"):
        len(TaskStream(make_sampler(), 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory_pins_task_batches():
    loader = task_loader(make_sampler(), 3, num_batches=2, num_workers=1, pin_memory=True)
    batches = list(loader)
    assert all(b.support_x.is_pinned() and b.query_y.is_pinned() for b in batches)
    assert task_keys(batches) == task_keys(list(task_loader(make_sampler(), 3, num_batches=2)))
