"""A run's state between steps and the pieces of the loop: restore, one step, validate, save, test, summary.

``attnmeta.train.trainer.train`` reads top to bottom with these; a checkpoint holds all of the state, so a
resumed run continues exactly where the saved one stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnmeta import learners
from attnmeta.errors import UserError
from attnmeta.eval import EvalResult, evaluate, group_results, with_rotation_ensemble
from attnmeta.train.averaging import ParameterAverage
from attnmeta.train.builders import (
    BenchmarkParts,
    augmented_source,
    build_benchmark,
    build_learner,
    data_options,
    head_outputs,
    lr_factor,
    make_optimizer,
    resolve_device,
)
from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint, load_weights, write_json_atomic
from attnmeta.train.config import RunConfig
from attnmeta.train.distributed import DistributedContext
from attnmeta.train.memory import retain_freed_memory
from attnmeta.train.rng import preserved_rng, rng_state, seed_everything, set_rng_state
from attnmeta.train.run_folder import write_config
from attnmeta.train.summary import TIMING_NOTE, machine_info, time_to_targets


class NonFiniteLossError(UserError):
    """The meta-loss became NaN or infinite; the run stopped without overwriting any checkpoint."""


# -- the trainer ------------------------------------------------------------------------------------------

class Run:
    """Everything a run holds between steps, and the pieces of the loop: restore, step, validate, save,
    test, summary. A checkpoint holds all of it, so a resumed run continues exactly."""

    def __init__(
        self, config: RunConfig, run_dir: Path, print_fn: Callable[[str], None], bench: Any = None
    ) -> None:
        """``bench``: an already built benchmark (``benchmark_parts``); ``None`` builds
        ``config.benchmark`` (``build_benchmark``)."""
        self.config, self.run_dir, self.print_fn = config, run_dir, print_fn
        self.device, self.dtype = resolve_device(config.device), getattr(torch, config.dtype)
        self.ctx = DistributedContext.from_environment(str(self.device))
        if self.ctx.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
            torch.cuda.set_device(self.device)
        self.main = self.ctx.is_main
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.retain_memory and self.device.type == "cpu":
            retain_freed_memory()
        self.checkpoints = CheckpointManager(run_dir / "checkpoints", keep_last=config.keep_last)
        seed_everything(config.seed)
        self.step, self.wall, self.cpu = 0, 0.0, 0.0
        self.best: dict[str, Any] | None = None
        self.history: list[list[float]] = []  # [step, value, wall seconds, cpu seconds] per validation
        self.test_groups: dict[str, Any] = {}  # test results per episode source (multi-domain benchmarks)
        self.build(bench)

    def build(self, bench: Any) -> None:
        """Benchmark, learner, optimizer, validation tasks, the metric and ``run.json``'s contents."""
        config = self.config
        self.bench = build_benchmark(config) if bench is None else benchmark_parts(bench)
        if config.augment:
            self.bench.train = augmented_source(self.bench.train, config.augment, config.seed, self.bench)
        config.algo_options = {**data_options(config, self.bench), **config.algo_options}
        self.learner = build_learner(config, self.bench)
        if config.channels_last:
            # Module.to takes memory_format at run time; torch's overloads of Module.to leave it out
            self.learner = self.learner.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.params = [p for p in self.learner.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"learner {config.algo!r} has no trainable parameters")
        self.optimizer = make_optimizer(config, self.params)
        self.average = (
            ParameterAverage(self.learner, config.ema_decay) if config.ema_decay is not None else None
        )
        self.evaluated = (
            with_rotation_ensemble(self.learner) if config.test_rotation_ensemble else self.learner
        )
        self.val_tasks = [
            t.to(self.device, self.dtype)
            for t in self.bench.val.fixed_tasks(config.eval_episodes, seed=config.val_seed)
        ]
        classification = self.bench.task_type == "classification"
        self.metric, self.higher_better = ("accuracy", True) if classification else ("mse", False)
        head = learners.spec(config.algo).head and classification
        self.run_info = {
            "benchmark": self.bench.name,
            "task_type": self.bench.task_type,
            "input_shape": list(self.bench.input_shape),
            "preprocessing": self.bench.preprocessing,
            "default_backbone": self.bench.default_backbone,
            "ways": config.ways,
            "max_ways": head_outputs(config) if head else None,
            "algo": config.algo,
            "any_ways": bool(getattr(self.learner, "any_ways", True)),
        }

    def require_own_benchmark(self, bench: Any, family: str) -> None:
        """Runs of a task family that builds its own tasks (``family``: "meta-RL", "detection") take no
        ``bench=`` and train in one process."""
        if bench is not None:
            raise UserError(f"bench= is for classification and regression runs; {family} runs build their "
                            f"tasks from config.benchmark ({self.config.benchmark!r})")
        if self.ctx.enabled:
            raise UserError(f"{family} runs train in one process; run `attnmeta train` without torchrun")

    def refuse_keys(self, neutral: dict[str, Any], family: str) -> None:
        """Refuse config keys of classification runs that a ``family`` run does not use (unless neutral)."""
        for key, value in neutral.items():
            if getattr(self.config, key) != value:
                raise UserError(f"config key {key!r} is for classification runs; {family} benchmark "
                                f"{self.config.benchmark!r} does not use it: drop it")

    def averaged(self) -> contextlib.AbstractContextManager:
        """The averaged parameters in the learner while validating, testing and saving (if ``ema_decay``)."""
        return self.average.applied(self.learner) if self.average is not None else contextlib.nullcontext()

    def budget_spent(self) -> bool:
        budget = self.config.budget_minutes
        if budget is None:
            return False
        used = self.cpu if self.config.budget_clock == "cpu" else self.wall
        spent = float(used >= 60 * budget)
        # every rank stops at the same step: the ranks' clocks differ
        return self.ctx.average_metrics({"spent": spent}, 1, 1, self.device)["spent"] > 0

    # -- restore and save ------------------------------------------------------------------------------
    def restore(self) -> None:
        """Everything from the newest valid checkpoint (weights, optimizer, sampler, RNGs, clocks)."""
        latest = self.checkpoints.latest_valid(report=self.print_fn if self.main else lambda _: None)
        if latest is None:
            if self.main:
                self.print_fn(f"no checkpoint in {self.run_dir}; starting from step 0")
            return
        weights, state = load_checkpoint(latest)
        load_weights(self.learner, weights, latest)
        if state["step"] > self.config.steps:
            raise UserError(
                f"{latest} is at step {state['step']}, past the run's {self.config.steps} steps; "
                f"resume with --steps {state['step'] + 1} or more to train further"
            )
        if (self.average is not None) != ("ema_updates" in state):
            raise UserError(
                f"{latest} was saved {'without' if self.average is not None else 'with'} ema_decay, but the "
                f"config resuming it has ema_decay={self.config.ema_decay}; resume with the run's own config "
                f"(`attnmeta train --resume {self.run_dir}` reads it from the run folder)"
            )
        if self.average is not None:  # the weights are the average; the trained values are in the state
            self.average.load_state_dict(
                {
                    "decay": self.config.ema_decay,
                    "updates": state["ema_updates"],
                    "averages": {name: weights[name] for name in self.average.names},
                }
            )
            trained_now = dict(self.learner.named_parameters())
            with torch.no_grad():
                for name, value in state["trained_parameters"].items():
                    trained_now[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.bench.train.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step, self.wall, self.best = state["step"], state["train_seconds"], state["best"]
        self.cpu, self.history = state.get("train_cpu_seconds", 0.0), state.get("history", [])
        self.ctx.barrier()
        if self.main:
            self.checkpoints.discard_after(self.step)
            if self.best is not None and self.checkpoints.path(self.best["step"]).is_dir():
                write_json_atomic(self.checkpoints.directory / "best.json", self.best)
            self.print_fn(f"resuming {self.run_dir} from step {self.step} of {self.config.steps}")

    def write_run_files(self) -> None:
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir, self.config)
            write_json_atomic(self.run_dir / "run.json", self.run_info)

    def save(self, is_best: bool) -> None:
        if not self.main:
            return
        state = {
            "step": self.step,
            "train_seconds": self.wall,
            "train_cpu_seconds": self.cpu,
            "best": self.best,
            "history": self.history,
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.bench.train.state_dict(),
            "rng": rng_state(),
            "config": self.config.to_storable_dict(),
            "run": self.run_info,
        }
        if self.average is not None:
            state["ema_updates"] = self.average.updates
            state["trained_parameters"] = {
                name: p.detach().clone()
                for name, p in self.learner.named_parameters()
                if name in self.average.names
            }
        with self.averaged():
            self.checkpoints.save(
                self.step, self.learner.state_dict(), state, best=self.best if is_best else None
            )

    # -- one step, validation, test ---------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One outer step: sample, meta-loss, backward, (all-reduce), clip, update. Returns its metrics."""
        wall0, cpu0 = time.perf_counter(), time.process_time()
        self.step += 1
        lr = self.config.lr * lr_factor(self.config, self.step, self.budget_fraction())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.learner.train()
        batch = self.bench.train.sample_batch(self.config.meta_batch).to(self.device, self.dtype)
        shard = self.ctx.shard(batch)
        out = self.learner.meta_loss(shard)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.ctx.average_gradients(self.learner, len(shard), len(batch))
        metrics = {"loss": out.loss.item(), **{k: float(v) for k, v in out.metrics.items() if k != "loss"}}
        metrics = self.ctx.average_metrics(metrics, len(shard), len(batch), self.device)
        if not math.isfinite(metrics["loss"]):
            raise NonFiniteLossError(
                _divergence_message(
                    metrics["loss"], self.step, self.config.lr, self.checkpoints, self.run_dir
                )
            )
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.learner)
        self.wall += time.perf_counter() - wall0
        self.cpu += time.process_time() - cpu0
        return {**metrics, "lr": lr, "train_seconds": self.wall, "cpu_seconds": self.cpu}

    def budget_fraction(self) -> float:
        """How much of the time budget the training steps have used, in [0, 1] (0 without a budget)."""
        if self.config.budget_minutes is None:
            return 0.0
        used = self.cpu if self.config.budget_clock == "cpu" else self.wall
        return min(1.0, used / (60 * self.config.budget_minutes))

    @property
    def validates(self) -> bool:
        """Whether the loop validates (a learner with nothing to train has nothing to choose between)."""
        return True

    def validate(self) -> tuple[EvalResult, bool]:
        """Evaluate on the fixed validation tasks without touching any RNG; is it the best so far?"""
        with preserved_rng(), self.averaged():
            result = self.evaluate_validation()
        self.history.append([self.step, result.mean, self.wall, self.cpu])
        best = self.best
        better = best is None or (
            result.mean > best["value"] if self.higher_better else result.mean < best["value"]
        )
        if better:
            self.best = {"step": self.step, "metric": self.metric, "value": result.mean}
        return result, better

    def evaluate_validation(self) -> EvalResult:
        return evaluate(self.evaluated, self.val_tasks, device=self.device)

    def load_best(self) -> None:
        """The best checkpoint's weights (the newest without validation) into the learner."""
        best_path = self.checkpoints.best_path() or self.checkpoints.path(self.step)
        if best_path.is_dir():
            load_weights(self.learner, load_checkpoint(best_path)[0], best_path)

    def test(self, quiet: bool) -> EvalResult:
        """The best checkpoint (the newest without validation) on the fixed test tasks."""
        self.load_best()
        tasks = [
            t.to(self.device, self.dtype)
            for t in self.bench.test.fixed_tasks(self.config.test_episodes, seed=self.config.test_seed)
        ]
        result = evaluate(self.evaluated, tasks, device=self.device, progress=not quiet, desc="test")
        self.test_groups = {name: {"mean": s.mean, "ci95": s.ci95, "n": s.n}
                            for name, s in group_results(result, tasks, "source").items()}
        return result

    def summary(self, test: EvalResult | None) -> dict[str, Any]:
        c = self.config
        return {
            "run_dir": str(self.run_dir),
            "benchmark": c.benchmark,
            "algo": c.algo,
            "ways": c.ways,
            "shots": c.shots,
            "queries": c.queries,
            "steps": self.step,
            "train_seconds": self.wall,
            "train_cpu_seconds": self.cpu,
            "timing": TIMING_NOTE,
            "budget": None
            if c.budget_minutes is None
            else {"minutes": c.budget_minutes, "clock": c.budget_clock},
            "best": self.best,
            "time_to": time_to_targets(self.history, self.metric),
            "test": None if test is None else {k: v for k, v in test.to_dict().items() if k != "per_episode"},
            **({"test_per_source": self.test_groups} if self.test_groups else {}),
            "test_rotation_ensemble": c.test_rotation_ensemble,
            "device": self.device.type,
            "machine": machine_info(),
        }


