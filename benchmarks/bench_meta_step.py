"""Seconds, peak memory, GFLOP/s and gradient error of one second-order MAML meta-step, attnmeta against
learn2learn and higher: Omniglot 5-way 1-shot, 15 queries per class, Conv-4-64 with a 5-way head, 28x28 random
inputs, 1 inner step (alpha 0.4), Adam outer step.

Variants (names are the ``--variants`` arguments):
  learn2learn        ``l2l.algorithms.MAML``: ``clone()``, ``adapt()``, ``backward()`` per task (the baseline)
  higher             ``higher.innerloop_ctx`` with the same network
  torch-loop         plain ``functional_call`` + ``torch.autograd.grad(create_graph=True)``, one backward
  attnmeta           ``attnmeta.learners.maml.MAML``, defaults (``strategy="auto"``: accumulate on CPU)
  attnmeta-<tokens>  the same with options: ``loop`` / ``accumulate`` / ``threads`` / ``vmap`` (strategy),
                     ``bf16`` (``precision="bf16"``), ``1st`` (first order), ``ref`` (op-by-op Conv-4 blocks)

One run measures every variant at every ``--meta-batch``:
  time     all variants in one process, one step of each in turn per round (load changes hit all alike),
           median over ``--rounds``; wall clock with several threads, process CPU time with one
  memory   each variant in a fresh subprocess: peak RSS over the RSS after setup (model, batch, optimiser)
  GFLOP/s  the FLOPs of the algorithm (``torch.utils.flop_counter`` on the ``attnmeta-loop`` step of one task,
           times the meta-batch; every variant computes the same products) over the median seconds
  gradient cosine and max relative error of the variant's first meta-gradient against a float64 reference
           (``torch-loop`` in float64, same initialisation and batch)

learn2learn does not install on Python >= 3.11 (issue 3), but its ``MAML`` is pure Python, and ``higher`` is
one wheel: ``python benchmarks/fetch_peers.py --target .peers`` copies both into ``.peers``::

    PYTHONPATH=src:.peers python benchmarks/bench_meta_step.py --threads 2 --meta-batch 4 16 --rounds 7

Writes ``benchmarks/results/bench_meta_step.json`` (with the CPU's model and flags); the README's performance
table is generated from it by ``docs/gen_results.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

RESULTS = Path(__file__).resolve().parent / "results"
WAYS, SHOTS, QUERIES, SIZE, INNER_LR = 5, 1, 15, 28, 0.4
VARIANTS = ["learn2learn", "higher", "torch-loop", "attnmeta", "attnmeta-loop", "attnmeta-threads",
            "attnmeta-bf16", "attnmeta-bf16-threads"]
STRATEGIES = ("loop", "accumulate", "threads", "vmap")


def conv4(norm: str) -> nn.Module:
    """Conv-4-64 with a 5-way head: the library backbone (``norm="meta"``) or the peers' op-by-op network
    (conv -> torch BN -> ReLU -> max-pool, NCHW). Both draw the same initial weights after the same seed."""
    from attnmeta.nn.backbones import Conv4

    if norm == "meta":
        return Conv4((1, SIZE, SIZE), 64, out_features=WAYS)
    model = Conv4((1, SIZE, SIZE), 64, out_features=WAYS, norm="fused")
    for block in model.blocks:
        block.fast = False
    return model


def make_batch(meta_batch: int, device: str, dtype: torch.dtype = torch.float32):
    from attnmeta.tasks.episode import TaskBatch

    g = torch.Generator().manual_seed(0)
    sy = torch.arange(WAYS).repeat_interleave(SHOTS).repeat(meta_batch, 1)
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).repeat(meta_batch, 1)
    return TaskBatch(torch.rand(meta_batch, WAYS * SHOTS, 1, SIZE, SIZE, generator=g), sy,
                     torch.rand(meta_batch, WAYS * QUERIES, 1, SIZE, SIZE, generator=g), qy,
                     torch.arange(WAYS).repeat(meta_batch, 1)).to(device, dtype)


def meta_backward(variant: str, meta_batch: int, device: str,
                  dtype: torch.dtype = torch.float32) -> tuple[Callable[[], None], nn.Module]:
    """``(backward(), module)``: ``backward()`` computes one meta-batch's meta-gradient into ``.grad``
    (zeroed first) of ``module``'s parameters."""
    ce = nn.functional.cross_entropy
    batch = make_batch(meta_batch, device, dtype)
    torch.manual_seed(0)
    if variant == "torch-loop":
        model = conv4("fused").to(device, dtype)
        params = dict(model.named_parameters())

        def backward() -> None:
            model.zero_grad()
            total = 0.0
            for t in range(meta_batch):
                loss = ce(functional_call(model, params, (batch.support_x[t],)), batch.support_y[t])
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
                fast = {n: p - INNER_LR * g for (n, p), g in zip(params.items(), grads)}
                total = total + ce(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
            (total / meta_batch).backward()
        return backward, model
    if variant == "higher":
        import higher

        model = conv4("fused").to(device, dtype)
        inner = torch.optim.SGD(model.parameters(), lr=INNER_LR)

        def backward() -> None:
            model.zero_grad()
            for t in range(meta_batch):
                with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                    diffopt.step(ce(fmodel(batch.support_x[t]), batch.support_y[t]))
                    (ce(fmodel(batch.query_x[t]), batch.query_y[t]) / meta_batch).backward()
        return backward, model
    if variant == "learn2learn":
        model = conv4("fused").to(device, dtype)
        maml = learn2learn_maml()(model, lr=INNER_LR, first_order=False)

        def backward() -> None:
            maml.zero_grad()
            for t in range(meta_batch):
                learner = maml.clone()
                learner.adapt(ce(learner(batch.support_x[t]), batch.support_y[t]))
                (ce(learner(batch.query_x[t]), batch.query_y[t]) / meta_batch).backward()
        return backward, maml
    return attnmeta_backward(variant, batch, device, dtype)


def attnmeta_backward(variant: str, batch, device: str,
                      dtype: torch.dtype) -> tuple[Callable[[], None], nn.Module]:
    from attnmeta.learners.maml import MAML

    parts = variant.split("-")
    unknown = set(parts[1:]) - {*STRATEGIES, "bf16", "1st", "ref"}
    if parts[0] != "attnmeta" or unknown:
        raise SystemExit(f"unknown variant {variant!r}: attnmeta[-{'|'.join(STRATEGIES)}][-bf16][-1st][-ref]"
                         f", {', '.join(VARIANTS[:3])}")
    model = conv4("meta")
    if "ref" in parts:
        for block in model.blocks:
            block.fast = False
    learner = MAML(model, "classification", ways=WAYS, inner_lr=INNER_LR, inner_steps=1,
                   first_order="1st" in parts, strategy=next((s for s in STRATEGIES if s in parts), "auto"),
                   precision="bf16" if "bf16" in parts else "fp32").to(device, dtype)

    def backward() -> None:
        learner.zero_grad()
        learner.meta_loss(batch).loss.backward()
    return backward, learner


def step_fn(variant: str, meta_batch: int, device: str) -> tuple[Callable[[], None], nn.Module]:
    """``(step(), module)``: one full meta-step (meta-gradient and Adam step)."""
    backward, module = meta_backward(variant, meta_batch, device)
    opt = torch.optim.Adam(module.parameters(), 1e-3)

    def step() -> None:
        backward()
        opt.step()
    return step, module


def learn2learn_maml() -> type:
    """learn2learn's ``MAML``: from the installed package, else from the unmodified pure-Python sources that
    ``fetch_peers.py`` copies (without ``__init__.py``, so the compiled data modules are never imported)."""
    try:
        from learn2learn.algorithms import MAML
    except ImportError:
        from learn2learn.algorithms.maml import MAML
    return MAML


def meta_gradient(variant: str, meta_batch: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    backward, module = meta_backward(variant, meta_batch, device, dtype)
    backward()
    return torch.cat([p.grad.flatten().double() for p in module.parameters() if p.grad is not None])


def gradient_error(variant: str, meta_batch: int, device: str) -> dict:
    """Cosine and max |g - g64| / max |g64| against the float64 ``torch-loop`` meta-gradient (same network
    parameters in the same order, same batch)."""
    reference = meta_gradient("torch-loop", meta_batch, device, torch.float64)
    grad = meta_gradient(variant, meta_batch, device, torch.float32)
    if grad.shape != reference.shape:
        return {"skipped": f"{grad.numel()} gradient entries, reference {reference.numel()}"}
    return {"cosine": nn.functional.cosine_similarity(grad, reference, dim=0).item(),
            "max_rel": ((grad - reference).abs().max() / reference.abs().max()).item()}


class _NoModuleTracking:
    """Stands in for ``FlopCounterMode``'s module tracker, whose backward hooks fail inside
    ``torch.autograd.grad`` over leaf tensors ("A leaf node was passed to _will_engine_execute_node"): the
    total count needs no per-module breakdown."""

    parents = ("Global",)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def count_gflop(variant: str, meta_batch: int, device: str) -> float:
    """GFLOP of one meta-step of ``variant`` (one task counted, times ``meta_batch``)."""
    from torch.utils.flop_counter import FlopCounterMode

    backward, _ = meta_backward(variant, 1, device)
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    with counter:
        backward()
    return counter.get_total_flops() * meta_batch / 1e9


def _status_mib(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":"))) / 1024


