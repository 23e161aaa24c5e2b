"""Compare meta-learners on identical episodes: "which algorithm should I choose?".

``compare("omniglot", ["protonet", "matching", "snail"], root=...)`` trains each learner with the
library's one trainer (``attnmeta.train.train``, as ``attnmeta train`` does: the same presets, the same
budgets), or loads it from a run folder written by ``attnmeta train``, evaluates all of them on the **same**
fixed test episodes (``attnmeta.eval.evaluate``) and returns / prints one table: accuracy (classification) or
MSE (regression) +/- 95% CI, training steps and time (wall and process CPU seconds, from the run's
``summary.json``), adaptation time per task, peak memory; it can also write a JSON file and a PNG bar chart.

Each learner's run config is built as the CLI builds it: defaults < the preset of (benchmark, learner)
(``attnmeta.train.presets``) < compare's settings (``steps``, a time budget ``budget_minutes`` on
``budget_clock``, ``meta_batch``, ``lr``, ``algo_options`` ...) < ``overrides`` (like ``attnmeta train
--set``). The runs go to ``out_dir/runs/<algo>`` (kept: resume, plot or evaluate them like any run), or to a
temporary folder removed afterwards when ``out_dir`` is None. Every learner is evaluated as ``attnmeta train``
tests a run: its best checkpoint by validation (the newest without validation).

Peak memory is the peak resident set size of this process while the algorithm trained and was evaluated,
minus the resident size before it started (sampled every 10 ms from ``/proc/self/statm``; on CUDA,
``torch.cuda.max_memory_allocated``); freed memory is handed back to the system between learners. Command
line: ``attnmeta compare omniglot --algos protonet,matching --root ../shared/data/omniglot --budget 2m``
(see ``main``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from attnmeta import learners
from attnmeta.compare_report import CompareResult, CompareRow, PeakMemory, _return_freed_memory  # noqa: F401
from attnmeta.eval import EvalResult, evaluate
from attnmeta.learners.base import Learner
from attnmeta.train.config import RunConfig

__all__ = ["CompareRow", "CompareResult", "compare", "compare_config", "build_for", "PeakMemory", "main"]


# ---------------------------------------------------------------------------------------------------------
# Run configs, as `attnmeta train` builds them
# ---------------------------------------------------------------------------------------------------------
#: Config keys that define a benchmark's task sources (``build_benchmark``): learners whose configs agree on
#: them share one built benchmark (its training source rewound for each).
BENCHMARK_KEYS = ("benchmark", "root", "ways", "shots", "queries", "train_ways", "train_shots",
                  "train_queries", "split", "image_size", "benchmark_options", "seed")
#: Config keys that define the test episodes: every learner of a comparison must agree on them.
TEST_KEYS = ("benchmark", "root", "ways", "shots", "queries", "split", "image_size", "benchmark_options",
             "seed")
#: Keys of the training episodes' shape, which a benchmark object defines itself (a preset's are dropped).
TRAIN_SHAPE_KEYS = ("train_ways", "train_shots", "train_queries")


def compare_config(benchmark: str, algo: str, settings: dict[str, Any] | None = None, *,
                   presets: bool = True) -> RunConfig:
    """The resolved ``RunConfig`` compare trains ``algo`` with on ``benchmark`` (a name).

    As ``attnmeta train BENCHMARK --algo ALGO`` with ``settings`` given as ``--set KEY=VALUE``
    (``attnmeta.cli.commands._train_config``): defaults < the preset of (benchmark, algo) < ``settings``
    (config keys; dotted keys such as ``algo_options.inner_lr`` set one entry). ``presets=False`` skips the
    preset (defaults < settings). Values that are not plain data (tensors, datasets in
    ``benchmark_options``) are set on top of the result (mappings merged), without the CLI's text round trip.
    SNAIL gets ``shots`` (the size of its sequence model) from the episodes unless ``algo_options`` sets it.
    """
    plain, objects = {}, {}
    for key, value in (settings or {}).items():
        try:
            plain[key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            objects[key] = value
    if presets:
        from attnmeta.cli import build_parser
        from attnmeta.cli.commands import _train_config

        args = build_parser().parse_args(["train", benchmark, "--algo", algo])
        args.set = [f"{key}={text}" for key, text in plain.items()] or None
        config = _train_config(args)
    else:
        config = RunConfig(benchmark=benchmark, algo=algo)
        objects = dict(settings or {})
    config = _set_on_top(config, objects)
    if algo == "snail" and "shots" not in config.algo_options:
        config = dataclasses.replace(config, algo_options={**config.algo_options,
                                                           "shots": config.resolved().shots})
    return config.resolved()


def _set_on_top(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """``config`` with ``values`` set (mappings merged, dotted keys into mappings), objects not copied."""
    changes: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(RunConfig)}
    for key, value in values.items():
        top, _, sub = key.partition(".")
        if top not in known:
            config.with_overrides({key: None})  # raises the config's own "unknown config key" error
        current = changes.get(top, getattr(config, top))
        if sub:
            if not isinstance(current, dict):
                raise ValueError(
                    f"config key {top!r} is not a mapping; set it as {top}=VALUE, not {key}=VALUE")
            value = {**current, sub: value}
        elif isinstance(value, dict) and isinstance(current, dict):
            value = {**current, **value}
        changes[top] = value
    return dataclasses.replace(config, **changes) if changes else config


def _differences(a: RunConfig, b: RunConfig, keys: Sequence[str]) -> list[str]:
    return [k for k in keys if getattr(a, k) != getattr(b, k)]


# ---------------------------------------------------------------------------------------------------------
# Building, training and loading
# ---------------------------------------------------------------------------------------------------------
def build_for(algo: str, benchmark: Any, ways: int, shots: int, *, backbone: str | None = None,
              backbone_options: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              seed: int = 0) -> Learner:
    """Seeded learner ``algo`` (on the CPU) for an already built benchmark, by the trainer's own builder
    (``attnmeta.train.builders.build_learner``): the benchmark's default backbone unless ``backbone`` is
    given, a ``ways`` head where the learner needs one, ``num_classes`` of the transfer baselines from the
    training source and, for SNAIL, ``shots`` (unless ``options`` set them)."""
    from attnmeta.train.builders import build_learner
    from attnmeta.train.run import benchmark_parts

    parts = benchmark_parts(benchmark)
    options = dict(options or {})
    if algo == "snail":
        options.setdefault("shots", shots)
    config = RunConfig(benchmark=parts.name, algo=algo, ways=ways, shots=shots, backbone=backbone,
                       backbone_options=dict(backbone_options or {}), algo_options=options, seed=seed,
                       device="cpu")
    return build_learner(config, parts)


def _checkpoint_to_test(run_dir: str | Path) -> Path:
    """The checkpoint ``attnmeta train`` tests and ``attnmeta eval`` evaluates by default: the best by
    validation, else the newest valid one."""
    from attnmeta.train.checkpoint import CheckpointManager

    manager = CheckpointManager(Path(run_dir) / "checkpoints")
    best = manager.best_path()
    path = best if best is not None and best.is_dir() else manager.latest_valid()
    if path is None:
        raise ValueError(f"run folder {str(run_dir)!r} has no valid checkpoint")
    return path


def _trained_learner(config: RunConfig, bench: Any, run_dir: str | Path) -> Learner:
    """``config``'s learner with the weights of its run's tested checkpoint (rotation ensemble if the
    config validates and tests with it), on the config's device."""
    from attnmeta.eval import with_rotation_ensemble
    from attnmeta.train.builders import build_learner
    from attnmeta.train.checkpoint import load_checkpoint, load_weights

    learner = build_learner(config, bench)
    path = _checkpoint_to_test(run_dir)
    load_weights(learner, load_checkpoint(path)[0], path)
    return with_rotation_ensemble(learner) if config.test_rotation_ensemble else learner


