"""How good is a trained Conv-4 as a nearest-prototype classifier? Omniglot 5w1s / 20w1s test.

Loads a Conv-4 state dict written by ``omniglot_time_to_accuracy.py --save-backbone`` (from any learner:
ProtoNets, SNAIL, MAML's body) and evaluates Prototypical Networks on it, unchanged, on the same 600 fixed
test episodes as that benchmark's final figures. For SNAIL with ``prototype_residual=True`` this is the
prototype path alone, so comparing it with the run's final figure shows what the sequence model adds.

Example::

    OMP_NUM_THREADS=1 python experiments/omniglot/omniglot_embedding_protonet.py backbone.pt \
        --data-pt omniglot.pt --name omniglot_snail_residual_embedding
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parents[1] / "src"))

from omniglot_time_to_accuracy import load_data  # noqa: E402

from attnmeta.data.benchmarks import make_benchmark  # noqa: E402
from attnmeta.eval import evaluate  # noqa: E402
from attnmeta.learners.protonet import DISTANCES, PrototypicalNetworks  # noqa: E402
from attnmeta.nn.backbones import build_backbone  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("backbone", help="Conv-4 state dict (omniglot_time_to_accuracy.py --save-backbone)")
    p.add_argument("--root", default=str(ROOT.parents[2] / "shared" / "data" / "omniglot"))
    p.add_argument("--data-pt", default=None, help="pre-decoded tensors (omniglot_time_to_accuracy.py "
                                                   "--export-data)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--no-pool-last", dest="pool_last", action="store_false",
                   help="the Conv-4 was trained without its fourth max-pool")
    p.add_argument("--distance", choices=DISTANCES[:2], default="l2")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--name", default="omniglot_embedding_protonet")
    p.add_argument("--out-dir", default=str(ROOT / "results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    background, evaluation = load_data(args)
    model = build_backbone("conv4", in_shape=(1, 28, 28), hidden=args.hidden, norm="fused",
                           pool_last=args.pool_last)
    try:
        model.load_state_dict(torch.load(args.backbone, weights_only=True))
    except RuntimeError as error:
        raise SystemExit(f"{args.backbone} does not fit a Conv-4 with hidden={args.hidden} (check --hidden); "
                         f"{error}") from None
    learner = PrototypicalNetworks(model, distance=args.distance)
    final = {}
    for ways in (5, 20):
        episodes = make_benchmark("omniglot", data=(background, evaluation), ways=ways, shots=1,
                                  queries=15).test.fixed_tasks(args.episodes, seed=0)
        result = evaluate(learner, episodes)
        final[f"{ways}w1s"] = {"accuracy": result.mean, "ci95": result.ci95, "n": result.summary.n}
        print(f"{ways}-way 1-shot: {100 * result.mean:.2f} +/- {100 * result.ci95:.2f}% "
              f"({result.summary.n} episodes)", flush=True)
    report = {"name": args.name, "args": vars(args), "final": final}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