def peak_memory(variant: str, meta_batch: int, device: str, steps: int = 2) -> dict:
    """RSS after setup and peak RSS (MiB) over ``steps`` meta-steps, in this (fresh) process. The peak is
    ``VmHWM`` (this process image's high-water mark); ``ru_maxrss`` would carry the parent's RSS at fork."""
    step, _ = step_fn(variant, meta_batch, device)
    setup = _status_mib("VmRSS")
    for _ in range(steps):
        step()
    peak = _status_mib("VmHWM")
    return {"setup_mib": setup, "peak_mib": peak, "over_setup_mib": max(0.0, peak - setup)}


def run_variant(variant: str, steps: int, meta_batch: int, device: str) -> dict:
    """One variant alone (``gpu_check.py``): median seconds per step, GFLOP/s and peak memory."""
    try:
        step, _ = step_fn(variant, meta_batch, device)
    except ImportError as error:
        return {"variant": variant, "skipped": f"not importable: {error}"}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        sync()
        began = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - began)
    seconds = sorted(times)[len(times) // 2]
    flops = count_gflop("attnmeta-loop", meta_batch, device)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"variant": variant, "seconds_per_step": seconds, "all_seconds": times, "gflop_per_step": flops,
            "gflop_per_s": flops / seconds, "peak_mib": peak,
            "grad_gap_vs_float64": gradient_error(variant, meta_batch, device)}