def _load_from_run(run_dir: str | Path) -> tuple[Learner, RunConfig, dict[str, Any]]:
    from attnmeta.train.builders import build_benchmark
    from attnmeta.train.run_folder import load_run_config

    config = load_run_config(run_dir)
    learner = _trained_learner(config, build_benchmark(config), run_dir)
    summary_file = Path(run_dir) / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return learner, config, {"steps": int(summary.get("steps", config.steps)),
                             "wall_s": float(summary.get("train_seconds", math.nan)),
                             "cpu_s": float(summary.get("train_cpu_seconds", math.nan))}


def _evaluate(learner: Learner, config: RunConfig, episodes: list[Any]) -> EvalResult:
    from attnmeta.train.builders import resolve_device

    device, dtype = resolve_device(config.device), getattr(torch, config.dtype)
    return evaluate(learner, [t.to(device, dtype) for t in episodes], device=device)


class _Benchmarks:
    """The built benchmark of each config: one is reused while configs agree on ``BENCHMARK_KEYS`` (its
    training source rewound to where it started), another is built when they do not."""

    def __init__(self, given: Any = None) -> None:
        self.given = given
        self.config: RunConfig | None = None
        self.bench: Any = None
        self.start: Any = None

    def for_config(self, config: RunConfig) -> Any:
        from attnmeta.train.builders import build_benchmark

        if self.given is not None:
            bench = self.given
        elif self.config is not None and not _differences(self.config, config, BENCHMARK_KEYS):
            bench = self.bench
        else:
            self.bench = self.start = None  # free the previous data first
            bench = build_benchmark(config)
        if bench is not self.bench:
            self.config, self.bench, self.start = config, bench, copy.deepcopy(bench.train.state_dict())
        else:
            bench.train.load_state_dict(copy.deepcopy(self.start))
        return bench


