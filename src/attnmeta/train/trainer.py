"""One trainer for every learner, readable top to bottom.

``train(config)`` builds the benchmark (task sources), the model and the learner, then loops:
sample a meta-batch -> ``learner.meta_loss`` -> backward -> (all-reduce) -> outer optimizer step,
validating on fixed episodes every ``eval_every`` steps and checkpointing every ``checkpoint_every`` steps.
A checkpoint holds every RNG state and the task source's position, so ``resume`` continues exactly where
the run stopped: a run killed at any moment and resumed ends with bit-identical weights.

The run folder holds ``config.yaml`` (resolved config), ``run.json`` (what the predictor needs to rebuild
the model: task type, input shape, preprocessing), ``checkpoints/``, ``metrics.csv``, ``summary.json`` and
``learning_curves.png``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attnmeta import learners
from attnmeta.errors import UserError
from attnmeta.eval import EvalResult, evaluate
from attnmeta.train.averaging import ParameterAverage
from attnmeta.train.builders import (  # noqa: F401  (re-exported: the trainer's public building blocks)
    BenchmarkParts,
    build_benchmark,
    build_learner,
    build_model,
    import_plugins,
    lr_factor,
    make_optimizer,
    require_registered,
    resolve_device,
)
from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint, load_weights, write_json_atomic
from attnmeta.train.config import RunConfig
from attnmeta.train.distributed import DistributedContext
from attnmeta.train.memory import retain_freed_memory
from attnmeta.train.metrics_log import METRIC_COLUMNS, MetricsLog, read_metrics  # noqa: F401
from attnmeta.train.rng import preserved_rng, rng_state, seed_everything, set_rng_state  # noqa: F401
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
RESUME_OVERRIDES = ("steps", "lr", "schedule", "min_lr_ratio", "warmup_steps", "step_size", "gamma",
                    "grad_clip", "eval_every", "checkpoint_every", "keep_last", "test_episodes", "threads",
                    "device", "plot", "retain_memory")


class NonFiniteLossError(UserError):
    """The meta-loss became NaN or infinite; the run stopped without overwriting any checkpoint."""


# -- the trainer ------------------------------------------------------------------------------------------
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
) -> TrainResult:
    """Meta-train ``config`` (or resume its run folder), then evaluate the best checkpoint on the test tasks.

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
    config = config.resolved()
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
        return _train(config, run_dir, quiet, resume, evaluate_test, print_fn)
    if not resume:
        check_fresh_run_dir(run_dir)
    created = not run_dir.exists()
    try:
        with RunLock(run_dir):
            if not resume:
                check_fresh_run_dir(run_dir)  # again under the lock: another process may have started here
            append_history(run_dir, _history_line(config, resume, changes))
            return _train(config, run_dir, quiet, resume, evaluate_test, print_fn)
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
) -> TrainResult:
    """The run itself, in a locked run folder."""
    device, dtype = resolve_device(config.device), getattr(torch, config.dtype)
    ctx = DistributedContext.from_environment(str(device))
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    main = ctx.is_main
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.retain_memory and device.type == "cpu":
        retain_freed_memory()
    checkpoints = CheckpointManager(run_dir / "checkpoints", keep_last=config.keep_last)

    # 1. Benchmark, learner, optimizer, fixed validation episodes.
    seed_everything(config.seed)
    bench = build_benchmark(config)
    learner = build_learner(config, bench)
    params = [p for p in learner.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"learner {config.algo!r} has no trainable parameters")
    optimizer = make_optimizer(config, params)
    average = ParameterAverage(learner, config.ema_decay) if config.ema_decay is not None else None

    def averaged() -> contextlib.AbstractContextManager:
        """The averaged parameters in the learner while validating, testing and saving (if ``ema_decay``)."""
        return average.applied(learner) if average is not None else contextlib.nullcontext()

    val_tasks = [
        t.to(device, dtype) for t in bench.val.fixed_tasks(config.eval_episodes, seed=config.val_seed)
    ]
    metric, higher_better = ("accuracy", True) if bench.task_type == "classification" else ("mse", False)

    # 2. Fresh run folder, or restore everything from the newest valid checkpoint.
    start_step, train_seconds, best = 0, 0.0, None
    if resume:
        latest = checkpoints.latest_valid(report=print_fn if main else lambda _: None)
        if latest is not None:
            weights, state = load_checkpoint(latest)
            load_weights(learner, weights, latest)
            if state["step"] > config.steps:
                raise UserError(
                    f"{latest} is at step {state['step']}, past the run's {config.steps} steps; resume with "
                    f"--steps {state['step'] + 1} or more to train further"
                )
            if (average is not None) != ("ema_updates" in state):
                raise ValueError(
                    f"{latest} was saved {'without' if average is not None else 'with'} ema_decay, but the "
                    f"config resuming it has ema_decay={config.ema_decay}; resume with the run's own config "
                    f"(`attnmeta train --resume {run_dir}` reads it from the run folder)"
                )
            if average is not None:  # the weights are the average; the trained values are in the state
                average.load_state_dict({"decay": config.ema_decay, "updates": state["ema_updates"],
                                         "averages": {name: weights[name] for name in average.names}})
                trained_now = dict(learner.named_parameters())
                with torch.no_grad():
                    for name, value in state["trained_parameters"].items():
                        trained_now[name].copy_(value)
            optimizer.load_state_dict(state["optimizer"])
            bench.train.load_state_dict(state["sampler"])
            set_rng_state(state["rng"])
            start_step, train_seconds, best = state["step"], state["train_seconds"], state["best"]
            ctx.barrier()
            if main:
                checkpoints.discard_after(start_step)
                if best is not None and checkpoints.path(best["step"]).is_dir():
                    write_json_atomic(checkpoints.directory / "best.json", best)
                print_fn(f"resuming {run_dir} from step {start_step} of {config.steps}")
        elif main:
            print_fn(f"no checkpoint in {run_dir}; starting from step 0")
    head = learners.spec(config.algo).head and bench.task_type == "classification"
    run_info = {
        "benchmark": bench.name,
        "task_type": bench.task_type,
        "input_shape": list(bench.input_shape),
        "preprocessing": bench.preprocessing,
        "default_backbone": bench.default_backbone,
        "ways": config.ways,
        "max_ways": config.ways if head else None,
        "algo": config.algo,
        "any_ways": bool(getattr(learner, "any_ways", True)),
    }
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, config)
        write_json_atomic(run_dir / "run.json", run_info)
    log = MetricsLog(run_dir, enabled=main, resume_step=start_step)

    def save(step: int, is_best: bool) -> None:
        if not main:
            return
        state = {
            "step": step,
            "train_seconds": train_seconds,
            "best": best,
            "optimizer": optimizer.state_dict(),
            "sampler": bench.train.state_dict(),
            "rng": rng_state(),
            "config": config.to_dict(),
            "run": run_info,
        }
        if average is not None:
            state["ema_updates"] = average.updates
            state["trained_parameters"] = {name: p.detach().clone()
                                           for name, p in learner.named_parameters() if name in average.names}
        with averaged():
            checkpoints.save(step, learner.state_dict(), state, best=best if is_best else None)

    # 3. The loop.
    bar = tqdm(
        total=config.steps,
        initial=start_step,
        disable=quiet or not main,
        dynamic_ncols=True,
        desc=f"{config.algo} {config.benchmark}",
    )
    step = start_step
    try:
        for step in range(start_step + 1, config.steps + 1):
            started = time.perf_counter()
            lr = config.lr * lr_factor(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            learner.train()
            batch = bench.train.sample_batch(config.meta_batch).to(device, dtype)
            shard = ctx.shard(batch)
            out = learner.meta_loss(shard)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            ctx.average_gradients(learner, len(shard), len(batch))
            metrics = {
                "loss": out.loss.item(),
                **{k: float(v) for k, v in out.metrics.items() if k != "loss"},
            }
            metrics = ctx.average_metrics(metrics, len(shard), len(batch), device)
            if not math.isfinite(metrics["loss"]):
                raise NonFiniteLossError(_divergence_message(metrics["loss"], step, config.lr, checkpoints,
                                                             run_dir))
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            if average is not None:
                average.update(learner)
            train_seconds += time.perf_counter() - started
            log.write(step, "train", {**metrics, "lr": lr, "train_seconds": train_seconds})

            is_best = False
            if main and (step % config.eval_every == 0 or step == config.steps):
                with preserved_rng(), averaged():
                    result = evaluate(learner, val_tasks, device=device)
                log.write(
                    step, "val", {metric: result.mean, "ci95": result.ci95, "train_seconds": train_seconds}
                )
                better = best is None or (
                    result.mean > best["value"] if higher_better else result.mean < best["value"]
                )
                if better:
                    best, is_best = {"step": step, "metric": metric, "value": result.mean}, True
                if quiet:
                    print_fn(f"step {step}/{config.steps}  loss {metrics['loss']:.4g}  validation {result}")
            if step % config.checkpoint_every == 0 or is_best or step == config.steps:
                save(step, is_best)
            bar.update(1)
            if step % 10 == 0 or step == config.steps:
                shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "accuracy", "mse")}
                bar.set_postfix(shown, refresh=False)
    finally:
        bar.close()
        log.close()

    # 4. Test the best checkpoint on the fixed test tasks; write the summary and the plot.
    test = None
    if main and evaluate_test:
        best_path = checkpoints.best_path() or checkpoints.path(config.steps)
        if best_path.is_dir():
            load_weights(learner, load_checkpoint(best_path)[0], best_path)
        test_tasks = [
            t.to(device, dtype) for t in bench.test.fixed_tasks(config.test_episodes, seed=config.test_seed)
        ]
        test = evaluate(learner, test_tasks, device=device, progress=not quiet, desc="test")
    summary = {
        "run_dir": str(run_dir),
        "benchmark": config.benchmark,
        "algo": config.algo,
        "ways": config.ways,
        "shots": config.shots,
        "queries": config.queries,
        "steps": step,
        "train_seconds": train_seconds,
        "best": best,
        "test": None if test is None else {k: v for k, v in test.to_dict().items() if k != "per_episode"},
    }
    if main:
        write_json_atomic(run_dir / "summary.json", summary)
        if test is not None:
            write_json_atomic(run_dir / "test_episodes.json", test.to_dict())
        if config.plot and importlib.util.find_spec("matplotlib") is not None:
            from attnmeta.plots import plot_runs

            plot_runs([run_dir], run_dir / "learning_curves.png")
    ctx.barrier()
    return TrainResult(run_dir, step, test, best, summary, config)


def _divergence_message(
    loss: float, step: int, lr: float, checkpoints: CheckpointManager, run_dir: Path
) -> str:
    """What happened, what is on disk (truthfully), and the command that continues with a lower rate
    (``lr``: the run's base learning rate, as ``--lr`` sets it)."""
    saved = checkpoints.steps()
    if not saved:
        on_disk = "no checkpoint was saved yet"
        then = f"start a new run with a lower --lr (now {lr:g})"
    else:
        on_disk = (f"checkpoints on disk are unchanged; the newest (step {saved[-1]}) had a finite loss, "
                   "but its weights may already be heading the same way")
        then = (f"continue from it with a lower rate: `attnmeta train --resume {run_dir} --lr {lr / 10:g}`, "
                "or start a new run")
    return (f"the meta-loss became {loss} at step {step} and no update was applied; {on_disk}. Try a lower "
            "learning rate, gradient clipping (--set grad_clip=1.0), a smaller inner learning rate or "
            f"--set dtype=float64: {then}")


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
