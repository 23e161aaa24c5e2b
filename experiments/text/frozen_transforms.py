"""Training-free transforms of frozen all-MiniLM-L6-v2 embeddings on CLINC150's held-out domains: does
anything computed from the training domains beat the plain nearest centroid?

Nearest centroid (cosine) on the raw embeddings, centred by the training domains' mean embedding (SimpleShot's
CL2N), whitened (ZCA on the top-k principal directions of the training embeddings), and closed-form ridge
regression onto the support labels (R2D2's head, raw and centred), on the fixed test episodes of
``attnmeta eval`` (seed 0): 5-way 1-shot and 5-shot (600 episodes), 45-way 10-shot (200).

    OMP_NUM_THREADS=1 python experiments/text/frozen_transforms.py --root ../shared/data/text/clinc150 \
        --cache-dir /tmp/attnmeta-sentence-cache

Needs the extra 'text'. Writes ``experiments/text/results/frozen_transforms.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from attnmeta.data.benchmarks import make_benchmark  # noqa: E402
from attnmeta.nn.sentence import SentenceEncoder  # noqa: E402

Tensor = torch.Tensor


def nearest_centroid(s: Tensor, sy: Tensor, q: Tensor, ways: int) -> Tensor:
    protos = torch.stack([s[sy == c].mean(0) for c in range(ways)])
    return F.normalize(q, dim=-1) @ F.normalize(protos, dim=-1).T


def ridge(lam: float) -> Callable[[Tensor, Tensor, Tensor, int], Tensor]:
    def classify(s: Tensor, sy: Tensor, q: Tensor, ways: int) -> Tensor:
        y = F.one_hot(sy, ways).float()
        w = s.T @ torch.linalg.solve(s @ s.T + lam * torch.eye(len(s)), y)
        return q @ w
    return classify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "text" / "clinc150"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "text" / "results" /
                                             "frozen_transforms.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = SentenceEncoder(adapter="none", cache_dir=args.cache_dir)
    train = make_benchmark("clinc150", root=args.root, ways=5, shots=1, queries=10, inputs="utf8").train
    base = encoder(train.data)  # [n, 384]: every utterance of the training domains
    mean = base.mean(0)
    evals, evecs = torch.linalg.eigh((base - mean).T @ (base - mean) / len(base))

    def whiten(k: int) -> Callable[[Tensor], Tensor]:
        w = evecs[:, -k:] / (evals[-k:] + 1e-3).sqrt()
        return lambda e: (e - mean) @ w

    methods: dict[str, tuple[Callable[[Tensor], Tensor], Callable]] = {
        "nearest centroid": (lambda e: e, nearest_centroid),
        "nearest centroid, centred (CL2N)": (lambda e: F.normalize(e - mean, dim=-1), nearest_centroid),
        "nearest centroid, whitened (top 64)": (whiten(64), nearest_centroid),
        "nearest centroid, whitened (all 384)": (whiten(384), nearest_centroid),
        "ridge (lambda 1)": (lambda e: e, ridge(1.0)),
        "ridge (lambda 1), centred": (lambda e: F.normalize(e - mean, dim=-1), ridge(1.0)),
    }
    rows = []
    for ways, shots, episodes in ((5, 1, 600), (5, 5, 600), (45, 10, 200)):
        bench = make_benchmark("clinc150", root=args.root, ways=ways, shots=shots, queries=10, train_ways=5,
                               val_ways=5, inputs="utf8")
        tasks = [(encoder(t.support_x), t.support_y, encoder(t.query_x), t.query_y)
                 for t in bench.test.fixed_tasks(episodes, seed=0)]
        for name, (transform, classify) in methods.items():
            accs = torch.tensor([(classify(transform(s), sy, transform(q), ways).argmax(1) == qy)
                                 .float().mean() for s, sy, q, qy in tasks])
            mean_acc, ci95 = accs.mean().item(), 1.96 * accs.std().item() / len(accs) ** 0.5
            rows.append({"ways": ways, "shots": shots, "episodes": episodes, "method": name,
                         "accuracy": mean_acc, "ci95": ci95})
            print(f"{ways}-way {shots}-shot {name}: {100 * mean_acc:.2f} +/- {100 * ci95:.2f}", flush=True)
    Path(args.out).write_text(json.dumps({"model": encoder.model_name, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
