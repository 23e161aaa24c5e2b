"""Evaluate a saved MAML Conv-4 at several inner-step counts on the fixed Omniglot test episodes.

The model file is what ``omniglot_time_to_accuracy.py --save-backbone PATH`` writes for ``--algo maml``
(the whole Conv-4 with its head). Example::

    OMP_NUM_THREADS=1 python experiments/omniglot/eval_inner_steps.py maml.pt --train-ways 20 --head-init zero
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from omniglot_time_to_accuracy import load_data, parse_args  # noqa: E402

from attnmeta.data.benchmarks import make_benchmark  # noqa: E402
from attnmeta.eval import evaluate  # noqa: E402
from attnmeta.learners import registry  # noqa: E402
from attnmeta.learners.heads import HEAD_INITS  # noqa: E402
from attnmeta.nn.backbones import build_backbone  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="state dict written by --save-backbone")
    parser.add_argument("--train-ways", type=int, required=True, help="outputs of the saved head")
    parser.add_argument("--head-init", default="learned", choices=HEAD_INITS)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    background, evaluation = load_data(parse_args([]))
    model = build_backbone("conv4", in_shape=(1, 28, 28), hidden=64, norm="fused",
                           out_features=args.train_ways)
    model.load_state_dict(torch.load(args.model, weights_only=True))
    learner = registry.build("maml", model=model, task_type="classification", ways=args.train_ways,
                             inner_lr=args.inner_lr, inner_steps=1, head_init=args.head_init)
    learner.eval()
    for ways in args.ways:
        if ways > args.train_ways:
            print(f"{ways}w1s: skipped (the head has {args.train_ways} outputs)")
            continue
        tasks = make_benchmark("omniglot", data=(background, evaluation), ways=ways, shots=1,
                               queries=15).test.fixed_tasks(args.episodes, seed=0)
        for steps in args.steps:
            learner.eval_inner_steps = steps
            result = evaluate(learner, tasks)
            print(f"{ways}w1s, {steps} inner steps: {result.summary.as_percent()}%", flush=True)


if __name__ == "__main__":
    main()
