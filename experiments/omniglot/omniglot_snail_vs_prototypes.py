"""Where does a trained SNAIL lose to nearest-prototype on its own embedding? Omniglot 5-way 1-shot.

Loads a SNAIL state dict written by ``omniglot_time_to_accuracy.py --save-learner`` and scores every query
two ways on the same embeddings: SNAIL's sequence model and the nearest-prototype classifier (Prototypical
Networks, ``distance="l2"``) of its Conv-4. It reports both, how often each is right where the other is
wrong, and a third classifier, the largest inner product with a prototype of the embeddings SNAIL reads
(``standardize_by_support``; what one attention read computes without SNAIL's ``norm_input``), on

- ``test``: the 600 fixed test episodes of the benchmark's final figures (evaluation alphabets);
- ``source``: episodes of the characters SNAIL trained on, with the run's augmentation (pass the run's own
  ``--alphabet-fold`` / ``--heldout-fold`` / ``--mirror-only`` / ``--shift-pixels`` / ``--affine``
  arguments: every argument this script does not take goes to the benchmark's parser);
- ``source, no augmentation``: the same characters unaugmented.

and, with ``--affine-levels``, nearest-prototype alone on the training source under each ``RandomAffine``
level (after the run's ``--shift-pixels``): how hard the sequence model's training tasks are next to the
test tasks. On Omniglot it showed SNAIL tying nearest-prototype on its training characters and losing
to it on new alphabets, even when trained on jittered tasks where it beats nearest-prototype, near the
accuracy of the inner-product classifier; with ``norm_input`` SNAIL can compare by distance and comes
closer to nearest-prototype (README, the mirror-image SNAIL rows).

Example::

    OMP_NUM_THREADS=1 python experiments/omniglot/omniglot_snail_vs_prototypes.py snail.pt \\
        --data-pt omniglot.pt \\
        --learner-options '{"shots": 1, "filters": 32, "attention_sizes": [[32, 16], [64, 32], [128, 64]]}' \\
        --mirror-only --shift-pixels 2 --affine-levels "none;10,0.1,10,0" --name snail_vs_prototypes
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parents[1] / "src"))

import omniglot_time_to_accuracy as bench  # noqa: E402

from attnmeta.data.benchmarks import make_benchmark  # noqa: E402
from attnmeta.learners import registry  # noqa: E402
from attnmeta.learners.matching import embed_episodes  # noqa: E402
from attnmeta.learners.protonet import METRIC_LOGITS, prototypes  # noqa: E402
from attnmeta.learners.snail import SNAIL, standardize_by_support  # noqa: E402
from attnmeta.nn.backbones import build_backbone  # noqa: E402
from attnmeta.tasks import TaskBatch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """This script's own arguments, and the benchmark's (every other argument) describing the run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("learner", help="SNAIL state dict (omniglot_time_to_accuracy.py --save-learner)")
    p.add_argument("--test-episodes", type=int, default=600)
    p.add_argument("--source-episodes", type=int, default=400, help="training-source episodes per figure")
    p.add_argument("--affine-levels", default="",
                   help="';'-separated RandomAffine levels DEG,SCALE,SHEAR,PIXELS (or 'none') at which to "
                        "score nearest-prototype on the training source")
    p.add_argument("--name", default="omniglot_snail_vs_prototypes")
    own, rest = p.parse_known_args(argv)
    return own, bench.parse_args(rest)


def agreement(model: torch.nn.Module, learner: SNAIL | None, episodes: Iterable[TaskBatch]) -> dict:
    """Accuracy (%) of SNAIL, of nearest-prototype (``l2``) and of the largest inner product with a
    prototype of the support-standardised embeddings, on the same embeddings of ``episodes``, and the share
    of queries only one of the first two gets right; ``learner=None``: the other two only."""
    right = {"snail": 0, "prototypes": 0, "both": 0, "inner_product": 0}
    total = 0
    for batch in episodes:
        with torch.no_grad():
            support, query = embed_episodes(model, batch.support_x, batch.query_x)
            nearest = METRIC_LOGITS["l2"](query, prototypes(support, batch.support_y, batch.ways))
            prototype_ok = nearest.argmax(-1) == batch.query_y
            standard_support, standard_query = standardize_by_support(support, query)
            inner = standard_query @ prototypes(standard_support, batch.support_y, batch.ways).transpose(1, 2)
            snail_ok = prototype_ok if learner is None else (
                learner.sequence_logits(support, batch.support_y, query).argmax(-1) == batch.query_y)
        right["snail"] += int(snail_ok.sum())
        right["prototypes"] += int(prototype_ok.sum())
        right["both"] += int((snail_ok & prototype_ok).sum())
        right["inner_product"] += int((inner.argmax(-1) == batch.query_y).sum())
        total += batch.query_y.numel()
    out = {key: round(100 * value / total, 2) for key, value in right.items()}
    out.update(snail_only=round(out["snail"] - out["both"], 2),
               prototypes_only=round(out["prototypes"] - out["both"], 2), queries=total)
    if learner is None:
        out.update(snail=None, snail_only=None, prototypes_only=None)
    return out


def main(argv: list[str] | None = None) -> dict:
    own, run = parse_args(argv)
    torch.set_num_threads(1)
    background, evaluation = bench.load_data(run)
    source = bench.training_characters(run, background)
    model = build_backbone("conv4", in_shape=(1, 28, 28), hidden=run.hidden, norm=run.norm, pool_last=True)
    options = json.loads(run.learner_options)
    learner = registry.build("snail", model=model, task_type="classification", ways=5, **options)
    try:
        learner.load_state_dict(torch.load(own.learner, weights_only=True))
    except RuntimeError as error:
        raise SystemExit(f"{own.learner} does not fit SNAIL with --learner-options {run.learner_options} "
                         f"(give the run's own options): {str(error).splitlines()[0]}") from None
    learner.eval()

    test = make_benchmark("omniglot", data=(source, evaluation), ways=5, shots=1, queries=15,
                          train_ways=2, train_queries=1).test.fixed_tasks(own.test_episodes, seed=0)
    report = {"name": own.name, "learner": own.learner, "run_args": vars(run), "figures": {}}
    figures = report["figures"]
    figures["test"] = agreement(model, learner, (TaskBatch.stack([task]) for task in test))

    def source_episodes(**changes) -> Iterator[TaskBatch]:
        changed = argparse.Namespace(**{**vars(run), **changes})
        sampler = bench.augmented_sampler(changed, source, evaluation, 5, 1, 15, seed=run.seed + 7)
        return (sampler.sample_batch(1) for _ in range(own.source_episodes))

    figures["source"] = agreement(model, learner, source_episodes())
    unaugmented = source_episodes(shift_pixels=0, affine=None)
    figures["source, no augmentation"] = agreement(model, learner, unaugmented)
    for level in filter(None, own.affine_levels.split(";")):
        affine = None if level == "none" else bench.parse_affine(level)
        figures[f"source, affine {level}, prototypes only"] = agreement(model, None,
                                                                       source_episodes(affine=affine))

    def shown(value: float | None, width: int) -> str:
        return f"{value:{width}.2f}" if value is not None else " " * (width - 1) + "-"

    print(f"{'episodes':44s} | SNAIL | prototypes | SNAIL only | prototypes only | inner product")
    for key, f in figures.items():
        print(f"{key:44s} | {shown(f['snail'], 5)} | {f['prototypes']:10.2f} | "
              f"{shown(f['snail_only'], 10)} | {shown(f['prototypes_only'], 15)} | "
              f"{f['inner_product']:13.2f}")
    out = Path(run.out_dir) / f"{own.name}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
