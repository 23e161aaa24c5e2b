"""Compare meta-learners on identical episodes: "which algorithm should I choose?".

``compare("omniglot", ["protonet", "matching", "snail"], ways=5, shots=1, root=...)`` trains each learner
(or loads it from a run folder written by ``attnmeta train``), evaluates all of them on the **same** fixed
test episodes (``attnmeta.eval.evaluate``) and returns / prints one table: accuracy +/- 95% CI, training
time (wall and process CPU seconds), adaptation time per task, peak memory; it can also write a JSON file
and a PNG bar chart.

Training here is a small self-contained loop (Adam on ``learner.meta_loss(source.sample_batch(T)).loss``)
with a budget per algorithm: ``steps`` and/or ``budget_seconds`` (process CPU seconds, so that a loaded
machine does not shorten the training). The full trainer (``attnmeta train``) is used through ``run_dirs``.

Peak memory is the peak resident set size of this process while the algorithm trained and was evaluated,
minus the resident size before it started (sampled every 10 ms from ``/proc/self/statm``; on CUDA,
``torch.cuda.max_memory_allocated``). Command line: ``attnmeta compare omniglot --algos protonet,matching
--ways 5 --shots 1 --root ../shared/data/omniglot --steps 200`` (see ``main``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnmeta import learners
from attnmeta.eval import evaluate
from attnmeta.learners.base import Learner

__all__ = ["CompareRow", "CompareResult", "compare", "train_learner", "build_for", "PeakMemory", "main"]


# ---------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the (monotonic) peak RSS of the process
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager: peak resident memory above the starting level, in MiB (``.peak_mib``).

    Samples the process RSS every ``interval`` seconds in a thread (CPU); on CUDA, also reports
    ``torch.cuda.max_memory_allocated`` (``.cuda_peak_mib``).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_mib = 0.0
        self.cuda_peak_mib: float | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self._start = _rss_bytes()
        self._peak = self._start
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_mib = (self._peak - self._start) / 2 ** 20
        if torch.cuda.is_available():
            self.cuda_peak_mib = torch.cuda.max_memory_allocated() / 2 ** 20


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------
@dataclass
class CompareRow:
    """One algorithm's line of the comparison table (accuracy as a fraction, times in seconds)."""

    algo: str
    accuracy: float
    ci95: float
    episodes: int
    train_steps: int
    train_wall_s: float
    train_cpu_s: float
    adapt_s_per_task: float
    peak_memory_mib: float
    source: str
    per_episode: list[float] = field(default_factory=list, repr=False)