# ---------------------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------------------
def compare(benchmark: str | Any, algos: Sequence[str], *, ways: int | None = None, shots: int | None = None,
            queries: int | None = None, root: str | Path | None = None, steps: int | None = None,
            budget_minutes: float | None = None, budget_clock: str | None = None,
            budget_seconds: float | None = None, meta_batch: int | None = None, lr: float | None = None,
            lr_decay_every: int | None = None, episodes: int = 600, eval_seed: int = 0, seed: int = 0,
            backbone: str | None = None, backbone_options: dict[str, Any] | None = None,
            algo_options: dict[str, dict[str, Any]] | None = None,
            run_dirs: dict[str, str | Path] | None = None, benchmark_options: dict[str, Any] | None = None,
            overrides: dict[str, Any] | None = None, presets: bool = True, log_every: int = 0,
            out_dir: str | Path | None = None, plot: bool = True,
            print_fn: Callable[[str], None] | None = print) -> CompareResult:
    """Train (or load) every learner in ``algos`` and evaluate all on the same fixed test episodes.

    Args:
        benchmark: a name for ``attnmeta.data.benchmarks.make_benchmark`` (built as ``attnmeta train`` builds
            it, with ``root`` and ``benchmark_options``) or an already built benchmark
            (``make_benchmark(...)``, ``attnmeta.train.builders.BenchmarkParts`` or any object with
            ``task_type``, ``train`` / ``val`` / ``test`` task sources and ``input_shape``); the presets of
            its ``name`` apply, less the training episodes' shape (the object's training source defines it).
            Every learner trains from the same position of the training source.
        algos: registered learner names, e.g. ``["protonet", "matching", "snail", "transfer"]``.
        ways / shots / queries: the episodes (``None``: the preset's, else 5-way 1-shot 15 queries for
            classification, 10 / 10 for regression); every learner is tested on the same episodes.
        steps: outer steps per learner (``None``: the preset's, else 1000). Setting it drops a preset's time
            budget, as ``attnmeta train --steps`` does.
        budget_minutes / budget_clock: stop each learner's training after this many minutes of ``cpu``
            (process CPU time, the default) or ``wall`` time, or at ``steps``, whichever comes first
            (``attnmeta train --budget``). ``budget_seconds``: the same budget in seconds.
        meta_batch, lr, lr_decay_every: outer loop settings (``None``: the preset's); ``lr_decay_every``
            halves the learning rate every that many steps (``schedule="step"``).
        episodes, eval_seed: the fixed test episodes (``benchmark.test.fixed_tasks(episodes, eval_seed)``),
            recorded as the runs' ``test_episodes`` / ``test_seed``.
        seed: the runs' seed (every RNG; the benchmark's too when it is built here).
        backbone / backbone_options: override the benchmark's default backbone.
        algo_options: per-algorithm learner options, e.g. ``{"matching": {"fce": True}}`` (over the preset's).
        run_dirs: ``{algo: run folder}`` to load trained learners (``attnmeta train``) instead of training.
        overrides: any other config keys for every learner, applied last (``attnmeta train --set``), e.g.
            ``{"schedule": "cosine", "threads": 1}``.
        presets: ``False``: no presets (defaults < compare's settings), for scripts that pin every setting.
        log_every: validate and print a line every this many steps (``eval_every``; 0: the preset's).
        out_dir: where the runs (``runs/<algo>``), ``compare.json`` and ``compare.png`` go (``None``: the runs
            go to a temporary folder, removed at the end, and nothing else is written).

    Returns a ``CompareResult`` (``.rows``, ``.table()``); the table is printed unless ``print_fn`` is None.
    """
    from attnmeta.train.run import benchmark_parts
    from attnmeta.train.trainer import train

    algos = list(algos)
    if not algos:
        raise ValueError("algos is empty; name at least one learner, e.g. algos=['protonet']")
    run_dirs = dict(run_dirs or {})
    known = learners.available()
    unknown = [a for a in algos if a not in known and a not in run_dirs]
    if unknown:
        raise ValueError(f"unknown learner(s) {unknown}; choose from: {', '.join(known)}")
    if len(set(algos)) != len(algos):
        raise ValueError(f"algos lists a learner twice: {algos}")
    say = print_fn or (lambda _line: None)
    if isinstance(benchmark, str):
        name, given = benchmark, None
    else:
        if root is not None or benchmark_options:
            raise ValueError("root and benchmark_options build a benchmark given by name; this benchmark is "
                             "already built: drop them")
        given = benchmark_parts(benchmark)
        name = given.name
    settings = _settings(ways=ways, shots=shots, queries=queries, root=root, steps=steps,
                         budget_minutes=budget_minutes, budget_clock=budget_clock,
                         budget_seconds=budget_seconds,
                         meta_batch=meta_batch, lr=lr, lr_decay_every=lr_decay_every, episodes=episodes,
                         eval_seed=eval_seed, seed=seed, backbone=backbone, backbone_options=backbone_options,
                         benchmark_options=benchmark_options, log_every=log_every,
                         plot=plot and out_dir is not None)
    runs_folder = Path(out_dir) / "runs" if out_dir is not None else None
    configs: dict[str, RunConfig] = {}
    for algo in [a for a in algos if a not in run_dirs] or algos[:1]:
        values = {**settings, **({"algo_options": dict(algo_options[algo])} if (algo_options or {}).get(algo)
                                 else {}), **(overrides or {})}
        if runs_folder is not None:
            values["run_dir"] = str(runs_folder / algo)
        config = compare_config(name, algo, values, presets=presets)
        if given is not None:  # the object's own training episodes: drop the preset's shape
            config = dataclasses.replace(config, **{k: (values.get(k) if k in values else None)
                                                    for k in TRAIN_SHAPE_KEYS})
        configs[algo] = config
    first = next(iter(configs.values()))
    for algo, config in configs.items():
        differ = _differences(first, config, TEST_KEYS)
        if differ:
            raise ValueError(
                f"the presets of {algo} and {first.algo} define different test episodes "
                f"({', '.join(differ)}); set them for all, e.g. ways=5, shots=1, queries=15 "
                "(--ways/--shots/--queries)")
        if runs_folder is not None and algo not in run_dirs and Path(config.run_dir).exists() \
                and any(Path(config.run_dir).iterdir()):
            raise ValueError(f"{config.run_dir} already holds a run: load it with run_dirs={{{algo!r}: "
                             f"{config.run_dir!r}}} (--run-dir {algo}={config.run_dir}) or choose another "
                             "out_dir")
    benches = _Benchmarks(given)
    shared = benches.for_config(first)
    episodes_list = shared.test.fixed_tasks(episodes, seed=eval_seed)
    default_backbone = _backbone_name(shared)
    del shared  # kept by `benches` while the next learner can reuse it
    trained_configs: dict[str, dict[str, Any]] = {}
    scratch = None if runs_folder is not None else Path(tempfile.mkdtemp(prefix="attnmeta-compare-"))
    rows: list[CompareRow] = []
    threads = torch.get_num_threads()
    try:
        for algo in algos:
            say(f"[{algo}]")
            with PeakMemory() as memory:
                try:
                    if algo in run_dirs:
                        learner, config, trained = _load_from_run(run_dirs[algo])
                        origin, kept = f"run folder {run_dirs[algo]}", str(run_dirs[algo])
                    else:
                        config = configs[algo]
                        if scratch is not None:
                            config = dataclasses.replace(config, run_dir=str(scratch / algo))
                        bench = benches.for_config(config)
                        run = train(config, bench=bench, evaluate_test=False, quiet=True, print_fn=say)
                        trained_configs[algo] = run.config.to_storable_dict()
                        if scratch is not None:
                            trained_configs[algo]["run_dir"] = None  # removed at the end
                        learner = _trained_learner(run.config, bench, run.run_dir)
                        del bench  # `benches` keeps it while the next learner can reuse it
                        trained = {"steps": run.steps, "wall_s": float(run.summary["train_seconds"]),
                                   "cpu_s": float(run.summary["train_cpu_seconds"])}
                        origin = "trained here"
                        kept = str(run.run_dir) if scratch is None else None
                    result = _evaluate(learner, config, episodes_list)
                    del learner
                finally:
                    torch.set_num_threads(threads)  # a run's `threads` stays with its run
                    _return_freed_memory()
            peak = memory.cuda_peak_mib if memory.cuda_peak_mib is not None else memory.peak_mib
            rows.append(CompareRow(algo, result.metric, result.mean, result.ci95, len(episodes_list),
                                   trained["steps"], trained["wall_s"], trained["cpu_s"],
                                   result.seconds_per_task, peak, origin, kept, result.per_episode))
            say(f"  {algo}: {result}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    outcome = CompareResult(rows, {
        "benchmark": name, "ways": first.ways, "shots": first.shots, "queries": first.queries,
        "metric": rows[0].metric if rows else None, "steps": steps,
        "budget_minutes": settings.get("budget_minutes"), "budget_clock": settings.get("budget_clock"),
        "meta_batch": meta_batch, "lr": lr, "episodes": episodes, "eval_seed": eval_seed, "seed": seed,
        "backbone": backbone or default_backbone, "threads": threads, "presets": presets,
        "configs": trained_configs})
    say(outcome.table())
    if out_dir is not None:
        outcome.save_json(Path(out_dir) / "compare.json")
        if plot:
            outcome.plot(Path(out_dir) / "compare.png")
    return outcome


