"""Few-shot sequence-to-sequence runs in the one trainer: the same loop, run folder, checkpoints, resume and
summary.

A step samples ``meta_batch`` training tasks (a language's pairs, ``shots`` support and ``queries`` query
pairs), takes the learner's ``meta_loss`` and one optimiser step. The metric is exact-match accuracy over
the validation tasks (each: adapt on its support pairs, generate its queries); the test reports the mean
Levenshtein distance and the per-task table beside it. A learner without meta-training (``scratch``) takes no
step and does not validate (there is one model: nothing to choose); its run saves once and tests. The
vocabulary is stored in ``run.json`` (the predictor rebuilds the model from it without the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnmeta.data.seq2seq_benchmarks import source_format
from attnmeta.errors import UserError
from attnmeta.eval import EvalResult
from attnmeta.eval.seq2seq import METRIC_NOTE, Seq2SeqEvalResult, evaluate_seq2seq
from attnmeta.learners.seq2seq.base import Seq2SeqLearner
from attnmeta.learners.seq2seq.registry import build_seq2seq
from attnmeta.tasks.seq2seq import Vocabulary
from attnmeta.train.builders import default_data_root, make_optimizer
from attnmeta.train.detection_run import NothingToOptimize
from attnmeta.train.run import Run, summary_of

#: Config keys of classification runs that sequence runs do not use (refused unless neutral).
NOT_FOR_SEQ2SEQ: dict[str, Any] = {
    "augment": {}, "ema_decay": None, "test_rotation_ensemble": False, "channels_last": False,
    "train_ways": None, "train_shots": None, "train_queries": None, "dtype": "float32", "backbone": None,
    "ways": None, "image_size": None, "backbone_options": {}}


class Seq2SeqRun(Run):
    """A ``Run`` over sequence-to-sequence tasks with exact-match accuracy as its metric."""

    learner: Seq2SeqLearner  # type: ignore[assignment]
    bench: Any
    evaluated: Seq2SeqLearner  # type: ignore[assignment]

    def build(self, bench: Any) -> None:
        config = self.config
        self.require_own_benchmark(bench, "sequence-to-sequence")
        self.refuse_keys(NOT_FOR_SEQ2SEQ, "sequence")
        if self.device.type != "cpu" and not torch.cuda.is_available():
            raise UserError("device cuda is not available here; use --device cpu")
        self.bench = build_seq2seq_benchmark(config)
        torch.manual_seed(config.seed)
        self.learner = build_seq2seq(config.algo, self.bench.vocabulary, config.algo_options).to(self.device)
        self.init_info = load_initial_weights(self.learner, config.init_from) if config.init_from else None
        self.params = [p for p in self.learner.parameters() if p.requires_grad]
        self.optimizer = (make_optimizer(config, self.params)  # type: ignore[assignment]
                          if self.learner.meta_trained else NothingToOptimize())
        self.average, self.evaluated = None, self.learner
        self.val_tasks = self.bench.val.fixed_tasks(config.eval_episodes, seed=config.val_seed)
        self.metric, self.higher_better = "accuracy", True
        self.detail: dict[str, Any] | None = None
        self.run_info = {
            "benchmark": self.bench.name, "task_type": "seq2seq", "input_shape": [],
            "preprocessing": {}, "default_backbone": None, "ways": None, "max_ways": None,
            "algo": config.algo, "any_ways": True, "vocabulary": self.bench.vocabulary.to_dict(),
            "source_format": source_format(config.benchmark, config.benchmark_options),
        }

    def train_step(self) -> dict[str, float]:
        """One outer step on ``meta_batch`` tasks (``Run.train_step``); a learner without meta-training jumps
        to the last step (the loop then validates, saves and tests once)."""
        if not self.learner.meta_trained:
            self.step = self.config.steps
            return {"loss": 0.0, "train_seconds": self.wall, "cpu_seconds": self.cpu}
        return super().train_step()

    @property
    def validates(self) -> bool:
        return self.learner.meta_trained

    def evaluate_validation(self) -> EvalResult:
        return evaluate_seq2seq(self.learner, self.val_tasks).accuracy

    def test(self, quiet: bool) -> EvalResult:
        self.load_best()
        tasks = self.bench.test.fixed_tasks(self.config.test_episodes, seed=self.config.test_seed)
        result = evaluate_seq2seq(self.learner, tasks, progress=not quiet)
        self.detail = {"levenshtein": summary_of(result.levenshtein), "per_task": result.per_task,
                       "beam": result.beam}
        return result.accuracy

    def summary(self, test: EvalResult | None) -> dict[str, Any]:
        trained = self.learner.meta_trained
        return {**super().summary(test), **(self.detail or {}), "meta_trained": trained,
                "steps": self.step if trained else 0, "init_from": self.init_info, "metric_note": METRIC_NOTE}


def load_initial_weights(learner: Seq2SeqLearner, run_dir: str) -> dict[str, Any]:
    """The model weights of ``run_dir``'s best checkpoint (the newest without one) into ``learner``; returns
    ``{"run", "step", "train_cpu_seconds"}`` of that run for the summary (its CPU time counts in a budget)."""
    from attnmeta.train.checkpoint import load_checkpoint, run_checkpoint

    if not (Path(run_dir) / "checkpoints").is_dir():
        raise UserError(f"init_from {run_dir!r} is not a run folder (it has no checkpoints/)")
    weights, state = load_checkpoint(run_checkpoint(run_dir, purpose="to start from"))
    theirs = (state.get("run") or {}).get("vocabulary")
    if theirs != learner.vocabulary.to_dict():
        raise UserError(f"init_from {run_dir!r} was trained with another vocabulary (another benchmark or "
                        "data); start from a run of the same benchmark")
    model = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    own = learner.model.state_dict()
    new = {"task_context"} if learner.uses_task_context else set()  # starts at zero: the model unchanged
    if set(model) - set(own) or set(own) - set(model) - new or any(
            model[k].shape != own[k].shape for k in model):
        raise UserError(f"init_from {run_dir!r} has another model (architecture or size); use the same "
                        "architecture, edits, dim, heads, layers, ff_dim and max_length")
    learner.model.load_state_dict(model, strict=False)
    return {"run": str(run_dir), "step": state["step"], "train_cpu_seconds": state.get("train_cpu_seconds")}


def build_seq2seq_benchmark(config: Any, splits: tuple[str, ...] = ("train", "val", "test")) -> Any:
    """The task sources and vocabulary of ``config.benchmark`` (``attnmeta.data.seq2seq_benchmarks``)."""
    from attnmeta.data.seq2seq_benchmarks import make_seq2seq_benchmark

    root = config.root if config.root is not None else default_data_root(config.benchmark)
    return make_seq2seq_benchmark(config.benchmark, root=root, shots=config.shots, queries=config.queries,
                                  seed=config.seed, splits=splits, **config.benchmark_options)




@dataclass
class Seq2SeqEvalReport:
    """``attnmeta eval`` of a sequence-to-sequence run."""

    result: Seq2SeqEvalResult
    checkpoint: Path
    step: int
    path: Path

    def table(self) -> str:
        return self.result.table()


def load_seq2seq_learner(run_info: dict[str, Any], config: Any) -> Seq2SeqLearner:
    """The run's learner, built from ``run.json``'s vocabulary (weights not loaded)."""
    vocabulary = Vocabulary.from_dict(run_info["vocabulary"])
    return build_seq2seq(config.algo, vocabulary, config.algo_options)


def evaluate_seq2seq_run(run_dir: str | Path, config: Any, *, checkpoint: str = "best",
                         episodes: int = 100, beam: int | None = None, quiet: bool = False,
                         adaptation: dict[str, float] | None = None) -> Seq2SeqEvalReport:
    """The run's best (or newest) checkpoint on the first ``episodes`` test tasks with beam size ``beam``
    (default: the learner's), on the run's torch threads; writes ``eval-test-<n>tasks-beam<b>.json``.
    ``adaptation``: test-time options that replace the run's (``finetune_steps``, ``hallucinate``,
    ``hallucinated_share``, ``finetune_explore``, ``ensemble``); the file name then ends with them
    (``-finetune_steps300-hallucinate1000``)."""
    from attnmeta.train.checkpoint import load_checkpoint, load_weights, run_checkpoint, write_json_atomic
    from attnmeta.train.run_folder import check_writable

    run_dir = Path(run_dir)
    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    if beam is not None and beam < 1:
        raise UserError(f"--beam must be >= 1, got {beam}")
    path = run_checkpoint(run_dir, checkpoint)
    check_writable(run_dir, "the evaluation results")
    weights, state = load_checkpoint(path)
    if config.threads:
        torch.set_num_threads(config.threads)
    bench = build_seq2seq_benchmark(config.resolved(), splits=("test",))
    learner = load_seq2seq_learner(state["run"], config)
    load_weights(learner, weights, path)
    adaptation = dict(adaptation or {})
    for key, value in adaptation.items():
        setattr(learner, key, value)
    tasks = bench.test.fixed_tasks(episodes, seed=config.test_seed)
    result = evaluate_seq2seq(learner, tasks, beam=beam, progress=not quiet)
    suffix = "".join(f"-{key}{value}" for key, value in sorted(adaptation.items()))
    out = run_dir / f"eval-test-{len(tasks)}tasks-beam{result.beam}{suffix}.json"
    write_json_atomic(out, {"checkpoint": str(path), "step": state["step"], **adaptation, **result.to_dict()})
    return Seq2SeqEvalReport(result, path, state["step"], out)
