"""GPU checks for a lent CUDA machine: loop == vmap meta-gradients, speed per meta-step, short Omniglot MAML.

Usage (on a machine with a CUDA GPU)::

    PYTHONPATH=src python benchmarks/gpu_check.py --omniglot-root ../shared/data/omniglot \
        --train-seconds 240 --out benchmarks/results/gpu_check.json

Prints tables and writes one JSON file. Baselines (`higher`, a functional loop with the fused
``nn.BatchNorm2d``) run in the same process, so the ratios are comparable.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attnmeta.learners.maml import MAML
from attnmeta.nn.backbones import build_backbone
from attnmeta.tasks.episode import TaskBatch


def random_batch(meta_batch: int, ways: int, shots: int, queries: int, device: str,
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(meta_batch, ways * shots, 1, 28, 28, generator=g, dtype=dtype)
    qx = torch.randn(meta_batch, ways * queries, 1, 28, 28, generator=g, dtype=dtype)
    sy = torch.arange(ways).repeat_interleave(shots).expand(meta_batch, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(meta_batch, -1).contiguous()
    classes = torch.arange(ways).expand(meta_batch, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy, classes).to(device)


def make_maml(strategy: str, first_order: bool = False, hidden: int = 64, dtype=torch.float32,
              device: str = "cuda", convert_bn: bool = True, seed: int = 0) -> MAML:
    torch.manual_seed(seed)
    model = build_backbone("conv4", in_shape=(1, 28, 28), out_features=5, hidden=hidden)
    return MAML(model, "classification", ways=5, inner_lr=0.4, inner_steps=1, first_order=first_order,
                strategy=strategy, convert_bn=convert_bn).to(device=device, dtype=dtype)


def meta_grads(learner: MAML, batch: TaskBatch) -> dict[str, torch.Tensor]:
    learner.zero_grad(set_to_none=True)
    learner.meta_loss(batch).loss.backward()
    return {n: p.grad.detach().clone() for n, p in learner.named_parameters() if p.grad is not None}


def check_gradients(device: str) -> list[dict]:
    rows = []
    for dtype, hidden in ((torch.float64, 16), (torch.float32, 64)):
        batch = random_batch(4, 5, 1, 5, device, dtype)
        for first_order in (False, True):
            loop = meta_grads(make_maml("loop", first_order, hidden, dtype, device), batch)
            vmap = meta_grads(make_maml("vmap", first_order, hidden, dtype, device), batch)
            diff = max((loop[n] - vmap[n]).abs().max().item() for n in loop)
            scale = max(loop[n].abs().max().item() for n in loop)
            rows.append({"dtype": str(dtype), "first_order": first_order, "max_abs_diff": diff,
                         "max_abs_grad": scale})
            print(f"loop vs vmap {dtype} first_order={first_order}: "
                  f"max |diff| {diff:.3g} (max |grad| {scale:.3g})")
    return rows


def plain_conv4(hidden: int = 64) -> nn.Module:
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(4):
        layers += [nn.Conv2d(channels, hidden, 3, padding=1),
                   nn.BatchNorm2d(hidden, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
        channels = hidden
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(hidden, 5))


def time_fn(step, device: str, warmup: int = 3, repeats: int = 10) -> tuple[float, float]:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, torch.cuda.max_memory_allocated() / 2**20


def speed(device: str, meta_batches: list[int]) -> list[dict]:
    rows = []
    for meta_batch in meta_batches:
        batch = random_batch(meta_batch, 5, 1, 15, device)
        candidates = {}
        try:
            import higher

            model = plain_conv4().to(device)
            inner_opt = torch.optim.SGD(model.parameters(), lr=0.4)

            def higher_step(model=model, inner_opt=inner_opt, batch=batch):
                model.zero_grad(set_to_none=True)
                for t in range(len(batch)):
                    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, opt):
                        opt.step(F.cross_entropy(fmodel(batch.support_x[t]), batch.support_y[t]))
                        loss = F.cross_entropy(fmodel(batch.query_x[t]), batch.query_y[t]) / len(batch)
                        loss.backward()

            candidates["higher (2nd order, loop)"] = higher_step
        except ImportError:
            print("higher not installed: skipped")
        for label, strategy, first_order, convert in (
                ("functional loop, fused nn.BatchNorm2d (2nd)", "loop", False, False),
                ("attnmeta loop (2nd)", "loop", False, True),
                ("attnmeta vmap (2nd)", "vmap", False, True),
                ("attnmeta vmap (1st)", "vmap", True, True)):
            learner = make_maml(strategy, first_order, device=device, convert_bn=convert)

            def step(learner=learner, batch=batch):
                learner.zero_grad(set_to_none=True)
                learner.meta_loss(batch).loss.backward()

            candidates[label] = step
        base = None
        for label, step in candidates.items():
            seconds, memory = time_fn(step, device)
            base = base or seconds
            rows.append({"meta_batch": meta_batch, "method": label, "seconds_per_step": seconds,
                         "peak_mib": memory, "speedup_vs_first": base / seconds})
            print(f"mb={meta_batch:3d} {label:45s} {1000 * seconds:8.1f} ms/step  {memory:8.0f} MiB  "
                  f"x{base / seconds:.2f} vs {next(iter(candidates))}")
    return rows


def omniglot_maml(root: str, seconds: float, device: str) -> dict:
    from attnmeta.data.benchmarks import make_benchmark
    from attnmeta.eval import evaluate

    bench = make_benchmark("omniglot", root=root, ways=5, shots=1, queries=15)
    learner = make_maml("vmap", False, device=device)
    learner.eval_inner_steps = 3
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        batch = bench.train.sample_batch(32).to(device)
        optimizer.zero_grad(set_to_none=True)
        out = learner.meta_loss(batch)
        out.loss.backward()
        optimizer.step()
        steps += 1
        if steps % 500 == 0:
            print(f"step {steps} loss {out.loss.item():.3f} {time.perf_counter() - start:.0f}s", flush=True)
    train_seconds = time.perf_counter() - start
    result = evaluate(learner, bench.test.fixed_tasks(600, seed=0), device=device)
    print(f"Omniglot 5w1s MAML (2nd order, vmap, mb 32): {steps} steps in {train_seconds:.0f}s -> {result}")
    return {"steps": steps, "train_seconds": train_seconds, "accuracy": result.mean, "ci95": result.ci95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--omniglot-root", default=None)
    parser.add_argument("--train-seconds", type=float, default=240.0)
    parser.add_argument("--meta-batches", default="16,32")
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU")
    device = "cuda"
    torch.backends.cudnn.benchmark = True
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["gradients"] = check_gradients(device)
    report["speed"] = speed(device, [int(m) for m in args.meta_batches.split(",")])
    if args.omniglot_root and args.train_seconds > 0:
        report["omniglot_maml"] = omniglot_maml(args.omniglot_root, args.train_seconds, device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
