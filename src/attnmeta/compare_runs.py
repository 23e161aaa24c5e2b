"""The runs behind ``attnmeta.compare``: each learner's run config (as ``attnmeta train`` builds it), its
built benchmark, its trained learner (loaded from the run's tested checkpoint) and its evaluation on the
shared test episodes (``attnmeta.eval.evaluate``) or, on the meta-RL benchmarks, the shared test tasks
(``attnmeta.train.rl_run.evaluate_rl``)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from attnmeta.eval import EvalResult, evaluate
from attnmeta.learners.base import Learner
from attnmeta.train.config import RunConfig

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


def compare_settings(*, ways: int | None, shots: int | None, queries: int | None, root: str | Path | None,
                     steps: int | None, budget_minutes: float | None, budget_clock: str | None,
                     budget_seconds: float | None, meta_batch: int | None, lr: float | None,
                     lr_decay_every: int | None, episodes: int, eval_seed: int, seed: int,
                     backbone: str | None, backbone_options: dict[str, Any] | None,
                     benchmark_options: dict[str, Any] | None, log_every: int, plot: bool) -> dict[str, Any]:
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


def differences(a: RunConfig, b: RunConfig, keys: Sequence[str]) -> list[str]:
    """The ``keys`` on which configs ``a`` and ``b`` disagree."""
    return [k for k in keys if getattr(a, k) != getattr(b, k)]


# ---------------------------------------------------------------------------------------------------------
# Building and loading learners
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


def trained_learner(config: RunConfig, bench: Any, run_dir: str | Path) -> Any:
    """``config``'s learner with the weights of its run's tested checkpoint (rotation ensemble if the
    config validates and tests with it), on the config's device; a meta-RL learner (``bench`` unused) is
    built by ``attnmeta.rl.registry.build_rl_learner``."""
    from attnmeta.eval import with_rotation_ensemble
    from attnmeta.train.builders import build_learner
    from attnmeta.train.checkpoint import load_checkpoint, load_weights

    path = _checkpoint_to_test(run_dir)
    if config.task_type == "rl":
        from attnmeta.rl.registry import build_rl_learner

        with torch.random.fork_rng(devices=[]):  # the weights are loaded: leave the caller's RNG alone
            policy = build_rl_learner(config.algo, config.benchmark, config.algo_options)
        load_weights(policy, load_checkpoint(path)[0], path)
        return policy
    learner = build_learner(config, bench)
    load_weights(learner, load_checkpoint(path)[0], path)
    return with_rotation_ensemble(learner) if config.test_rotation_ensemble else learner


def load_from_run(run_dir: str | Path) -> tuple[Any, RunConfig, dict[str, Any]]:
    """The trained learner of a run folder written by ``attnmeta train``, its config, and its training
    steps and seconds (from ``summary.json``)."""
    from attnmeta.train.builders import build_benchmark
    from attnmeta.train.run_folder import load_run_config

    config = load_run_config(run_dir)
    bench = None if config.task_type == "rl" else build_benchmark(config)
    learner = trained_learner(config, bench, run_dir)
    summary_file = Path(run_dir) / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return learner, config, {"steps": int(summary.get("steps", config.steps)),
                             "wall_s": float(summary.get("train_seconds", math.nan)),
                             "cpu_s": float(summary.get("train_cpu_seconds", math.nan))}


def check_loaded_benchmark(first: RunConfig, run_dir: str | Path) -> None:
    """A meta-RL run folder loads only into a comparison on its benchmark (and only such folders do)."""
    from attnmeta.train.run_folder import load_run_config

    loaded = load_run_config(run_dir, report=lambda _line: None)
    if "rl" in (loaded.task_type, first.task_type) and loaded.benchmark != first.benchmark:
        raise ValueError(f"run folder {str(run_dir)!r} holds a {loaded.benchmark} run ({loaded.algo}); this "
                         f"comparison is on {first.benchmark}: load runs of {first.benchmark} only")


class Benchmarks:
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
        elif self.config is not None and not differences(self.config, config, BENCHMARK_KEYS):
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
# Test episodes and evaluation
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Shared:
    """What every learner of one comparison shares: its test episodes (meta-RL: test tasks) and seed, the
    built benchmarks (none for meta-RL: its runs build their own task family), torch's thread count."""

    episodes: list[Any]
    eval_seed: int
    benches: Benchmarks | None
    default_backbone: str | None
    threads: int


def shared_episodes(first: RunConfig, given: Any, episodes: int, eval_seed: int) -> Shared:
    """The test episodes every learner is evaluated on (meta-RL: test tasks), drawn once from ``first``'s
    benchmark (``given``: a built one)."""
    threads = torch.get_num_threads()
    if first.task_type == "rl":
        return Shared(rl_test_tasks(first, episodes, eval_seed), eval_seed, None, None, threads)
    benches = Benchmarks(given)
    bench = benches.for_config(first)  # kept by `benches` while the next learner can reuse it
    return Shared(bench.test.fixed_tasks(episodes, seed=eval_seed), eval_seed, benches,
                  _backbone_name(bench), threads)


def _backbone_name(bench: Any) -> str | None:
    default = getattr(bench, "default_backbone", None)
    return default.get("name") if isinstance(default, dict) else default


def rl_test_tasks(config: RunConfig, episodes: int, eval_seed: int) -> list[Any]:
    """The fixed meta-RL test tasks of ``config``'s benchmark: those ``attnmeta train`` tests a run of seed
    ``config.seed`` on (its test family, ``make_family(seed + 2)``), ``episodes`` of them drawn with
    ``eval_seed``."""
    from attnmeta.rl.registry import rl_benchmark

    return rl_benchmark(config.benchmark).make_family(config.seed + 2).fixed_tasks(episodes, seed=eval_seed)


def evaluate_learner(learner: Any, config: RunConfig, episodes: list[Any],
                     eval_seed: int) -> tuple[EvalResult, dict[str, Any] | None]:
    """``learner`` on the shared test episodes: ``attnmeta.eval.evaluate`` (accuracy / MSE; no curve), or
    on the meta-RL benchmarks ``evaluate_rl`` seeded with ``eval_seed`` (the return after adaptation, and
    the adaptation curve as a dict)."""
    if config.task_type == "rl":
        from attnmeta.train.rl_run import evaluate_rl

        result, curve = evaluate_rl(learner, episodes, eval_seed)
        return result, curve.as_dict()
    from attnmeta.train.builders import resolve_device

    device, dtype = resolve_device(config.device), getattr(torch, config.dtype)
    return evaluate(learner, [t.to(device, dtype) for t in episodes], device=device), None
