"""Seconds per meta-step and peak memory: Omniglot 5-way 1-shot (15 queries per class), Conv-4-64 with a
5-way head, 28x28 random inputs, meta-batch 16, 1 inner step (alpha 0.4), Adam outer step.

Variants (each in its own subprocess, so peak RSS is per variant):
  torch-loop         reference: plain functional loop, ``nn.BatchNorm2d`` (fused ``F.batch_norm``) via
                     ``functional_call`` + ``torch.autograd.grad(create_graph=True)`` (what learn2learn does)
  higher             ``higher.innerloop_ctx`` with the same ``nn.BatchNorm2d`` net (skipped if not importable)
  learn2learn        ``l2l.algorithms.MAML`` (skipped if not importable)
  attnmeta-*         ``attnmeta.learners.maml.MAML``, loop / vmap / threads, 2nd / 1st order, library
                     Conv-4 (its default fast block: channels_last convolution, im2col first layer, ReLU
                     after max-pool)
  attnmeta-ref-*     the same learner with the op-by-op block (``ConvBlock.fast = False``)
  attnmeta-bf16-*    ``precision="bf16"`` (autocast bf16; batch norm, losses and updates in fp32)
  attnmeta-fast-*    (not default) fused BN+ReLU module, reshape max-pool (``speed_up_conv_blocks``)
  attnmeta-cl-*      (not default) channels_last weights and inputs around the op-by-op model

learn2learn does not install on Python >= 3.11 (see issue 3), but its ``MAML`` is pure Python:
``python benchmarks/fetch_peers.py --target .peers`` copies it (and ``higher``) into ``.peers``; with
``PYTHONPATH=src:.peers`` the ``learn2learn`` row runs learn2learn's own unmodified ``MAML`` class (it is
about as fast as the ``torch-loop`` row, 1.02x at meta-batch 16).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_meta_step.py --threads 1 --meta-batch 16 --steps 2

Prints a table (CPU seconds per step, the ratio to ``torch-loop``, GFLOP from ``torch.utils.flop_counter`` and
GFLOP per CPU second) and writes ``benchmarks/results/bench_meta_step_mb<N>[_<device>].json``. On a shared
machine wall time is inflated by other jobs: read CPU seconds (``time.process_time``) and the ratio to the
reference measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

RESULTS = Path(__file__).resolve().parent / "results"
WAYS, SHOTS, QUERIES, SIZE, INNER_LR = 5, 1, 15, 28, 0.4
VARIANTS = ["torch-loop", "higher", "learn2learn", "attnmeta-ref-loop-2nd", "attnmeta-loop-2nd",
            "attnmeta-threads-2nd",
            "attnmeta-loop-1st", "attnmeta-vmap-2nd", "attnmeta-bf16-loop-2nd"]


def conv4(norm: str) -> nn.Module:
    """Conv-4-64 with a 5-way head: the library backbone (``norm="meta"``) or a local copy with torch BN."""
    from attnmeta.nn.backbones import Conv4

    if norm == "meta":
        return Conv4((1, SIZE, SIZE), 64, out_features=WAYS)
    model = Conv4((1, SIZE, SIZE), 64, out_features=WAYS, norm="fused")
    for block in model.blocks:
        block.fast = False  # the peers' op-by-op network: conv -> BN -> ReLU -> max-pool, NCHW
    return model


def make_batch(meta_batch: int, device: str):
    from attnmeta.tasks.episode import TaskBatch

    g = torch.Generator().manual_seed(0)
    sy = torch.arange(WAYS).repeat_interleave(SHOTS).repeat(meta_batch, 1)
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).repeat(meta_batch, 1)
    return TaskBatch(torch.rand(meta_batch, WAYS * SHOTS, 1, SIZE, SIZE, generator=g), sy,
                     torch.rand(meta_batch, WAYS * QUERIES, 1, SIZE, SIZE, generator=g), qy,
                     torch.arange(WAYS).repeat(meta_batch, 1)).to(device)


def step_fn(variant: str, meta_batch: int, device: str):
    """Returns ``(step(), params)``: one full meta-step (outer loss, backward, Adam step)."""
    ce = nn.functional.cross_entropy
    batch = make_batch(meta_batch, device)
    torch.manual_seed(0)
    if variant == "torch-loop":
        model = conv4("fused").to(device)
        params = dict(model.named_parameters())
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def step():
            opt.zero_grad()
            total = 0.0
            for t in range(meta_batch):
                loss = ce(functional_call(model, params, (batch.support_x[t],)), batch.support_y[t])
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
                fast = {n: p - INNER_LR * g for (n, p), g in zip(params.items(), grads)}
                total = total + ce(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
            (total / meta_batch).backward()
            opt.step()
        return step, model
    if variant == "higher":
        import higher

        model = conv4("fused").to(device)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        inner = torch.optim.SGD(model.parameters(), lr=INNER_LR)

        def step():
            opt.zero_grad()
            for t in range(meta_batch):
                with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                    diffopt.step(ce(fmodel(batch.support_x[t]), batch.support_y[t]))
                    (ce(fmodel(batch.query_x[t]), batch.query_y[t]) / meta_batch).backward()
            opt.step()
        return step, model
    if variant == "learn2learn":
        model = conv4("fused").to(device)
        maml = learn2learn_maml()(model, lr=INNER_LR, first_order=False)
        opt = torch.optim.Adam(maml.parameters(), 1e-3)

        def step():
            opt.zero_grad()
            for t in range(meta_batch):
                learner = maml.clone()
                learner.adapt(ce(learner(batch.support_x[t]), batch.support_y[t]))
                (ce(learner(batch.query_x[t]), batch.query_y[t]) / meta_batch).backward()
            opt.step()
        return step, model
    from attnmeta.learners.maml import MAML
    from attnmeta.nn.layers import speed_up_conv_blocks

    parts = variant.split("-")
    model = conv4("meta")
    if "ref" in parts or "cl" in parts or "fast" in parts:
        for block in model.blocks:
            block.fast = False
    if "fast" in parts:
        speed_up_conv_blocks(model)
    if "cl" in parts:
        model = ChannelsLast(model.to(memory_format=torch.channels_last))
    learner = MAML(model, "classification", ways=WAYS, inner_lr=INNER_LR, inner_steps=1,
                   first_order=parts[-1] == "1st",
                   strategy=next((k for k in ("vmap", "threads") if k in parts), "loop"),
                   precision="bf16" if "bf16" in parts else "fp32").to(device)
    opt = torch.optim.Adam(learner.parameters(), 1e-3)

    def step():
        opt.zero_grad()
        learner.meta_loss(batch).loss.backward()
        opt.step()
    return step, learner


def learn2learn_maml() -> type:
    """learn2learn's ``MAML`` class: from the installed package, else from its unmodified pure-Python sources
    (``learn2learn/algorithms/{maml,base_learner}.py`` and ``learn2learn/utils/__init__.py`` of the 0.2.0
    sdist, copied without ``__init__.py`` files into a folder on ``PYTHONPATH`` by ``fetch_peers.py``),
    which skips the package's compiled data modules that do not build on Python >= 3.11."""
    try:
        from learn2learn.algorithms import MAML
    except ImportError:
        from learn2learn.algorithms.maml import MAML
    return MAML