def benchmark_parts(bench: Any) -> BenchmarkParts:
    """The trainer's view of an already built benchmark: a ``BenchmarkParts``, an
    ``attnmeta.data.benchmarks.Benchmark`` or any object with ``task_type``, ``train`` / ``val`` / ``test``
    task sources and ``input_shape`` (``name``, ``preprocessing`` and ``default_backbone`` optional).

    The task sources are shared, not copied (training moves the ``train`` source's RNG); the view itself is
    new, so that training-time augmentation never replaces the caller's ``train`` source.
    """
    needed = ("task_type", "train", "val", "test", "input_shape")
    missing = [name for name in needed if not hasattr(bench, name)]
    if missing:
        raise TypeError(
            f"bench must be a built benchmark (attnmeta.data.benchmarks.make_benchmark(...) or "
            f"attnmeta.train.builders.BenchmarkParts); {type(bench).__name__} has no {', '.join(missing)}"
        )
    if bench.task_type not in ("classification", "regression"):
        raise ValueError(
            f"bench.task_type must be 'classification' or 'regression', got {bench.task_type!r}"
        )
    return BenchmarkParts(
        str(getattr(bench, "name", None) or "custom"),
        bench.task_type,
        bench.train,
        bench.val,
        bench.test,
        tuple(bench.input_shape),
        dict(getattr(bench, "preprocessing", None) or {}),
        getattr(bench, "default_backbone", None),
    )


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
        on_disk = (
            f"checkpoints on disk are unchanged; the newest (step {saved[-1]}) had a finite loss, "
            "but its weights may already be heading the same way"
        )
        then = (
            f"continue from it with a lower rate: `attnmeta train --resume {run_dir} --lr {lr / 10:g}`, "
            "or start a new run"
        )
    return (
        f"the meta-loss became {loss} at step {step} and no update was applied; {on_disk}. Try a lower "
        "learning rate, gradient clipping (--set grad_clip=1.0), a smaller inner learning rate or "
        f"--set dtype=float64: {then}"
    )


def summary_of(result: EvalResult) -> dict[str, Any]:
    """``result.to_dict()`` without the per-episode values (for ``summary.json``)."""
    return {k: v for k, v in result.to_dict().items() if k != "per_episode"}