def _backbone_name(bench: Any) -> str | None:
    default = getattr(bench, "default_backbone", None)
    return default.get("name") if isinstance(default, dict) else default


def _settings(*, ways, shots, queries, root, steps, budget_minutes, budget_clock, budget_seconds, meta_batch,
              lr, lr_decay_every, episodes, eval_seed, seed, backbone, backbone_options, benchmark_options,
              log_every, plot) -> dict[str, Any]:
    """compare's arguments as config keys (only those given, so that the presets fill the rest)."""
    if budget_seconds is not None:
        if budget_minutes is not None:
            raise ValueError("give the time budget once: budget_minutes or budget_seconds, not both")
        if not budget_seconds > 0:
            raise ValueError(f"budget_seconds must be > 0, got {budget_seconds}")
        budget_minutes = budget_seconds / 60
    if lr_decay_every is not None and lr_decay_every < 1:
        raise ValueError(f"lr_decay_every must be >= 1 (steps), got {lr_decay_every}")
    values = {"ways": ways, "shots": shots, "queries": queries, "root": None if root is None else str(root),
              "steps": steps, "budget_minutes": budget_minutes, "budget_clock": budget_clock,
              "meta_batch": meta_batch, "lr": lr, "backbone": backbone,
              "backbone_options": dict(backbone_options) if backbone_options else None,
              "benchmark_options": dict(benchmark_options) if benchmark_options else None,
              "eval_every": log_every or None}
    out = {key: value for key, value in values.items() if value is not None}
    if lr_decay_every is not None:
        out.update(schedule="step", step_size=lr_decay_every, gamma=0.5)
    out.update(seed=seed, test_episodes=episodes, test_seed=eval_seed, plot=plot)
    return out