class ChannelsLast(nn.Module):
    """Runs ``model`` on channels_last inputs (weights must be channels_last too)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def gradient_gap(variant: str, meta_batch: int, device: str) -> float | None:
    """Max |g - g_ref| / max |g_ref| of the first meta-gradient vs attnmeta-ref-loop-2nd (same init and batch;
    conv biases left out: their exact gradient is 0, batch norm follows) and the cosine between them."""
    parts = variant.split("-")
    if not parts[0] == "attnmeta" or parts[-1] != "2nd" or "ref" in parts:
        return None
    grads = {}
    for name in ("attnmeta-ref-loop-2nd", variant):
        _, learner = step_fn(name, meta_batch, device)
        out = learner.meta_loss(make_batch(meta_batch, device))
        named = [(n, p) for n, p in learner.model.named_parameters() if not n.endswith("conv.bias")]
        grads[name] = torch.cat([g.flatten() for g in torch.autograd.grad(out.loss, [p for _, p in named])])
    ref = grads["attnmeta-ref-loop-2nd"]
    return {"max_rel": ((grads[variant] - ref).abs().max() / ref.abs().max()).item(),
            "cosine": torch.nn.functional.cosine_similarity(grads[variant], ref, dim=0).item()}


def run_variant(variant: str, steps: int, meta_batch: int, device: str) -> dict:
    try:
        step, _ = step_fn(variant, meta_batch, device)
    except ImportError as error:
        return {"variant": variant, "skipped": f"not importable: {error}"}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    step()  # warm-up
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(steps):
        sync()
        began, began_cpu = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - began)
        cpu_times.append(time.process_time() - began_cpu)
    seconds = sorted(times)[len(times) // 2]
    cpu_seconds = sorted(cpu_times)[len(cpu_times) // 2]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    from torch.utils.flop_counter import FlopCounterMode

    one_task_step, _ = step_fn(variant, 1, device)  # FLOPs of a 1-task meta-step, times meta_batch
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            one_task_step()
        flops = counter.get_total_flops() * meta_batch
    except Exception:  # noqa: BLE001 (the counter does not support every transform)
        flops = float("nan")
    return {"variant": variant, "seconds_per_step": seconds, "all_seconds": times,
            "cpu_seconds_per_step": cpu_seconds, "all_cpu_seconds": cpu_times,
            "gflop_per_step": flops / 1e9,
            "gflop_per_s": flops / 1e9 / seconds, "gflop_per_cpu_s": flops / 1e9 / cpu_seconds,
            "peak_mib": peak,
            "peak_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "process max RSS",
            "grad_gap_vs_attnmeta_ref_loop_2nd": gradient_gap(variant, meta_batch, device)}


def interleaved(variants: list[str], rounds: int, meta_batch: int, device: str, clock: str = "cpu") -> dict:
    """All variants in one process, one step of each in turn per round (load changes hit all alike):
    seconds per step (median over rounds) and the ratio to the first variant. ``clock="cpu"``: process CPU
    time (single-thread runs); ``"wall"``: wall time (multi-threaded runs: CPU time sums the threads)."""
    timer = time.process_time if clock == "cpu" else time.perf_counter
    steps = {v: step_fn(v, meta_batch, device)[0] for v in variants}
    for step in steps.values():
        step()  # warm-up
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v, step in steps.items():
            began = timer()
            step()
            seconds[v].append(timer() - began)
    medians = {v: sorted(t)[len(t) // 2] for v, t in seconds.items()}
    rows = [{"variant": v, f"{clock}_seconds_per_step": medians[v], f"all_{clock}_seconds": seconds[v],
             f"{clock}_speedup_vs_first": medians[variants[0]] / medians[v]} for v in variants]
    for r in rows:
        print(f"{r['variant']:28s} {clock} s {medians[r['variant']]:.3f}  vs {variants[0]} "
              f"{r[f'{clock}_speedup_vs_first']:.2f}  all {[round(t, 3) for t in seconds[r['variant']]]}",
              flush=True)
    return {"mode": "interleaved", "clock": clock, "rounds": rounds, "rows": rows}


def _gap_text(gap: dict | None) -> str:
    return "" if gap is None else f"{gap['max_rel']:.1e}, {gap['cosine']:.5f}"


def main() -> None:
    parser = argparse.ArgumentParser(description="seconds per MAML meta-step, Omniglot 5-way 1-shot Conv-4")
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--meta-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                        help="run the variants in one process, interleaved, for ROUNDS rounds (CPU time)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="--interleaved timer: process CPU time, or wall time for multi-threaded runs")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.interleaved:
        result = interleaved(args.variants, args.interleaved, args.meta_batch, args.device, args.clock)
        result["setting"] = {"meta_batch": args.meta_batch, "threads": args.threads, "device": args.device,
                             "torch": torch.__version__, "load_average_at_end": os.getloadavg()}
        out = RESULTS / f"bench_meta_step_interleaved_mb{args.meta_batch}{args.tag}.json"
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
        return
    if args.child:
        print(json.dumps(run_variant(args.variants[0], args.steps, args.meta_batch, args.device)))
        return
    rows = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", "--variants", variant, "--steps", str(args.steps),
               "--meta-batch", str(args.meta_batch), "--threads", str(args.threads), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if proc.returncode != 0:
            rows.append({"variant": variant, "skipped": f"failed: {proc.stderr.strip().splitlines()[-1:]}"})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    ref = next((r for r in rows if r["variant"] == "torch-loop" and "seconds_per_step" in r), None)
    print(f"\n{'variant':28s} {'wall s':>8s} {'vs ref':>7s} {'CPU s':>8s} {'vs ref':>7s} {'GFLOP':>7s} "
          f"{'GFLOP/CPU-s':>11s} {'peak MiB':>9s} grad gap (max rel, cosine)")
    for r in rows:
        if "skipped" in r:
            print(f"{r['variant']:28s} skipped: {r['skipped']}")
            continue
        r["speedup_vs_torch_loop"] = ref["seconds_per_step"] / r["seconds_per_step"] if ref else None
        r["cpu_speedup_vs_torch_loop"] = (ref["cpu_seconds_per_step"] / r["cpu_seconds_per_step"]
                                          if ref else None)
        gap = r["grad_gap_vs_attnmeta_ref_loop_2nd"]
        print(f"{r['variant']:28s} {r['seconds_per_step']:8.3f} {r['speedup_vs_torch_loop'] or 0:7.2f} "
              f"{r['cpu_seconds_per_step']:8.3f} {r['cpu_speedup_vs_torch_loop'] or 0:7.2f} "
              f"{r['gflop_per_step']:7.1f} {r['gflop_per_cpu_s']:11.1f} {r['peak_mib']:9.0f} "
              f"{_gap_text(gap)}")
    suffix = "" if args.device == "cpu" else f"_{args.device.replace(':', '')}"
    out = RESULTS / f"bench_meta_step_mb{args.meta_batch}{suffix}{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    setting = {"ways": WAYS, "shots": SHOTS, "queries_per_class": QUERIES, "image": SIZE,
               "backbone": "conv4-64", "meta_batch": args.meta_batch, "inner_steps": 1, "inner_lr": INNER_LR,
               "threads": args.threads,
               "device": args.device, "torch": torch.__version__, "steps_timed": args.steps,
               "load_average_at_end": os.getloadavg()}
    out.write_text(json.dumps({"setting": setting, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