@dataclass
class CompareResult:
    rows: list[CompareRow]
    settings: dict[str, Any]

    def table(self) -> str:
        """Plain-text table, one line per algorithm."""
        header = (f"{'algo':<20} {'accuracy %':>16} {'steps':>7} {'train wall s':>12} {'train cpu s':>11} "
                  f"{'adapt ms/task':>13} {'peak MiB':>9}")
        lines = [header, "-" * len(header)]
        for r in self.rows:
            lines.append(f"{r.algo:<20} {100 * r.accuracy:>8.2f} +/- {100 * r.ci95:<4.2f} {r.train_steps:>7} "
                         f"{r.train_wall_s:>12.1f} {r.train_cpu_s:>11.1f} {1000 * r.adapt_s_per_task:>13.1f} "
                         f"{r.peak_memory_mib:>9.1f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "rows": [asdict(r) for r in self.rows]}

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def plot(self, path: str | Path) -> Path:
        """Bar chart of accuracy (with 95% CI) and training CPU time per algorithm, saved as PNG."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("the comparison chart needs matplotlib: pip install 'attnmeta[plots]'") \
                from error
        names = [r.algo for r in self.rows]
        fig, (left, right) = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(names) + 3), 3.6))
        left.bar(names, [100 * r.accuracy for r in self.rows], yerr=[100 * r.ci95 for r in self.rows],
                 capsize=4, color="tab:blue")
        left.set_ylabel("test accuracy (%)")
        low = min(100 * (r.accuracy - r.ci95) for r in self.rows)
        left.set_ylim(max(0.0, low - 5), 100)
        right.bar(names, [r.train_cpu_s / 60 for r in self.rows], color="tab:orange")
        right.set_ylabel("training CPU minutes")
        for ax in (left, right):
            ax.tick_params(axis="x", rotation=30)
        title = self.settings.get("benchmark", "")
        fig.suptitle(f"{title} {self.settings.get('ways')}-way {self.settings.get('shots')}-shot, "
                     f"{self.rows[0].episodes if self.rows else 0} identical test episodes")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


# ---------------------------------------------------------------------------------------------------------
# Building and training
# ---------------------------------------------------------------------------------------------------------
def build_for(algo: str, benchmark: Any, ways: int, shots: int, *, backbone: str | None = None,
              backbone_options: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              seed: int = 0) -> Learner:
    """Seeded learner ``algo`` on the benchmark's default backbone (a ``ways`` head if the learner needs one).

    Fills in options the learner cannot guess: ``num_classes`` (transfer baselines: the training sampler's
    class count) and ``shots`` (SNAIL).
    """
    from attnmeta.nn.backbones import build_backbone

    spec = learners.spec(algo)
    options = dict(options or {})
    if algo in ("transfer", "baseline++") and "num_classes" not in options:
        count = getattr(benchmark.train, "num_classes", None)
        if not isinstance(count, int):
            raise ValueError(f"{algo} needs num_classes (training classes) and the benchmark's train source "
                             "does not tell it; pass options={'num_classes': ...}")
        options["num_classes"] = count
    if algo == "snail":
        options.setdefault("shots", shots)
    default = benchmark.default_backbone or {}
    name = backbone or default.get("name")
    if name is None:
        raise ValueError(f"benchmark {benchmark.name!r} has no default backbone; pass backbone='conv4'")
    bb_options = dict(default.get("options") or {}) if name == default.get("name") else {}
    bb_options.update(backbone_options or {})
    torch.manual_seed(seed)
    out = (1 if benchmark.task_type == "regression" else ways) if spec.head else None
    model = build_backbone(name, in_shape=tuple(benchmark.input_shape), out_features=out, **bb_options)
    return learners.build(algo, model=model, task_type=benchmark.task_type, ways=ways, **options)


def train_learner(learner: Learner, source: Any, *, steps: int | None = None,
                  budget_seconds: float | None = None, wall_seconds: float | None = None, meta_batch: int = 4,
                  lr: float = 1e-3, lr_decay_every: int | None = None, seed: int = 0, log_every: int = 0,
                  print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Meta-train ``learner`` with Adam on ``source.sample_batch(meta_batch)``.

    Stops after ``steps`` steps or once ``budget_seconds`` of process CPU time are used, whichever comes
    first (at least one of them must be given); ``wall_seconds`` is an extra wall-clock limit.
    ``lr_decay_every`` halves the learning rate every that many
    steps. Returns ``{"steps", "wall_s", "cpu_s", "last_loss"}``.
    """
    if steps is None and budget_seconds is None:
        raise ValueError("give a training budget: steps=<int> and/or budget_seconds=<CPU seconds>")
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr) if params else None
    generator = torch.Generator().manual_seed(seed)
    learner.train()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    step, last_loss = 0, float("nan")
    while ((steps is None or step < steps)
           and (budget_seconds is None or time.process_time() - cpu0 < budget_seconds)
           and (wall_seconds is None or time.perf_counter() - wall0 < wall_seconds)):
        output = learner.meta_loss(source.sample_batch(meta_batch, generator))
        if optimizer is not None:
            optimizer.zero_grad()
            output.loss.backward()
            optimizer.step()
        step += 1
        last_loss = float(output.loss.detach())
        if lr_decay_every and step % lr_decay_every == 0 and optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
        if log_every and step % log_every == 0:
            metrics = " ".join(f"{k} {v:.4g}" for k, v in output.metrics.items())
            print_fn(f"  step {step:>6}  cpu {time.process_time() - cpu0:8.1f}s  {metrics}")
    return {"steps": step, "wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
            "last_loss": last_loss}


def _load_from_run(run_dir: str | Path) -> tuple[Learner, dict[str, Any]]:
    from attnmeta.train.trainer import build_benchmark, build_learner, final_weights, load_run_config

    config = load_run_config(run_dir)
    learner = build_learner(config, build_benchmark(config))
    learner.load_state_dict(final_weights(run_dir))
    return learner, {"steps": int(getattr(config, "steps", 0) or 0), "wall_s": float("nan"),
                     "cpu_s": float("nan")}


