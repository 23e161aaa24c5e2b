"""Meta-RL runs in the one trainer: the same loop, run folder, checkpoints, resume and summary as any run.

A meta-RL learner (``maml-rl``, ``snail-rl``) owns its outer update (TRPO's line search, PPO's epochs), so
one trainer step is ``learner.train_iteration(tasks)`` on a meta-batch from the task family instead of
``meta_loss -> backward -> optimizer.step``. Rollouts draw from the global torch RNG, which every checkpoint
holds: a resumed run continues exactly. The metric is the average return on fixed tasks after adaptation:
one policy-gradient step for ``maml-rl`` (the MAML paper's protocol), the last episode of a trial for
``snail-rl``; the test also records the whole adaptation curve (``summary.json`` ``adaptation``) and
plots it (``adaptation.png``).
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnmeta.errors import UserError
from attnmeta.eval import EvalResult
from attnmeta.rl.evaluate import AdaptationCurve, evaluate_learner, plot_adaptation
from attnmeta.rl.maml_rl import MAMLRL
from attnmeta.rl.registry import build_rl_learner, rl_benchmark
from attnmeta.rl.snail_policy import SNAILRL
from attnmeta.train.builders import BenchmarkParts
from attnmeta.train.run import NonFiniteLossError, Run

#: Config keys of image and supervised runs that mean nothing for meta-RL (refused, with their value).
NOT_FOR_RL: dict[str, Any] = {
    "augment": {}, "ema_decay": None, "test_rotation_ensemble": False, "channels_last": False,
    "train_ways": None, "train_shots": None, "train_queries": None, "grad_clip": None,
    "dtype": "float32", "backbone": None}


class LearnerOptimizers:
    """The optimizers a meta-RL learner steps itself (PPO's Adam, task attention's Adam; none for TRPO) as
    one object with ``state_dict`` / ``load_state_dict``, for checkpoints."""

    def __init__(self, learner: torch.nn.Module) -> None:
        self.optimizers = {
            name: value for name, value in vars(learner).items() if isinstance(value, torch.optim.Optimizer)
        }

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


class RLRun(Run):
    """A ``Run`` whose step is one meta-RL iteration and whose metric is the return after adaptation."""

    # A meta-RL learner, which steps its own optimizers, replaces the supervised learner and optimizer of
    # ``Run``: the methods of ``Run`` that this class keeps use only their nn.Module / state_dict API.
    learner: MAMLRL | SNAILRL  # type: ignore[assignment]
    evaluated: MAMLRL | SNAILRL  # type: ignore[assignment]
    optimizer: LearnerOptimizers  # type: ignore[assignment]

    def build(self, bench: Any) -> None:
        config = self.config
        self.require_own_benchmark(bench, "meta-RL")
        _refuse_supervised_keys(config)
        spec = rl_benchmark(config.benchmark)
        self.bench = BenchmarkParts(
            spec.name, "rl", spec.make_family(config.seed), spec.make_family(config.seed + 1),
            spec.make_family(config.seed + 2), (spec.obs_dim,),
            {"act_dim": spec.act_dim, "horizon": spec.horizon},
        )
        torch.manual_seed(config.seed)
        self.learner = build_rl_learner(config.algo, config.benchmark, config.algo_options)
        self.params = [p for p in self.learner.parameters() if p.requires_grad]
        self.optimizer = LearnerOptimizers(self.learner)
        self.average, self.evaluated = None, self.learner
        self.val_tasks = self.bench.val.fixed_tasks(config.eval_episodes, seed=config.val_seed)
        self.metric, self.higher_better = "return", True
        self.adaptation: dict[str, Any] | None = None
        self.run_info = {
            "benchmark": spec.name,
            "task_type": "rl",
            "input_shape": [spec.obs_dim],
            "preprocessing": dict(self.bench.preprocessing),
            "default_backbone": None,
            "ways": None,
            "max_ways": None,
            "algo": config.algo,
            "any_ways": True,
        }

    def train_step(self) -> dict[str, float]:
        """One meta-RL iteration: sample ``meta_batch`` tasks, roll out, adapt, update the policy."""
        wall0, cpu0 = time.perf_counter(), time.process_time()
        self.step += 1
        self.learner.train()
        tasks = self.bench.train.sample_batch(self.config.meta_batch)
        metrics = self.learner.train_iteration(torch.stack([t.env_params for t in tasks]))
        loss = metrics.get("surrogate_after", metrics.get("surrogate", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the surrogate loss became {loss} at step {self.step}; checkpoints on disk are unchanged. "
                "Try a smaller step (algo_options.max_kl for TRPO, ppo_lr or lr for PPO) or inner_lr"
            )
        self.wall += time.perf_counter() - wall0
        self.cpu += time.process_time() - cpu0
        return {"loss": loss, "return": _adapted_return(self.learner, metrics), **metrics,
                "train_seconds": self.wall, "cpu_seconds": self.cpu}

    def evaluate_validation(self) -> EvalResult:
        return evaluate_rl(self.learner, self.val_tasks, self.config.val_seed, steps=1)[0]

    def test(self, quiet: bool) -> EvalResult:
        """The best checkpoint on the fixed test tasks: the return after adaptation, and the whole curve."""
        self.load_best()
        tasks = self.bench.test.fixed_tasks(self.config.test_episodes, seed=self.config.test_seed)
        result, curve = evaluate_rl(self.learner, tasks, self.config.test_seed)
        self.adaptation = {k: v for k, v in curve.as_dict().items() if k != "per_task"}
        if self.main and self.config.plot and importlib.util.find_spec("matplotlib") is not None:
            plot_adaptation([curve], str(self.run_dir / "adaptation.png"), title=self.config.benchmark)
        return result

    def summary(self, test: EvalResult | None) -> dict[str, Any]:
        return {**super().summary(test), "adaptation": self.adaptation, "metric_note": METRIC_NOTE}


METRIC_NOTE = ("return: average undiscounted return per task on fixed tasks, after one policy-gradient step "
               "(maml-rl) or in the last episode of a trial (snail-rl); adaptation: the curve over steps "
               "(maml-rl) or episodes of the trial (snail-rl)")


def evaluate_rl(learner: MAMLRL | SNAILRL, tasks: list, seed: int,
                steps: int | None = None) -> tuple[EvalResult, AdaptationCurve]:
    """Return after adaptation on ``tasks`` (``EvalResult`` with metric ``"return"``, one value per task)
    and the adaptation curve (``steps``: policy-gradient steps of ``maml-rl``; ``None`` = its default)."""
    start = time.perf_counter()
    curve = evaluate_learner(learner, tasks, steps=steps, seed=seed)
    index = 1 if isinstance(learner, MAMLRL) else -1
    seconds = (time.perf_counter() - start) / len(tasks)
    return EvalResult("return", curve.per_task[index], seconds), curve


def _adapted_return(learner: MAMLRL | SNAILRL, metrics: dict[str, float]) -> float:
    if isinstance(learner, MAMLRL):
        return metrics["return_after"]
    return metrics[f"return_ep{learner.episodes_per_trial - 1}"]


def _refuse_supervised_keys(config: Any) -> None:
    for key, neutral in NOT_FOR_RL.items():
        if getattr(config, key) != neutral:
            raise UserError(
                f"config key {key!r} is for classification and regression runs; meta-RL benchmark "
                f"{config.benchmark!r} does not use it: drop it"
            )


@dataclass
class RLEvalReport:
    """``attnmeta eval`` of a meta-RL run: the adaptation curve and where it was written."""

    curve: AdaptationCurve
    checkpoint: Path
    step: int
    path: Path
    unit: str  # "step" (maml-rl: policy-gradient steps) or "episode" (snail-rl: episodes of a trial)

    def table(self) -> str:
        rows = [f"{self.unit:<8}  mean return +/- 95% CI  (over {len(self.curve.per_task[0])} tasks)"]
        rows += [f"{k:<8}  {s.mean:.2f} +/- {s.ci95:.2f}" for k, s in enumerate(self.curve.summary)]
        return "\n".join(rows)


def evaluate_rl_run(run_dir: str | Path, config: Any, *, checkpoint: str = "best", tasks: int = 40,
                    seed: int = 0, adapt_steps: int = 3) -> RLEvalReport:
    """The run's best (or newest) checkpoint on ``tasks`` fixed test tasks of seed ``seed``; writes
    ``eval-rl-<tasks>tasks-<steps>steps-seed<seed>.json`` into the run folder."""
    from attnmeta.train.checkpoint import load_checkpoint, load_weights, run_checkpoint, write_json_atomic
    from attnmeta.train.run_folder import check_writable

    run_dir = Path(run_dir)
    if tasks < 1 or adapt_steps < 1:
        raise UserError(f"--episodes (test tasks) and --adapt-steps must be >= 1, got {tasks}, {adapt_steps}")
    path = run_checkpoint(run_dir, checkpoint)
    check_writable(run_dir, "the evaluation results")
    weights, state = load_checkpoint(path)
    spec = rl_benchmark(config.benchmark)
    torch.manual_seed(config.seed)
    learner = build_rl_learner(config.algo, config.benchmark, config.algo_options)
    load_weights(learner, weights, path)
    test_tasks = spec.make_family(config.seed + 2).fixed_tasks(tasks, seed=seed)
    result, curve = evaluate_rl(learner, test_tasks, seed, adapt_steps)
    out = run_dir / f"eval-rl-{tasks}tasks-{adapt_steps}steps-seed{seed}.json"
    write_json_atomic(out, {"checkpoint": str(path), "step": state["step"], "metric_note": METRIC_NOTE,
                            "return": {k: v for k, v in result.to_dict().items() if k != "per_episode"},
                            "adaptation": curve.as_dict()})
    unit = "step" if isinstance(learner, MAMLRL) else "episode"
    return RLEvalReport(curve, path, state["step"], out, unit)
