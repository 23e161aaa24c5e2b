"""What ``rl_navigation.py`` and ``rl_halfcheetah.py`` share (not a script): one meta-RL run through the
library's trainer, and the evaluation of trained runs against the baselines on the same test tasks.

``train``: ``maml`` is the library's ``maml-rl`` learner (MAML-RL, TRPO outer step) meta-trained with
``inner_steps`` policy-gradient steps; ``pretrained`` is ``maml-rl`` with ``inner_steps: 0`` (one policy
trained on all tasks jointly). Each is a run folder of
``attnmeta.train.train`` (config, checkpoints, ``metrics.csv``, ``summary.json``; ``attnmeta eval`` works on
it). ``evaluate``: the best checkpoint of each run and a random initialisation (the MAML run's initial
weights: same seed, same options), all adapted with MAML's inner learning rate and episodes per step
(``attnmeta.rl.evaluate_learner``), so only the starting point differs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnmeta.errors import UserError
from attnmeta.rl.evaluate import AdaptationCurve, evaluate_learner, plot_adaptation, plot_training
from attnmeta.rl.maml_rl import MAMLRL
from attnmeta.rl.registry import build_rl_learner, rl_benchmark
from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint, load_weights
from attnmeta.train.config import RunConfig
from attnmeta.train.metrics_log import read_metrics
from attnmeta.train.run_folder import RunExistsError, load_run_config
from attnmeta.train.trainer import TrainResult, train

#: The script's ``--algo`` choices: the library learner is ``maml-rl`` for both.
ALGOS = ("maml", "pretrained")
#: ``algo_options`` that shape the policy's parameters: a baseline keeps its own to load its weights.
ARCHITECTURE = ("hidden", "task_attention")
#: The baselines MAML is checked against ("MAML above with non-overlapping 95% CI").
BASELINES = ("pretrained", "random init")
BUDGET_HELP = ("if both --max-cpu-min and --max-wall-min are given, the CPU cap is kept and the wall cap "
               "ignored (the trainer's budget has one clock)")


def run_script(main: Callable[[], Any]) -> None:
    """``main()``, with the library's user errors (a missing or taken run folder ...) as one line."""
    try:
        main()
    except RunExistsError as error:
        sys.exit(f"error: {error}\n(this script: pass another --tag or --runs to start a new run)")
    except UserError as error:
        sys.exit(f"error: {error}")


def run_folder(runs: str | Path, benchmark: str, algo: str, tag: str = "") -> Path:
    """``<runs>/<benchmark>-<algo><tag>``, e.g. ``runs/rl/navigation-maml``."""
    return Path(runs) / f"{benchmark}-{algo}{tag}"


def budget(max_cpu_min: float | None, max_wall_min: float | None,
           default_cpu_min: float | None = None) -> tuple[float | None, str, str | None]:
    """``(budget_minutes, budget_clock, note)`` from the scripts' caps: the CPU cap when given (a note when
    a wall cap is dropped for it), else the wall cap, else ``default_cpu_min`` CPU-minutes (``None``: no
    budget, the iteration count alone)."""
    if max_cpu_min is not None:
        note = None if max_wall_min is None else (
            f"both --max-cpu-min {max_cpu_min:g} and --max-wall-min {max_wall_min:g} given: keeping the CPU "
            "cap, ignoring the wall cap")
        return max_cpu_min, "cpu", note
    if max_wall_min is not None:
        return max_wall_min, "wall", None
    return default_cpu_min, "cpu", None


def run_config(benchmark: str, algo: str, run_dir: str | Path, *, inner_steps: int, inner_lr: float,
               episodes: int, meta_batch: int, iterations: int, budget_minutes: float | None,
               budget_clock: str = "cpu", val_tasks: int, test_tasks: int, eval_every: int, seed: int = 0,
               threads: int = 1) -> RunConfig:
    """The trainer config of one script run: ``maml-rl`` on ``benchmark``, ``inner_steps`` for ``maml`` and 0
    for ``pretrained``; ``iterations`` outer (TRPO) steps or the budget, whichever ends first; validation on
    ``val_tasks`` fixed tasks every ``eval_every`` iterations (the best one is the checkpoint ``evaluate``
    loads), the trainer's own test on ``test_tasks``."""
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
    options = {"inner_steps": inner_steps if algo == "maml" else 0, "inner_lr": inner_lr,
               "episodes": episodes}
    return RunConfig(benchmark=benchmark, algo="maml-rl", algo_options=options, meta_batch=meta_batch,
                     steps=iterations, budget_minutes=budget_minutes, budget_clock=budget_clock,
                     eval_every=eval_every, checkpoint_every=eval_every, eval_episodes=val_tasks,
                     test_episodes=test_tasks, seed=seed, threads=threads, device="cpu",
                     run_dir=str(run_dir))