def interleaved_seconds(variants: list[str], rounds: int, meta_batch: int, device: str,
                        timer: Callable[[], float]) -> dict[str, list[float]]:
    steps = {v: step_fn(v, meta_batch, device)[0] for v in variants}
    for step in steps.values():
        step()  # warm-up
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v, step in steps.items():
            began = timer()
            step()
            seconds[v].append(timer() - began)
    return seconds


def cpu_facts() -> dict:
    """The CPU's model name and the flags that matter for these kernels (``/proc/cpuinfo``)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    names = {k.strip(): v.strip() for k, v in lines.items()}
    flags = set(names.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {"cpu": names.get("model name", platform.processor()), "flags": [f for f in wanted if f in flags],
            "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def measure(variants: list[str], meta_batch: int, args: argparse.Namespace) -> list[dict]:
    available = []
    for v in variants:
        try:
            meta_backward(v, 1, args.device)
            available.append(v)
        except ImportError as error:
            print(f"{v}: skipped (not importable: {error}; run benchmarks/fetch_peers.py)", flush=True)
    memory = {}
    for v in available:
        cmd = [sys.executable, __file__, "--memory-of", v, "--meta-batch", str(meta_batch),
               "--threads", str(args.threads), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        memory[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    clock = "cpu" if args.threads == 1 else "wall"
    seconds = interleaved_seconds(available, args.rounds, meta_batch, args.device,
                                  time.process_time if clock == "cpu" else time.perf_counter)
    gflop = count_gflop("attnmeta-loop", meta_batch, args.device)
    base = "learn2learn" if "learn2learn" in available else available[0]
    median = {v: sorted(t)[len(t) // 2] for v, t in seconds.items()}
    rows = []
    for v in available:
        rows.append({"variant": v, "meta_batch": meta_batch, "clock": clock, "seconds": median[v],
                     "all_seconds": seconds[v], "baseline": base, "speedup": median[base] / median[v],
                     "gflop_per_step": gflop, "gflop_per_s": gflop / median[v], **memory[v],
                     "gradient": gradient_error(v, meta_batch, args.device)})
        r = rows[-1]
        grad = r["gradient"]
        print(f"mb {meta_batch:3d} {v:24s} {r['seconds']:7.3f} s {r['speedup']:5.2f}x  "
              f"{r['gflop_per_s']:6.1f} GFLOP/s  +{r['over_setup_mib']:5.0f} MiB  "
              f"cos {grad.get('cosine', float('nan')):.6f} max rel {grad.get('max_rel', float('nan')):.1e}",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--meta-batch", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_meta_step.json")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(peak_memory(args.memory_of, args.meta_batch[0], args.device)))
        return
    rows = [r for mb in args.meta_batch for r in measure(args.variants, mb, args)]
    setting = {"ways": WAYS, "shots": SHOTS, "queries_per_class": QUERIES, "image": SIZE,
               "backbone": "conv4-64", "inner_steps": 1, "inner_lr": INNER_LR, "order": "second",
               "threads": args.threads, "rounds": args.rounds, "device": args.device,
               "torch": torch.__version__, "python": platform.python_version(), **cpu_facts(),
               "load_average_at_end": os.getloadavg(),
               "command": " ".join(["PYTHONPATH=src:.peers python benchmarks/bench_meta_step.py",
                                    *sys.argv[1:]])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setting": setting, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
