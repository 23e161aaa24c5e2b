"""Speed of Conv-4's first block with batch norm folded into the convolution, against the unfolded fast block.

One process, the two paths interleaved step by step (load changes hit both alike): CPU seconds per forward +
backward of a ProtoNets and a Matching Networks 100-way 1-shot 4-query Omniglot episode, and per second-order
MAML meta-step (5-way 1-shot 5-query, meta-batch 4, loop strategy). "unfolded" disables the folding
(``attnmeta.nn.layers.conv3x3_batch_norm``) so batch norm runs as its own module after the convolution.
Prints a table and writes ``benchmarks/results/bench_fold.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_fold.py --rounds 4

Needs the Omniglot archives in ``../shared/data/omniglot`` (or ``--data-pt``, see
``omniglot_data.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from omniglot_data import load_omniglot  # noqa: E402

import attnmeta.nn.layers as layers  # noqa: E402
from attnmeta.data.benchmarks import make_benchmark  # noqa: E402
from attnmeta.learners import registry  # noqa: E402
from attnmeta.nn.backbones import build_backbone  # noqa: E402


def make_step(data, algo: str, ways: int, queries: int, meta_batch: int, **options) -> Callable[[], None]:
    """A closure that runs one forward + backward of ``algo`` on one fixed training batch."""
    train = make_benchmark("omniglot", data=data, ways=ways, shots=1, queries=queries).train
    torch.manual_seed(0)
    head = registry.spec(algo).head
    model = build_backbone("conv4", in_shape=(1, 28, 28), hidden=64, norm="fused",
                           out_features=ways if head else None).to(memory_format=torch.channels_last)
    learner = registry.build(algo, model=model, task_type="classification", ways=ways, **options)
    batch = train.sample_batch(meta_batch)

    def step() -> None:
        learner.meta_loss(batch).loss.backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--data-pt", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_fold.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_omniglot(args.root, args.data_pt)
    cases = {
        "protonet 100w1s4q episode": make_step(data, "protonet", 100, 4, 1),
        "matching 100w1s4q episode": make_step(data, "matching", 100, 4, 1),
        "maml 2nd order 5w1s5q x4": make_step(data, "maml", 5, 5, 4, inner_lr=0.4, inner_steps=1,
                                              strategy="loop"),
    }
    rows = []
    print(f"{'case':28s} | unfolded CPU s | folded CPU s | speed-up")
    for name, step in cases.items():
        step()  # warm-up
        seconds: dict[str, list[float]] = {"unfolded": [], "folded": []}
        for _ in range(args.rounds):
            for path in seconds:
                unfold = mock.patch.object(layers, "_batch_statistics_norm", lambda norm, channels: None)
                with unfold if path == "unfolded" else contextlib.nullcontext():
                    start = time.process_time()
                    step()
                    seconds[path].append(time.process_time() - start)
        unfolded, folded = (statistics.median(seconds[p]) for p in ("unfolded", "folded"))
        rows.append({"case": name, "unfolded_cpu_s": unfolded, "folded_cpu_s": folded,
                     "speedup": unfolded / folded, "all": seconds})
        print(f"{name:28s} | {unfolded:14.3f} | {folded:12.3f} | {unfolded / folded:.2f}x", flush=True)
    Path(args.out).write_text(json.dumps({"rounds": args.rounds, "rows": rows,
                                          "torch": torch.__version__}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
