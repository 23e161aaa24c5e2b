"""bf16 vs fp32 MAML on the sinusoid benchmark (issue 3): same seed, same tasks, short run.

MAML sinusoid setting (``sinusoid_maml.py``: 1-40-40-1 MLP, K=10, 1 inner step, alpha 0.01, meta-batch 25,
Adam 1e-3), ``precision="fp32"`` and ``precision="bf16"`` (autocast), then 600 fixed test tasks at K=5 and
K=10 after 1 inner step: MSE +/- 95% CI and CPU seconds per meta-step.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/sinusoid/bf16_sinusoid.py --steps 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sinusoid_maml import evaluate_sinusoid, make_learner, meta_train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--learner", default="maml")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)  # "bf16 is emulated on this CPU" (measured below)
    rows = []
    for precision in ("fp32", "bf16"):
        learner = make_learner(args.learner, strategy="loop", precision=precision)
        began = time.process_time()
        meta_train(learner, args.steps)
        cpu = time.process_time() - began
        row = {"precision": precision, "meta_steps": args.steps, "cpu_s_per_meta_step": cpu / args.steps}
        for shots in (5, 10):
            row[f"k{shots}_steps1"] = evaluate_sinusoid(learner, shots, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for row in rows:
        cells = "  ".join(f"K={k}: {row[f'k{k}_steps1']['mse']:.3f} +/- {row[f'k{k}_steps1']['ci95']:.3f}"
                          for k in (5, 10))
        print(f"{row['precision']}  {cells}  {row['cpu_s_per_meta_step'] * 1e3:.1f} CPU-ms/step")
    out = RESULTS / f"bf16_sinusoid_{args.learner}.json"
    out.write_text(json.dumps({"steps": args.steps, "learner": args.learner, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
