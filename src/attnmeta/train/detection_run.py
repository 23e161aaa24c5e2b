"""Few-shot detection runs in the one trainer: the same loop, run folder, checkpoints, resume and summary.

A step samples ``meta_batch`` detection episodes, takes the detector's ``meta_loss`` and one optimizer
step. The metric is mAP@0.5 over fixed episodes (``attnmeta.eval.detection``, COCO's evaluation by
pycocotools); the test reports COCO's mAP@[0.5:0.95] and the inference time per image beside it. A baseline
without anything to train (``template-matching``) takes no step: its run validates and tests once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnmeta.errors import UserError
from attnmeta.eval import EvalResult
from attnmeta.eval.detection import DetectionEvalResult, evaluate_detection
from attnmeta.learners.detection.base import DetectionLearner
from attnmeta.learners.detection.registry import build_detector
from attnmeta.train.builders import BenchmarkParts, default_data_root, make_optimizer, resolve_device
from attnmeta.train.run import Run, summary_of

#: Config keys of classification runs that detection runs do not use (refused unless neutral).
NOT_FOR_DETECTION: dict[str, Any] = {
    "augment": {}, "ema_decay": None, "test_rotation_ensemble": False, "channels_last": False,
    "train_ways": None, "train_shots": None, "train_queries": None, "dtype": "float32", "backbone": None}

METRIC_NOTE = ("map50: COCO average precision at IoU 0.5 (pycocotools, 101-point interpolation, up to 100 "
               "boxes per image) averaged over the episode's classes, one value per episode; map: the same "
               "averaged over IoU 0.5:0.95")


class NothingToOptimize:
    """The optimizer of a detector without parameters (a training-free baseline)."""

    param_groups: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class DetectionRun(Run):
    """A ``Run`` over detection episodes with mAP@0.5 as its metric."""

    learner: DetectionLearner  # type: ignore[assignment]
    evaluated: DetectionLearner  # type: ignore[assignment]

    def build(self, bench: Any) -> None:
        config = self.config
        self.require_own_benchmark(bench, "detection")
        self.refuse_keys(NOT_FOR_DETECTION, "detection")
        self.bench = build_detection_benchmark(config)
        torch.manual_seed(config.seed)
        detector = build_detector(config.algo, self.bench.input_shape[0], config.algo_options)
        self.learner = detector.to(self.device)
        self.params = [p for p in self.learner.parameters() if p.requires_grad]
        self.optimizer = (make_optimizer(config, self.params) if self.params  # type: ignore[assignment]
                          else NothingToOptimize())
        self.average, self.evaluated = None, self.learner
        self.val_tasks = [t.to(self.device) for t in self.bench.val.fixed_tasks(config.eval_episodes,
                                                                               seed=config.val_seed)]
        self.metric, self.higher_better = "map50", True
        self.detail: dict[str, Any] | None = None
        self.run_info = {
            "benchmark": self.bench.name, "task_type": "detection",
            "input_shape": list(self.bench.input_shape), "preprocessing": dict(self.bench.preprocessing),
            "default_backbone": None, "ways": config.ways, "max_ways": None, "algo": config.algo,
            "any_ways": True,
        }

    def train_step(self) -> dict[str, float]:
        """One outer step on ``meta_batch`` episodes (``Run.train_step``); a training-free detector jumps to
        the last step (the loop then validates, saves and tests once)."""
        if not self.params:
            self.step = self.config.steps
            return {"loss": 0.0, "train_seconds": self.wall, "cpu_seconds": self.cpu}
        return super().train_step()

    def evaluate_validation(self) -> EvalResult:
        return evaluate_detection(self.learner, self.val_tasks).map50

    def test(self, quiet: bool) -> EvalResult:
        self.load_best()
        tasks = [t.to(self.device) for t in
                 self.bench.test.fixed_tasks(self.config.test_episodes, seed=self.config.test_seed)]
        result = evaluate_detection(self.learner, tasks, progress=not quiet)
        self.detail = {"map": summary_of(result.map), "ms_per_image": result.ms_per_image}
        return result.map50

    def summary(self, test: EvalResult | None) -> dict[str, Any]:
        trained = bool(self.params)
        return {**super().summary(test), **(self.detail or {}), "trained": trained,
                "steps": self.step if trained else 0, "metric_note": METRIC_NOTE}


def build_detection_benchmark(config: Any, splits: tuple[str, ...] = ("train", "val", "test")
                              ) -> BenchmarkParts:
    """The episode sources of ``config.benchmark`` (``attnmeta.data.detection_benchmarks``); ``splits``:
    the parts to build (a COCO source left out is ``None``)."""
    from attnmeta.data.detection_benchmarks import make_detection_benchmark

    root = config.root if config.root is not None else default_data_root(config.benchmark)
    b = make_detection_benchmark(config.benchmark, root=root, ways=config.ways, shots=config.shots,
                                 queries=config.queries, seed=config.seed, image_size=config.image_size,
                                 splits=splits, **config.benchmark_options)
    return BenchmarkParts(b.name, "detection", b.train, b.val, b.test, b.input_shape, b.preprocessing)




@dataclass
class DetectionEvalReport:
    """``attnmeta eval`` of a detection run."""

    result: DetectionEvalResult
    checkpoint: Path
    step: int
    path: Path

    def table(self) -> str:
        r = self.result
        return (f"mAP@0.5        {100 * r.map50.mean:.2f} +/- {100 * r.map50.ci95:.2f}%\n"
                f"mAP@[.5:.95]   {100 * r.map.mean:.2f} +/- {100 * r.map.ci95:.2f}%\n"
                f"episodes       {r.map50.summary.n}\n"
                f"ms per image   {r.ms_per_image:.1f}")


def evaluate_detection_run(run_dir: str | Path, config: Any, *, checkpoint: str = "best", episodes: int = 100,
                           seed: int = 0, changes: dict[str, Any] | None = None,
                           quiet: bool = False) -> DetectionEvalReport:
    """The run's best (or newest) checkpoint on ``episodes`` fixed test episodes of seed ``seed``, with the
    episode shape ``changes`` (``ways``, ``shots``, ``queries``, ``root``, ``device``), on the run's torch
    threads; writes ``eval-<ways>w<shots>s<queries>q-<episodes>ep-seed<seed>.json`` into the run folder."""
    import dataclasses

    from attnmeta.train.checkpoint import load_checkpoint, load_weights, run_checkpoint, write_json_atomic
    from attnmeta.train.run_folder import check_writable

    run_dir = Path(run_dir)
    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    target = dataclasses.replace(config, **(changes or {})).resolved()
    path = run_checkpoint(run_dir, checkpoint)
    check_writable(run_dir, "the evaluation results")
    weights, state = load_checkpoint(path)
    if config.threads:
        torch.set_num_threads(config.threads)
    bench = build_detection_benchmark(target, splits=("test",))
    learner = build_detector(config.algo, bench.input_shape[0], config.algo_options)
    load_weights(learner, weights, path)
    device = resolve_device(target.device)
    result = evaluate_detection(learner.to(device), bench.test.fixed_tasks(episodes, seed=seed),
                                progress=not quiet, device=device)
    shape = f"{target.ways}w{target.shots}s{target.queries}q"
    out = run_dir / f"eval-{shape}-{episodes}ep-seed{seed}.json"
    write_json_atomic(out, {"checkpoint": str(path), "step": state["step"], "ways": target.ways,
                            "shots": target.shots, "queries": target.queries, "metric_note": METRIC_NOTE,
                            **result.to_dict()})
    return DetectionEvalReport(result, path, state["step"], out)
