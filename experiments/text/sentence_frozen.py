"""Frozen all-MiniLM-L6-v2 + nearest centroid (cosine prototypes, no training) on CLINC150's held-out
domains: accuracy on the fixed test episodes that ``attnmeta eval`` uses (600, seed 0, the same episodes as
the lexical runs: the utf8 inputs index the same utterances) and OOS detection (``attnmeta.eval.oos``).

    OMP_NUM_THREADS=1 python experiments/text/sentence_frozen.py --root ../shared/data/text/clinc150 \
        --cache-dir /tmp/attnmeta-sentence-cache

Needs the extra 'text'. Writes ``experiments/text/results/sentence_frozen.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import attnmeta.learners as learners  # noqa: E402
from attnmeta.data.benchmarks import make_benchmark  # noqa: E402
from attnmeta.eval import evaluate  # noqa: E402
from attnmeta.eval.oos import clinc150_oos_texts, evaluate_oos, text_inputs  # noqa: E402
from attnmeta.nn.sentence import SentenceEncoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "text" / "clinc150"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--ways", type=int, default=5, help="45: every intent of the held-out domains")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--recall", type=float, default=0.9)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "text" / "results" /
                                             "sentence_frozen.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = SentenceEncoder(adapter="none", cache_dir=args.cache_dir)
    protonet = learners.build("protonet", model=encoder, task_type="classification", distance="cosine")
    rows = []
    for shots in args.shots:
        bench = make_benchmark("clinc150", root=args.root, ways=args.ways, shots=shots, queries=args.queries,
                               train_ways=5, val_ways=5, inputs="utf8")  # only the test split is used
        episodes = bench.test.fixed_tasks(args.episodes, seed=0)
        start = time.process_time()
        result = evaluate(protonet, episodes)
        oos_inputs = text_inputs(clinc150_oos_texts(args.root), bench.preprocessing)
        oos = evaluate_oos(protonet, episodes, oos_inputs, recall=args.recall, seed=0)
        rows.append({"ways": args.ways, "shots": shots, "queries": args.queries, "episodes": args.episodes,
                     "accuracy": result.summary.mean, "ci95": result.summary.ci95, "oos": oos.to_dict(),
                     "cpu_seconds": time.process_time() - start, "encoded_texts": encoder.encoded_texts})
        print(f"5-way {shots}-shot: {100 * result.summary.mean:.2f} +/- {100 * result.summary.ci95:.2f}%")
        print(oos.table())
    Path(args.out).write_text(json.dumps({"model": encoder.model_name, "learner": "protonet cosine, "
                                          "frozen encoder, no adapter, no training", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