def _parse_run_dirs(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in values:
        if "=" not in item:
            raise ValueError(f"--run-dir takes ALGO=FOLDER, got {item!r}")
        algo, folder = item.split("=", 1)
        out[algo] = folder
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``attnmeta compare BENCHMARK --algos a,b,c [--ways 5 --shots 1 --budget 2m ...]``."""
    from attnmeta.cli.parser import parse_budget
    from attnmeta.train.config import parse_overrides

    parser = argparse.ArgumentParser(
        prog="attnmeta compare",
        description=__doc__.split("\n")[0] + " Each learner trains as `attnmeta train BENCHMARK --algo ALGO` "
        "would (the same presets), with the settings below on top.")
    parser.add_argument("benchmark", help="benchmark name, e.g. omniglot")
    parser.add_argument("--algos", required=True, help="comma-separated learner names")
    parser.add_argument("--ways", type=int, default=None,
                        help="N classes per task (default: the preset's, else 5)")
    parser.add_argument("--shots", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--root", default=None, help="data folder (e.g. ../shared/data/omniglot)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per algorithm (default: the preset's; drops a preset's budget)")
    parser.add_argument("--budget", type=parse_budget, default=None, metavar="TIME",
                        help="training time per algorithm, e.g. 5m, 90s, 1h (CPU time unless "
                        "--budget-clock wall)")
    parser.add_argument("--budget-clock", choices=("cpu", "wall"), default=None)
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="training time per algorithm in seconds (CPU time unless --budget-clock wall)")
    parser.add_argument("--meta-batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config key for every learner, e.g. --set schedule=cosine "
                        "(repeatable)")
    parser.add_argument("--run-dir", action="append", default=[],
                        help="ALGO=FOLDER: load instead of training")
    parser.add_argument("--out", default=None,
                        help="folder for the runs (runs/ALGO), compare.json and compare.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--log-every", type=int, default=0,
                        help="validate and print a line every N steps (eval_every; default: the preset's)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    compare(args.benchmark, [a.strip() for a in args.algos.split(",") if a.strip()], ways=args.ways,
            shots=args.shots, queries=args.queries, root=args.root, steps=args.steps,
            budget_minutes=args.budget, budget_clock=args.budget_clock, budget_seconds=args.budget_seconds,
            meta_batch=args.meta_batch, lr=args.lr, episodes=args.episodes, eval_seed=args.eval_seed,
            seed=args.seed, backbone=args.backbone, overrides=parse_overrides(args.set),
            run_dirs=_parse_run_dirs(args.run_dir), out_dir=args.out, plot=not args.no_plot,
            log_every=args.log_every)
    return 0