def train_from_args(args: Any, benchmark: str, *, eval_every: int,
                    default_cpu_min: float | None = None) -> TrainResult:
    """A script's ``train`` stage: ``maml`` (``--inner-steps``) or ``pretrained`` (``inner_steps: 0``) on
    ``benchmark`` with the script's flags (inner lr 0.1 and 20 episodes unless given)."""
    minutes, clock, note = budget(args.max_cpu_min, args.max_wall_min, default_cpu_min)
    path = run_folder(args.runs, benchmark, args.algo, args.tag)
    config = run_config(
        benchmark, args.algo, path, inner_steps=args.inner_steps,
        inner_lr=0.1 if args.inner_lr is None else args.inner_lr,
        episodes=20 if args.episodes is None else args.episodes, meta_batch=args.meta_batch,
        iterations=args.iterations, budget_minutes=minutes, budget_clock=clock, val_tasks=args.val_tasks,
        test_tasks=args.test_tasks, eval_every=eval_every, seed=args.seed, threads=args.threads)
    return train_run(config, f"{benchmark} {args.algo}{args.tag}", note)


def train_run(config: RunConfig, name: str, note: str | None = None) -> TrainResult:
    """``attnmeta.train.train(config)``, one line per validation, and a closing line."""
    if note:
        print(note, flush=True)
    result = train(config, quiet=True)
    s = result.summary
    best = s.get("best") or {"value": float("nan"), "step": None}
    test = s.get("test") or {"mean": float("nan"), "ci95": float("nan")}
    print(f"{name}: {result.steps} iterations, {s['train_cpu_seconds'] / 60:.1f} CPU-min "
          f"({s['train_seconds'] / 60:.1f} wall-min); best validation return {best['value']:.2f} at "
          f"iteration {best['step']}; test return {test['mean']:.2f} +/- {test['ci95']:.2f}; "
          f"run folder {result.run_dir}", flush=True)
    return result


@dataclass
class TrainedRun:
    """A run folder's config, the checkpoint ``evaluate`` uses (the best one) and its weights."""

    path: Path
    config: RunConfig
    checkpoint: Path
    step: int
    weights: dict[str, torch.Tensor]


def load_run(path: str | Path) -> TrainedRun:
    """The best checkpoint of a trained run folder (the newest valid one if no best is recorded)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"no run folder {str(path)!r}: run the script's `train` stage first (or pass --runs "
                        "/ --tag as at training)")
    config = load_run_config(path)
    manager = CheckpointManager(path / "checkpoints")
    checkpoint = manager.best_path()
    checkpoint = checkpoint if checkpoint is not None and checkpoint.is_dir() else manager.latest_valid()
    if checkpoint is None:
        raise UserError(f"run folder {str(path)!r} has no valid checkpoint yet")
    weights, state = load_checkpoint(checkpoint)
    return TrainedRun(path, config, checkpoint, int(state["step"]), weights)


def eval_options(maml: RunConfig, own: RunConfig | None = None, inner_lr: float | None = None,
                 episodes: int | None = None) -> dict[str, Any]:
    """The ``algo_options`` a method is evaluated with: the MAML run's (its inner lr, episodes, discount ...),
    with ``own``'s ``inner_steps`` and policy shape (``ARCHITECTURE``), and ``inner_lr`` / ``episodes``
    replaced when given (for every method alike)."""
    options = dict(maml.algo_options)
    if own is not None:
        options["inner_steps"] = own.algo_options.get("inner_steps", 1)
        for key in ARCHITECTURE:
            options.pop(key, None)
            if key in own.algo_options:
                options[key] = own.algo_options[key]
    if inner_lr is not None:
        options["inner_lr"] = inner_lr
    if episodes is not None:
        options["episodes"] = episodes
    return options


def build_learner(benchmark: str, options: dict[str, Any], seed: int,
                  run: TrainedRun | None = None) -> MAMLRL:
    """A ``maml-rl`` learner initialised from seed ``seed`` (the global RNG is left as it was), with
    ``run``'s checkpoint weights when given."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        learner = build_rl_learner("maml-rl", benchmark, options)
    if run is not None:
        load_weights(learner, run.weights, run.checkpoint)
    return learner


def training_info(run: TrainedRun) -> dict[str, Any]:
    """What the results JSON records of a run: its settings, CPU / wall time, the checkpoint evaluated,
    environment steps simulated and the training curve (``metrics.csv``'s ``return``: the mean return after
    the inner steps, per iteration)."""
    rows = [r for r in read_metrics(run.path / "metrics.csv") if r["phase"] == "train"]
    options, config = run.config.algo_options, run.config
    inner_steps, episodes = options.get("inner_steps", 1), options.get("episodes", 20)
    iterations = int(rows[-1]["step"]) if rows else 0
    horizon = rl_benchmark(config.benchmark).horizon
    budget = None if config.budget_minutes is None else f"{config.budget_minutes:g} {config.budget_clock}-min"
    return {"run_dir": str(run.path), "iterations": iterations,
            "train_cpu_min": float(rows[-1]["cpu_seconds"]) / 60 if rows else 0.0,
            "train_wall_min": float(rows[-1]["train_seconds"]) / 60 if rows else 0.0,
            "budget": budget, "checkpoint_step": run.step, "inner_steps": inner_steps,
            "inner_lr": options.get("inner_lr", 0.1), "episodes": episodes, "meta_batch": config.meta_batch,
            "seed": config.seed,
            "env_steps": (inner_steps + 1) * config.meta_batch * episodes * horizon * iterations,
            "train_curve": [float(r["return"]) for r in rows]}


