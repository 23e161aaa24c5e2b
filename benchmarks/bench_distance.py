"""CPU time of Prototypical Networks' distances: the direct ``(q - p)^2`` against the matrix-product form.

``attnmeta.learners.protonet.squared_euclidean_logits`` computes ``||q||^2 + ||p||^2 - 2 q.p`` (one matrix
product) on embeddings centred on the prototypes' mean; before 2026-11-28 it built the ``[n_query, ways, D]``
difference tensor. Two measurements, alternating the two forms in each of ``--repeats`` rounds, median CPU
seconds of ``--steps`` timed calls after ``--warmup``, one thread:

- the logits alone, forward and backward, at a 200-way 1-shot 2-query Omniglot episode's size (400 queries,
  200 prototypes) for 64-d (Conv-4) and 576-d (Conv-4 without its last pool) embeddings;
- a whole training step of ProtoNets ``distance="l2"`` on 200-way 1-shot 2-query episodes, Conv-4 without
  its last pool, retained allocator, as ``omniglot_time_to_accuracy.py --no-pool-last`` trains it (needs
  the Omniglot data: ``--data-pt`` or ``--root``).

    OMP_NUM_THREADS=1 python benchmarks/bench_distance.py --data-pt omniglot.pt

Prints a table and writes ``benchmarks/results/bench_distance.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import attnmeta.learners.protonet as protonet  # noqa: E402

MATRIX_PRODUCT = protonet.squared_euclidean_logits


def direct(query_embeddings: torch.Tensor, class_prototypes: torch.Tensor) -> torch.Tensor:
    """The earlier form: ``-((q - p)^2).sum(-1)`` through an ``[..., n_query, ways, D]`` tensor."""
    return -(query_embeddings.unsqueeze(-2) - class_prototypes.unsqueeze(-3)).pow(2).sum(-1)


FORMS = {"direct": direct, "matrix product": MATRIX_PRODUCT}


def median_seconds(run, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(steps):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return statistics.median(times)


def logits_call(dim: int):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(400, dim, generator=generator).relu().requires_grad_()
    protos = torch.randn(200, dim, generator=generator).relu().requires_grad_()

    def run():
        protonet.euclidean_logits(queries, protos).sum().backward()

    return run


def training_step(args: argparse.Namespace):
    from omniglot_data import load_omniglot

    from attnmeta.data.benchmarks import make_benchmark
    from attnmeta.learners import registry
    from attnmeta.nn.backbones import build_backbone
    from attnmeta.train.memory import retain_freed_memory

    retain_freed_memory()
    data = load_omniglot(args.root, args.data_pt)
    torch.manual_seed(0)
    train = make_benchmark("omniglot", data=data, ways=200, shots=1, queries=2).train
    model = build_backbone("conv4", in_shape=(1, 28, 28), norm="fused", pool_last=False)
    learner = registry.build("protonet", model=model.to(memory_format=torch.channels_last),
                             task_type="classification", distance="l2")
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    batch = train.sample_batch(1)  # one fixed episode: the step's cost does not depend on its content

    def run():
        out = learner.meta_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return run


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-pt", default=None, help="decoded tensors (see omniglot_data.py)")
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_distance.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    cases = {"logits 400x200, D=64": logits_call(64), "logits 400x200, D=576": logits_call(576),
             "ProtoNets 200w1s2q step, unpooled Conv-4": training_step(args)}
    results = {case: {form: [] for form in FORMS} for case in cases}
    for _ in range(args.repeats):
        for case, run in cases.items():
            for form, function in FORMS.items():
                protonet.squared_euclidean_logits = function  # euclidean_logits looks it up at call time
                results[case][form].append(median_seconds(run, args.warmup, args.steps))
    protonet.squared_euclidean_logits = MATRIX_PRODUCT
    rows = []
    print(f"{'case':44s} {'direct (ms)':>12s} {'matrix product (ms)':>20s} {'speed-up':>9s}")
    for case, by_form in results.items():
        old, new = statistics.median(by_form["direct"]), statistics.median(by_form["matrix product"])
        rows.append({"case": case, "direct_s": old, "matrix_product_s": new, "speedup": old / new,
                     "rounds": by_form})
        print(f"{case:44s} {1e3 * old:12.2f} {1e3 * new:20.2f} {old / new:8.2f}x")
    report = {"rows": rows, "args": vars(args), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
