"""One trainer for every learner, readable top to bottom.

``train(config)`` builds the benchmark (task sources; or takes an already built one, ``bench=``), the model
and the learner, then loops:
sample a meta-batch -> ``learner.meta_loss`` -> backward -> (all-reduce) -> outer optimizer step,
validating on fixed episodes every ``eval_every`` steps and checkpointing every ``checkpoint_every`` steps.
A checkpoint holds every RNG state and the task source's position, so ``resume`` continues exactly where
the run stopped: a run killed at any moment and resumed ends with bit-identical weights.

The run folder holds ``config.yaml`` (resolved config), ``run.json`` (what the predictor needs to rebuild
the model: task type, input shape, preprocessing), ``checkpoints/``, ``metrics.csv``, ``summary.json`` and
``learning_curves.png``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from attnmeta.eval import EvalResult
from attnmeta.train.builders import (  # noqa: F401  (re-exported: the trainer's public building blocks)
    BenchmarkParts,
    augmented_source,
    build_benchmark,
    build_learner,
    build_model,
    import_plugins,
    lr_factor,
    make_optimizer,
    require_registered,
    resolve_device,
)
from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint, write_json_atomic
from attnmeta.train.config import RunConfig
from attnmeta.train.distributed import DistributedContext
from attnmeta.train.metrics_log import METRIC_COLUMNS, MetricsLog, read_metrics  # noqa: F401
from attnmeta.train.rng import preserved_rng, rng_state, seed_everything, set_rng_state  # noqa: F401
from attnmeta.train.run import NonFiniteLossError, Run, benchmark_parts
from attnmeta.train.run_folder import (  # noqa: F401
    RunExistsError,
    RunLock,
    RunLockedError,
    append_history,
    check_fresh_run_dir,
    load_run_config,
    write_config,
)

#: Config keys that ``--resume`` may change (recorded in the run's ``history.log``); the others define the
#: run (data, model, learner, optimizer state) and stay as saved.
RESUME_OVERRIDES = (
    "steps",
    "lr",
    "schedule",
    "min_lr_ratio",
    "warmup_steps",
    "step_size",
    "gamma",
    "grad_clip",
    "eval_every",
    "checkpoint_every",
    "keep_last",
    "test_episodes",
    "threads",
    "device",
    "plot",
    "retain_memory",
)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    test: EvalResult | None
    best: dict[str, Any] | None
    summary: dict[str, Any]
    config: RunConfig | None = None


def train(
    config: RunConfig,
    *,
    quiet: bool = False,
    resume: bool = False,
    evaluate_test: bool = True,
    print_fn: Callable[[str], None] = print,
    imports: Sequence[str] = (),
    changes: dict[str, Any] | None = None,
    bench: Any = None,
) -> TrainResult:
    """Meta-train ``config`` (or resume its run folder), then evaluate the best checkpoint on the test tasks.

    ``bench``: an already built benchmark (``attnmeta.data.benchmarks.make_benchmark(...)``, a
    ``BenchmarkParts`` or any object with ``task_type``, ``train`` / ``val`` / ``test`` task sources and
    ``input_shape``; see ``attnmeta.train.run.benchmark_parts``) to train on instead of building
    ``config.benchmark``; ``config.benchmark`` then becomes ``bench.name`` (what ``config.yaml`` records).
    Its ``train`` source is used as it is (its RNG position included) and moves as the run samples.
    Such a run resumes only with the same ``bench`` passed again.

    A fresh run imports ``config.imports`` (the caller wrote that config). A resumed run imports only
    ``imports``: the ``imports`` saved in a run folder are never executed (``require_registered``).
    ``changes`` are the keys (from ``RESUME_OVERRIDES``) a resume changed; they go to ``history.log``.
    The run folder is locked for the whole run (``RunLock``).

    Raises:
        NonFiniteLossError: the meta-loss became NaN/inf (checkpoints on disk stay intact).
        RunExistsError: a fresh run's ``run_dir`` is not empty.
        RunLockedError: another process trains in ``run_dir``.
    """
    default_folder = config.run_dir is None
    if bench is not None:
        bench = benchmark_parts(bench)
        if config.benchmark != bench.name:
            config = dataclasses.replace(config, benchmark=bench.name)
    config = config.resolved()
    assert config.run_dir is not None  # resolved() names the run folder
    if default_folder and not resume:  # never reuse a default run folder: runs/NAME, runs/NAME-2, ...
        base, n = config.run_dir, 1
        while Path(config.run_dir).exists() and any(Path(config.run_dir).iterdir()):
            n += 1
            config.run_dir = f"{base}-{n}"
    import_plugins(list(imports) if resume else config.imports)
    require_registered(config.algo, config.imports if resume else None)
    config.check_learner_options()  # again: a plugin's learner is registered only now
    run_dir = Path(config.run_dir)
    if not DistributedContext.from_environment("cpu").is_main:  # rank 0 owns (checks, locks) the folder
        return _train(config, run_dir, quiet, resume, evaluate_test, print_fn, bench)
    if not resume:
        check_fresh_run_dir(run_dir)
    created = not run_dir.exists()
    try:
        with RunLock(run_dir):
            if not resume:
                check_fresh_run_dir(run_dir)  # again under the lock: another process may have started here
            append_history(run_dir, _history_line(config, resume, changes))
            return _train(config, run_dir, quiet, resume, evaluate_test, print_fn, bench)
    except BaseException:
        _remove_if_untouched(run_dir, created)
        raise


def _remove_if_untouched(run_dir: Path, created: bool) -> None:
    """A fresh run refused before it wrote anything (bad options, data errors) leaves no folder behind."""
    if created and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".lock", "history.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _history_line(config: RunConfig, resume: bool, changes: dict[str, Any] | None) -> str:
    if not resume:
        return f"start: {config.algo} on {config.benchmark}, {config.steps} steps"
    changed = ", ".join(f"{k}={v!r}" for k, v in (changes or {}).items())
    return "resume" + (f" with {changed}" if changed else "")


def _train(
    config: RunConfig,
    run_dir: Path,
    quiet: bool,
    resume: bool,
    evaluate_test: bool,
    print_fn: Callable[[str], None],
    bench: BenchmarkParts | None = None,
) -> TrainResult:
    """The run itself, in a locked run folder: build, restore, loop (step, validate, save), test."""
    run_class = Run
    if config.task_type == "rl":
        from attnmeta.train.rl_run import RLRun as run_class
    elif config.task_type == "detection":
        from attnmeta.train.detection_run import DetectionRun as run_class
    elif config.task_type == "seq2seq":
        from attnmeta.train.seq2seq_run import Seq2SeqRun as run_class
    run = run_class(config, run_dir, print_fn, bench=bench)
    if resume:
        run.restore()
    run.write_run_files()
    log = MetricsLog(run_dir, enabled=run.main, resume_step=run.step)
    bar = tqdm(
        total=config.steps,
        initial=run.step,
        disable=quiet or not run.main,
        dynamic_ncols=True,
        desc=f"{config.algo} {config.benchmark}",
    )
    try:
        while run.step < config.steps and not run.budget_spent():
            metrics = run.train_step()
            log.write(run.step, "train", metrics)
            last = run.step == config.steps or run.budget_spent()
            is_best = False
            if run.main and run.validates and (run.step % config.eval_every == 0 or last):
                result, is_best = run.validate()
                log.write(
                    run.step,
                    "val",
                    {
                        run.metric: result.mean,
                        "ci95": result.ci95,
                        "train_seconds": run.wall,
                        "cpu_seconds": run.cpu,
                    },
                )
                if quiet:
                    print_fn(
                        f"step {run.step}/{config.steps}  loss {metrics['loss']:.4g}  validation {result}"
                    )
            if run.step % config.checkpoint_every == 0 or is_best or last:
                run.save(is_best)
            bar.update(1)
            if run.step % 10 == 0 or last:
                bar.set_postfix(
                    {k: f"{metrics[k]:.4g}" for k in ("loss", "accuracy", "mse", "return") if k in metrics},
                    refresh=False,
                )
    finally:
        bar.close()
        log.close()
    test = run.test(quiet) if run.main and evaluate_test else None
    summary = run.summary(test)
    if run.main:
        write_json_atomic(run_dir / "summary.json", summary)
        if test is not None:
            write_json_atomic(run_dir / "test_episodes.json", test.to_dict())
        if config.plot and importlib.util.find_spec("matplotlib") is not None:
            from attnmeta.plots import plot_runs

            plot_runs([run_dir], run_dir / "learning_curves.png")
    run.ctx.barrier()
    return TrainResult(run_dir, run.step, test, run.best, summary, config)


def final_weights(run_dir: str | Path) -> dict[str, Tensor]:
    """Weights of the newest checkpoint of a run (for comparisons and tests)."""
    manager = CheckpointManager(Path(run_dir) / "checkpoints")
    latest = manager.latest_valid()
    if latest is None:
        raise ValueError(f"run folder {str(run_dir)!r} has no valid checkpoint")
    return load_checkpoint(latest)[0]


__all__ = [
    "BenchmarkParts",
    "MetricsLog",
    "NonFiniteLossError",
    "RunExistsError",
    "TrainResult",
    "benchmark_parts",
    "build_benchmark",
    "build_learner",
    "build_model",
    "final_weights",
    "import_plugins",
    "load_run_config",
    "lr_factor",
    "RESUME_OVERRIDES",
    "RunLockedError",
    "read_metrics",
    "rng_state",
    "set_rng_state",
    "train",
]
