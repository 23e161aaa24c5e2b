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
import csv
import importlib
import importlib.util
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from tqdm.auto import tqdm

from attnmeta import learners
from attnmeta.eval import EvalResult, evaluate
from attnmeta.learners.base import Learner
from attnmeta.train.averaging import ParameterAverage
from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint, write_json_atomic
from attnmeta.train.config import RunConfig
from attnmeta.train.distributed import DistributedContext
from attnmeta.train.memory import retain_freed_memory

METRIC_COLUMNS = ("step", "phase", "loss", "accuracy", "mse", "ci95", "lr", "train_seconds")


class NonFiniteLossError(RuntimeError):
    """The meta-loss became NaN or infinite; the run stopped without overwriting any checkpoint."""


class RunExistsError(ValueError):
    """The run folder already holds a run."""


# -- building blocks: benchmark, model, learner ------------------------------------------------------
@dataclass
class BenchmarkParts:
    """What the trainer needs from a benchmark (mirrors ``attnmeta.data.benchmarks.Benchmark``)."""

    name: str
    task_type: str
    train: Any
    val: Any
    test: Any
    input_shape: tuple[int, ...]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    default_backbone: dict[str, Any] | str | None = None


def import_plugins(imports: list[str]) -> None:
    """Import modules (``"pkg.mod"``) or files (``"path/to/file.py"``), e.g. to register custom learners."""
    for item in imports:
        if item.endswith(".py"):
            path = Path(item).resolve()
            if not path.is_file():
                raise ValueError(f"config key 'imports': file {item!r} does not exist")
            name = f"attnmeta_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(item)
            except ImportError as error:
                raise ValueError(f"config key 'imports': cannot import {item!r} ({error})") from None


def build_benchmark(config: RunConfig) -> BenchmarkParts:
    """Task sources of ``config.benchmark`` from ``attnmeta.data.benchmarks.make_benchmark``."""
    from attnmeta.data.benchmarks import make_benchmark

    options = dict(config.benchmark_options)
    b = make_benchmark(
        config.benchmark,
        root=config.root,
        ways=config.ways,
        shots=config.shots,
        queries=config.queries,
        train_ways=config.train_ways,
        train_shots=config.train_shots,
        train_queries=config.train_queries,
        split=config.split,
        seed=config.seed,
        image_size=config.image_size,
        **options,
    )
    return BenchmarkParts(
        b.name,
        b.task_type,
        b.train,
        b.val,
        b.test,
        tuple(b.input_shape),
        dict(b.preprocessing or {}),
        b.default_backbone,
    )


def build_model(config: RunConfig, bench: BenchmarkParts) -> nn.Module:
    """The backbone: ``ways`` outputs for head learners (1 for regression), an embedding otherwise."""
    head = learners.spec(config.algo).head
    out_features = (1 if bench.task_type == "regression" else config.ways) if head else None
    from attnmeta.nn.backbones import build_backbone

    default = bench.default_backbone
    if isinstance(default, str) or default is None:
        default = {"name": default, "options": {}}
    name, options = default["name"], dict(default.get("options") or {})
    if config.backbone is not None and config.backbone != name:
        name, options = config.backbone, {}
    options.update(config.backbone_options)
    if name is None:
        raise ValueError(
            f"benchmark {bench.name!r} has no default backbone; pass --backbone conv4, resnet12 or mlp"
        )
    return build_backbone(name, in_shape=bench.input_shape, out_features=out_features, **options)


def build_learner(config: RunConfig, bench: BenchmarkParts) -> Learner:
    """Seeded model + learner from ``config`` (the same initial weights for the same seed)."""
    import_plugins(config.imports)
    torch.manual_seed(config.seed)
    model = build_model(config, bench)
    learner = learners.build(
        config.algo, model=model, task_type=bench.task_type, ways=config.ways, **config.algo_options
    )
    if config.train_ways is not None and config.train_ways != config.ways:
        if learners.spec(config.algo).head:
            raise ValueError(
                f"config key 'train_ways' ({config.train_ways}) must equal 'ways' ({config.ways}) for "
                f"{config.algo}: its model ends in a {config.ways}-output head; drop train_ways or use a "
                "metric learner such as protonet"
            )
        learner.check_training_ways(config.train_ways, config.ways)
    return learner.to(device=resolve_device(config.device), dtype=getattr(torch, config.dtype))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'device' is 'cuda' but no CUDA GPU is available; use device=cpu or auto")
    return torch.device(device)


