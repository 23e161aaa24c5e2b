"""Distributed meta-training with 2 CPU processes (gloo): same meta-gradient and weights as one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from attnmeta.train import RunConfig, train
from attnmeta.train.checkpoint import CheckpointManager
from attnmeta.train.distributed import DistributedContext
from attnmeta.train.trainer import build_benchmark, build_learner, final_weights, import_plugins, read_metrics

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "custom_learner.py")
WORLD = 2


def _config(run_dir: Path, steps: int) -> RunConfig:
    return RunConfig(
        benchmark="sinusoid",
        algo="ridge",
        imports=[EXAMPLE],
        steps=steps,
        meta_batch=5,
        lr=1e-2,
        dtype="float64",
        eval_every=2,
        eval_episodes=4,
        test_episodes=4,
        checkpoint_every=1,
        keep_last=2,
        run_dir=str(run_dir),
        plot=False,
        threads=1,
    )


def _worker(rank: int, port: int, run_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    config = _config(Path(run_dir), 3).resolved()
    import_plugins(config.imports)
    ctx = DistributedContext.from_environment("cpu")
    # 1. The all-reduced meta-gradient of the shards equals the full meta-batch's gradient.
    bench = build_benchmark(config)
    learner = build_learner(config, bench)
    batch = bench.train.sample_batch(config.meta_batch).to("cpu", torch.float64)
    learner.meta_loss(batch).loss.backward()
    full = {
        n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in learner.named_parameters()
    }
    learner.zero_grad(set_to_none=True)
    shard = ctx.shard(batch)
    assert len(shard) == (3 if rank == 0 else 2)
    learner.meta_loss(shard).loss.backward()
    ctx.average_gradients(learner, len(shard), len(batch))
    for name, p in learner.named_parameters():
        torch.testing.assert_close(p.grad, full[name], rtol=1e-12, atol=1e-14)
    # 2. Three distributed outer steps, then a distributed resume to six.
    train(config, quiet=True, print_fn=lambda _: None)
    train(_config(Path(run_dir), 6), resume=True, quiet=True, print_fn=lambda _: None)
    ctx.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    reference = tmp_path / "single"
    train(_config(reference, 6), quiet=True, print_fn=lambda _: None)
    distributed = tmp_path / "distributed"
    mp.spawn(_worker, args=(_free_port(), str(distributed)), nprocs=WORLD, join=True)
    a, b = final_weights(reference), final_weights(distributed)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-10, atol=1e-12)
    # Only rank 0 wrote: one metrics row per step (the 3-step run also validated at its last step 3).
    rows = read_metrics(distributed / "metrics.csv")
    assert [(int(r["step"]), r["phase"]) for r in rows] == [
        (1, "train"),
        (2, "train"),
        (2, "val"),
        (3, "train"),
        (3, "val"),
        (4, "train"),
        (4, "val"),
        (5, "train"),
        (6, "train"),
        (6, "val"),
    ]
    train_losses = [float(r["loss"]) for r in rows if r["phase"] == "train"]
    reference_losses = [
        float(r["loss"]) for r in read_metrics(reference / "metrics.csv") if r["phase"] == "train"
    ]
    torch.testing.assert_close(torch.tensor(train_losses), torch.tensor(reference_losses), rtol=1e-10, atol=0)
    assert CheckpointManager(distributed / "checkpoints").steps()[-1] == 6


def test_shard_errors_and_single_process_noop():
    ctx = DistributedContext(rank=0, world_size=4)
    from attnmeta.tasks import Sinusoid

    batch = Sinusoid(2, 2).sample_batch(3)
    try:
        ctx.shard(batch)
    except ValueError as error:
        assert "meta_batch 3 is smaller than the 4 processes" in str(error)
    else:
        raise AssertionError("expected a ValueError")
    single = DistributedContext()
    assert single.shard(batch) is batch and not single.enabled and single.is_main