def curve_of(learner: MAMLRL, name: str, tasks: list, steps: int, seed: int) -> AdaptationCurve:
    curve = evaluate_learner(learner, tasks, steps=steps, seed=seed)
    curve.name = name
    return curve


def print_curves(curves: list[AdaptationCurve], width: int = 14) -> None:
    for c in curves:
        print(f"{c.name:<{width}}" + "".join(f" {str(s):>17}" for s in c.summary), flush=True)


def maml_beats(curves: list[AdaptationCurve]) -> dict[str, list[bool]]:
    """Per baseline: MAML's mean minus its 95% CI above the baseline's mean plus its CI, at steps 1..K."""
    maml_after = curves[0].summary[1:]
    return {c.name: [m.mean - m.ci95 > b.mean + b.ci95 for m, b in zip(maml_after, c.summary[1:])]
            for c in curves[1:] if c.name in BASELINES}


def evaluate_runs(benchmark: str, runs: dict[str, str | Path], tasks: list, *, steps: int, seed: int = 0,
                  inner_lr: float | None = None, episodes: int | None = None,
                  baseline_lrs: tuple[float, ...] | list[float] = (),
                  ) -> tuple[dict[str, Any], list[AdaptationCurve]]:
    """Evaluate the best checkpoint of each run in ``runs`` (name -> folder; ``"maml"`` first) and a random
    initialisation on ``tasks``: returns after ``0..steps`` policy-gradient steps, every method with the MAML
    run's inner lr and episodes (or ``inner_lr`` / ``episodes``). ``baseline_lrs``: the pre-trained policy and
    the random initialisation again with other step sizes (a fairness check, not the headline). Prints the
    table; returns the results (``curves``, ``training``, ``maml_beats_with_non_overlapping_ci`` ...) and
    the adaptation curves (MAML's first)."""
    loaded = {name: load_run(path) for name, path in runs.items()}
    maml = loaded["maml"].config
    learners: dict[str, MAMLRL] = {}
    for name, run in loaded.items():
        if run.config.benchmark != benchmark:
            raise UserError(f"run folder {str(run.path)!r} trained on {run.config.benchmark!r}, "
                            f"not {benchmark!r}")
        learners[name] = build_learner(benchmark, eval_options(maml, run.config, inner_lr, episodes),
                                       run.config.seed, run)
    learners["random init"] = build_learner(benchmark, eval_options(maml, None, inner_lr, episodes),
                                            maml.seed)
    info = {name: training_info(run) for name, run in loaded.items()}
    for name, row in info.items():
        print(name, {k: v for k, v in row.items() if k != "train_curve"}, flush=True)
    curves = [curve_of(learner, name, tasks, steps, seed) for name, learner in learners.items()]
    print(f"{'method':<14}" + "".join(f"{f'{k} steps':>18}" for k in range(steps + 1)))
    print_curves(curves)
    beats = maml_beats(curves)
    print("MAML above baseline with non-overlapping 95% CI, at steps 1..K:", beats, flush=True)
    maml_options = eval_options(maml, maml, inner_lr, episodes)
    out: dict[str, Any] = {
        "trainer": "attnmeta.train.train (maml-rl; pretrained = inner_steps 0); best checkpoint of each run",
        "inner_lr": maml_options.get("inner_lr", 0.1), "episodes": learners["maml"].episodes,
        "test_tasks": len(tasks), "seed": seed, "curves": [c.as_dict() for c in curves], "training": info,
        "maml_beats_with_non_overlapping_ci": beats,
    }
    sensitivity = []
    for lr in baseline_lrs:
        for name in BASELINES:
            run = loaded.get(name)
            options = eval_options(maml, None if run is None else run.config, lr, episodes)
            learner = build_learner(benchmark, options, maml.seed if run is None else run.config.seed, run)
            curve = curve_of(learner, f"{name} lr {lr:g}", tasks, steps, seed)
            print_curves([curve], width=22)
            sensitivity.append(curve.as_dict())
    if baseline_lrs:
        out["baseline_step_size_check"] = sensitivity
    return out, curves


def write_outputs(out: dict[str, Any], curves: list[AdaptationCurve], stem: Path, title: str) -> Path:
    """``<stem>.json``, ``<stem>_adaptation.png`` and ``<stem>_training.png`` (curves from the runs'
    ``metrics.csv``); returns the JSON's path."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    path = stem.with_name(stem.name + ".json")
    path.write_text(json.dumps(out, indent=1))
    plot_adaptation(curves, str(stem.with_name(stem.name + "_adaptation.png")), title=title)
    labels = {name: f"{name} (return after {row['inner_steps']} inner steps)" if row["inner_steps"] else name
              for name, row in out["training"].items()}
    plot_training({labels[name]: row["train_curve"] for name, row in out["training"].items()},
                  str(stem.with_name(stem.name + "_training.png")), title=title)
    print("wrote", path, flush=True)
    return path