# ---------------------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------------------
def compare(benchmark: str | Any, algos: Sequence[str], *, ways: int = 5, shots: int = 1, queries: int = 15,
            root: str | Path | None = None, steps: int | None = 200, budget_seconds: float | None = None,
            meta_batch: int = 4, lr: float = 1e-3, lr_decay_every: int | None = None, episodes: int = 600,
            eval_seed: int = 0, seed: int = 0, backbone: str | None = None,
            backbone_options: dict[str, Any] | None = None,
            algo_options: dict[str, dict[str, Any]] | None = None,
            run_dirs: dict[str, str | Path] | None = None, benchmark_options: dict[str, Any] | None = None,
            wall_seconds: float | None = None,
            out_dir: str | Path | None = None, plot: bool = True, log_every: int = 0,
            print_fn: Callable[[str], None] | None = print) -> CompareResult:
    """Train (or load) every learner in ``algos`` and evaluate all on the same fixed test episodes.

    Args:
        benchmark: a name for ``attnmeta.data.benchmarks.make_benchmark`` (with ``root``, ``ways``, ``shots``,
            ``queries``, ``benchmark_options``) or an already built ``Benchmark``.
        algos: registered learner names, e.g. ``["protonet", "matching", "snail", "transfer"]``.
        steps / budget_seconds: training budget per algorithm (steps and/or process CPU seconds);
            wall_seconds: an extra wall-clock limit per algorithm.
        meta_batch, lr, lr_decay_every: Adam meta-training settings (shared by all algorithms).
        episodes, eval_seed: the fixed test episodes (``benchmark.test.fixed_tasks(episodes, eval_seed)``).
        backbone / backbone_options: override the benchmark's default backbone.
        algo_options: per-algorithm learner options, e.g. ``{"matching": {"fce": True}}``.
        run_dirs: ``{algo: run folder}`` to load trained learners (``attnmeta train``) instead of training.
        out_dir: where ``compare.json`` and ``compare.png`` go (nothing written when None).

    Returns a ``CompareResult`` (``.rows``, ``.table()``); the table is printed unless ``print_fn`` is None.
    """
    algos = list(algos)
    if not algos:
        raise ValueError("algos is empty; name at least one learner, e.g. algos=['protonet']")
    known = learners.available()
    unknown = [a for a in algos if a not in known and a not in (run_dirs or {})]
    if unknown:
        raise ValueError(f"unknown learner(s) {unknown}; choose from: {', '.join(known)}")
    if len(set(algos)) != len(algos):
        raise ValueError(f"algos lists a learner twice: {algos}")
    say = print_fn or (lambda _line: None)
    if isinstance(benchmark, str):
        from attnmeta.data.benchmarks import make_benchmark

        bench = make_benchmark(benchmark, root=root, ways=ways, shots=shots, queries=queries, seed=seed,
                               **(benchmark_options or {}))
    else:
        bench = benchmark
    episodes_list = bench.test.fixed_tasks(episodes, seed=eval_seed)
    rows: list[CompareRow] = []
    for algo in algos:
        say(f"[{algo}]")
        with PeakMemory() as memory:
            if run_dirs and algo in run_dirs:
                learner, trained = _load_from_run(run_dirs[algo])
                origin = f"run folder {run_dirs[algo]}"
            else:
                learner = build_for(algo, bench, ways, shots, backbone=backbone,
                                    backbone_options=backbone_options, options=(algo_options or {}).get(algo),
                                    seed=seed)
                trained = train_learner(learner, bench.train, steps=steps, budget_seconds=budget_seconds,
                                        wall_seconds=wall_seconds, meta_batch=meta_batch, lr=lr,
                                        lr_decay_every=lr_decay_every, seed=seed, log_every=log_every,
                                        print_fn=say)
                origin = "trained here"
            result = evaluate(learner, episodes_list)
        peak = memory.cuda_peak_mib if memory.cuda_peak_mib is not None else memory.peak_mib
        rows.append(CompareRow(algo, result.mean, result.ci95, len(episodes_list), trained["steps"],
                               trained["wall_s"], trained["cpu_s"], result.seconds_per_task, peak, origin,
                               result.per_episode))
        say(f"  {algo}: {result}")
    settings = {"benchmark": bench.name, "ways": ways, "shots": shots, "queries": queries, "steps": steps,
                "budget_seconds": budget_seconds, "meta_batch": meta_batch, "lr": lr, "episodes": episodes,
                "eval_seed": eval_seed, "seed": seed, "wall_seconds": wall_seconds,
                "backbone": backbone or (bench.default_backbone or {}).get("name"),
                "threads": torch.get_num_threads()}
    outcome = CompareResult(rows, settings)
    say(outcome.table())
    if out_dir is not None:
        outcome.save_json(Path(out_dir) / "compare.json")
        if plot:
            outcome.plot(Path(out_dir) / "compare.png")
    return outcome


def _parse_run_dirs(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in values:
        if "=" not in item:
            raise ValueError(f"--run-dir takes ALGO=FOLDER, got {item!r}")
        algo, folder = item.split("=", 1)
        out[algo] = folder
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``attnmeta compare BENCHMARK --algos a,b,c [--ways 5 --shots 1 --steps 200 ...]``."""
    parser = argparse.ArgumentParser(prog="attnmeta compare", description=__doc__.split("\n")[0])
    parser.add_argument("benchmark", help="benchmark name, e.g. omniglot")
    parser.add_argument("--algos", required=True, help="comma-separated learner names")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--root", default=None, help="data folder (e.g. ../shared/data/omniglot)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per algorithm")
    parser.add_argument("--budget-seconds", type=float, default=None, help="CPU seconds per algorithm")
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--run-dir", action="append", default=[],
                        help="ALGO=FOLDER: load instead of training")
    parser.add_argument("--out", default=None, help="folder for compare.json and compare.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--log-every", type=int, default=0)
    args = parser.parse_args(list(argv) if argv is not None else None)
    compare(args.benchmark, [a.strip() for a in args.algos.split(",") if a.strip()], ways=args.ways,
            shots=args.shots, queries=args.queries, root=args.root, steps=args.steps,
            budget_seconds=args.budget_seconds, meta_batch=args.meta_batch, lr=args.lr,
            episodes=args.episodes,
            eval_seed=args.eval_seed, seed=args.seed, backbone=args.backbone,
            run_dirs=_parse_run_dirs(args.run_dir), out_dir=args.out, plot=not args.no_plot,
            log_every=args.log_every)
    return 0
