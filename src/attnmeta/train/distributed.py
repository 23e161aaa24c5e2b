"""Data-parallel meta-training on ``torch.distributed``: each rank takes a shard of the meta-batch's tasks.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...). Every rank samples the
same meta-batch from the same seeded generator and keeps its contiguous shard of tasks; meta-gradients are
averaged with an all-reduce weighted by shard size, so the update equals a single-process step on the whole
meta-batch (for learners whose outer loss is the mean of per-task losses). Backend: gloo on CPU, nccl on GPU.

Single node, 4 processes::

    torchrun --nproc_per_node=4 -m attnmeta train omniglot --algo maml --meta-batch 32

Two nodes (run on each node, ``--node_rank`` 0 and 1, ``MASTER`` the address of node 0)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --master_addr=MASTER --master_port=29500 \\
        -m attnmeta train omniglot --algo maml --meta-batch 32

Every node needs the data and the same code; the run folder (``--run-dir``) must be on a file system that all
nodes share for ``--resume`` (every rank reads the checkpoint; only rank 0 writes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from attnmeta.tasks.episode import TaskBatch


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size of this process (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_environment(device: str = "cpu") -> DistributedContext:
        """Join the process group described by torchrun's environment variables, if any."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return DistributedContext()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
        return DistributedContext(rank, world_size, local_rank)

    def shard(self, batch: TaskBatch) -> TaskBatch:
        """This rank's contiguous share of the meta-batch's tasks."""
        if not self.enabled:
            return batch
        if len(batch) < self.world_size:
            raise ValueError(
                f"meta_batch {len(batch)} is smaller than the {self.world_size} processes; use "
                f"--meta-batch >= {self.world_size} or fewer processes"
            )
        return batch.split(self.world_size)[self.rank]

    def average_gradients(self, module: nn.Module, shard_size: int, total_size: int) -> None:
        """All-reduce gradients so every rank holds the gradient of the mean loss over all tasks."""
        if not self.enabled:
            return
        grads = []
        for p in module.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]) * (shard_size / total_size)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def average_metrics(
        self, metrics: dict[str, float], shard_size: int, total_size: int, device: torch.device | str = "cpu"
    ) -> dict[str, float]:
        """Task-weighted mean of per-rank metrics (same keys on every rank)."""
        if not self.enabled:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor(
            [metrics[k] * shard_size / total_size for k in keys], dtype=torch.float64, device=device
        )
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return dict(zip(keys, values.tolist()))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