def lr_factor(config: RunConfig, step: int) -> float:
    """Multiplier of ``config.lr`` at 1-based outer ``step`` (linear warm-up, then the schedule)."""
    if config.warmup_steps and step <= config.warmup_steps:
        return step / config.warmup_steps
    if config.schedule == "cosine":
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.gamma ** ((step - 1) // config.step_size)
    return 1.0


def make_optimizer(config: RunConfig, params: list[Tensor]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


# -- random number generators ----------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state: Python, NumPy, torch CPU (and CUDA when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (validation) without changing any global RNG, so evaluation never alters training."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


# -- metrics file -------------------------------------------------------------------------------------
class MetricsLog:
    """``metrics.csv`` (one row per train step and per validation) and TensorBoard when installed."""

    def __init__(self, run_dir: Path, *, enabled: bool, resume_step: int | None) -> None:
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.tensorboard = None
        if not enabled:
            return
        rows = read_metrics(self.path) if resume_step is not None and self.path.exists() else []
        rows = [r for r in rows if int(r["step"]) <= (resume_step or 0)]
        tmp = self.path.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, METRIC_COLUMNS)
        if importlib.util.find_spec("torch.utils.tensorboard") and importlib.util.find_spec("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=(resume_step or 0) + 1)

    def write(self, step: int, phase: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "phase": phase, **{k: _fmt(values.get(k)) for k in METRIC_COLUMNS[2:]}}
        self.writer.writerow(row)
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in values.items():
                if key not in ("lr", "train_seconds") or phase == "train":
                    self.tensorboard.add_scalar(f"{phase}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tensorboard is not None:
                self.tensorboard.close()


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` (a torn last line from a killed run is dropped)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r.get("train_seconds") is not None and r.get("step", "").isdigit()]


# -- the trainer ------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    test: EvalResult | None
    best: dict[str, Any] | None
    summary: dict[str, Any]


def train(
    config: RunConfig,
    *,
    quiet: bool = False,
    resume: bool = False,
    evaluate_test: bool = True,
    print_fn: Callable[[str], None] = print,
) -> TrainResult:
    """Meta-train ``config`` (or resume its run folder), then evaluate the best checkpoint on the test tasks.

    Raises:
        NonFiniteLossError: the meta-loss became NaN/inf (checkpoints on disk stay intact).
        RunExistsError: ``run_dir`` holds a run and ``resume`` is False.
    """
    default_folder = config.run_dir is None
    config = config.resolved()
    if default_folder and not resume:  # never reuse a default run folder: runs/NAME, runs/NAME-2, ...
        base, n = config.run_dir, 1
        while (Path(config.run_dir) / "checkpoints").is_dir():
            n += 1
            config.run_dir = f"{base}-{n}"
    import_plugins(config.imports)
    run_dir = Path(config.run_dir)
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
    if not resume and checkpoints.steps():
        raise RunExistsError(
            f"run folder {str(run_dir)!r} already holds a run; continue it with "
            f"`attnmeta train --resume {run_dir}` or choose another --run-dir"
        )

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
            learner.load_state_dict(weights)
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
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
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
                last = checkpoints.steps()
                where = f"step {last[-1]} in {checkpoints.directory}" if last else "none saved yet"
                raise NonFiniteLossError(
                    f"the meta-loss became {metrics['loss']} at step {step}; no update was applied and the "
                    f"last good checkpoint ({where}) is intact. Try a lower learning rate (--lr, now "
                    f"{lr:g}), gradient clipping (--set grad_clip=1.0), a smaller inner learning rate, or "
                    "--set dtype=float64; then resume with --resume or start a new run."
                )
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
            learner.load_state_dict(load_checkpoint(best_path)[0])
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
    return TrainResult(run_dir, step, test, best, summary)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run folder."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(
            f"{str(run_dir)!r} is not a run folder (no config.yaml); pass the folder written by "
            "`attnmeta train`"
        )
    return RunConfig.from_dict(yaml.safe_load(path.read_text()))


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
    "read_metrics",
    "rng_state",
    "set_rng_state",
    "train",
]
