"""CPU time per training step with glibc's default allocator vs ``attnmeta.train.memory.retain_freed_memory``.

Each (learner, allocator) pair runs in its own subprocess (the setting is process-wide), alternating, for
``--repeats`` rounds; a subprocess times ``--steps`` steps after ``--warmup`` and reports the median CPU
seconds per step and the minor page faults per step. Prints a table and writes
``benchmarks/results/bench_allocator.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_allocator.py --data-pt omniglot.pt

Steps: ProtoNets ``distance="l2"`` on 200-way 1-shot 2-query episodes; second-order MAML (shared head, one
inner step of 0.4) on 2 tasks of 20-way 1-shot 2-query; Conv-4 with the fused batch norm, one thread, as in
``omniglot_time_to_accuracy.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEARNERS = ("protonet", "maml")


def measure(args: argparse.Namespace) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    torch.set_num_threads(1)
    from attnmeta.train.memory import retain_freed_memory

    applied = retain_freed_memory() if args.retain else False
    from omniglot_data import load_omniglot

    from attnmeta.data.benchmarks import make_benchmark
    from attnmeta.learners import registry
    from attnmeta.nn.backbones import build_backbone

    data = load_omniglot(data_pt=args.data_pt)
    torch.manual_seed(0)
    if args.learner == "protonet":
        ways, meta_batch, options = 200, 1, {"distance": "l2"}
    else:
        ways, meta_batch = 20, 2
        options = {"inner_lr": 0.4, "inner_steps": 1, "head_init": "shared"}
    train = make_benchmark("omniglot", data=data, ways=ways, shots=1, queries=2).train
    model = build_backbone("conv4", in_shape=(1, 28, 28), norm="fused",
                           out_features=ways if args.learner == "maml" else None)
    learner = registry.build(args.learner, model=model.to(memory_format=torch.channels_last),
                             task_type="classification", ways=ways, **options)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    seconds, faults = [], []
    for step in range(args.warmup + args.steps):
        batch = train.sample_batch(meta_batch)
        cpu0, faults0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        loss = learner.meta_loss(batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            seconds.append(time.process_time() - cpu0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)
    return {"learner": args.learner, "retain": args.retain, "applied": applied,
            "median_step_s": statistics.median(seconds), "median_faults": statistics.median(faults)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-pt", default=None,
                   help="tensors written by omniglot_time_to_accuracy.py --export-data")
    p.add_argument("--learners", default=",".join(LEARNERS))
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_allocator.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--learner", default="protonet", help=argparse.SUPPRESS)
    p.add_argument("--retain", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    rows = []
    for learner in args.learners.split(","):
        for _ in range(args.repeats):
            for retain in (False, True):
                command = [sys.executable, __file__, "--child", "--learner", learner,
                           "--steps", str(args.steps), "--warmup", str(args.warmup),
                           *(["--retain"] if retain else []),
                           *(["--data-pt", args.data_pt] if args.data_pt else [])]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'learner':>9} | {'allocator':>9} | {'CPU s/step':>10} | {'faults/step':>11} | speed-up")
    summary = {}
    for learner in args.learners.split(","):
        default = statistics.median(r["median_step_s"] for r in rows if r["learner"] == learner
                                    and not r["retain"])
        for retain in (False, True):
            picked = [r for r in rows if r["learner"] == learner and r["retain"] == retain]
            step = statistics.median(r["median_step_s"] for r in picked)
            faults = statistics.median(r["median_faults"] for r in picked)
            summary[f"{learner}_{'retain' if retain else 'default'}"] = {"step_s": step, "faults": faults,
                                                                          "speedup": default / step}
            print(f"{learner:>9} | {'retain' if retain else 'default':>9} | {step:10.3f} | {faults:11.0f} | "
                  f"{default / step:.2f}x")
    Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary, "args": vars(args),
                                          "machine": platform.platform()}, indent=1))


if __name__ == "__main__":
    main()
