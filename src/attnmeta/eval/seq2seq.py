"""Few-shot sequence-to-sequence evaluation: per task (language) exact-match accuracy and mean Levenshtein
distance, as the CoNLL-SIGMORPHON scorer computes them (``attnmeta.eval.seq2seq_metrics``), then their mean
and 95% CI over tasks. Each task: adapt on its support pairs, generate its queries' targets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from attnmeta.eval.protocol import EvalResult
from attnmeta.eval.seq2seq_metrics import exact_match, mean_levenshtein
from attnmeta.learners.seq2seq.base import Seq2SeqLearner
from attnmeta.tasks.seq2seq import Seq2SeqTask

METRIC_NOTE = ("accuracy: exact-match accuracy of the generated target per task (language), a fraction; "
               "levenshtein: mean character edit distance to the reference per task (the CoNLL-SIGMORPHON "
               "2018 scorer's two figures); mean and 95% CI over tasks")


@dataclass
class Seq2SeqEvalResult:
    """Accuracy and Levenshtein distance per task and their summaries (``seconds_per_task``: adaptation and
    decoding)."""

    accuracy: EvalResult
    levenshtein: EvalResult
    per_task: dict[str, dict[str, Any]]
    beam: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy.to_dict(), "levenshtein": self.levenshtein.to_dict(),
                "per_task": self.per_task, "beam": self.beam,
                "metric_note": METRIC_NOTE}

    def table(self) -> str:
        """Per-task rows and the average, as ``attnmeta eval`` prints them."""
        width = max([len(name) for name in self.per_task] + [7])
        lines = [f"{'task':<{width}}  accuracy  levenshtein  queries  unknown"]
        for name, row in self.per_task.items():
            lines.append(f"{name:<{width}}  {100 * row['accuracy']:7.2f}%  {row['levenshtein']:11.3f}  "
                         f"{row['queries']:7d}  {row['unknown']:7d}")
        lines.append(f"{'average':<{width}}  {100 * self.accuracy.mean:7.2f}%  {self.levenshtein.mean:11.3f}"
                     f"  (95% CI over {self.accuracy.summary.n} tasks: +/- {100 * self.accuracy.ci95:.2f}% / "
                     f"+/- {self.levenshtein.ci95:.3f})")
        return "\n".join(lines)


def evaluate_seq2seq(learner: Seq2SeqLearner, tasks: Sequence[Seq2SeqTask], *, beam: int | None = None,
                     progress: bool = False) -> Seq2SeqEvalResult:
    """Adapt ``learner`` to each task's support pairs and score its generated query targets.

    ``beam``: the beam size (default: the learner's). The learner's parameters are never changed.
    Returns per-task accuracy (fraction) and mean Levenshtein distance, in the order of ``tasks``.
    """
    if not tasks:
        raise ValueError("no tasks to evaluate")
    accuracies: list[float] = []
    distances: list[float] = []
    per_task: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for task in tqdm(tasks, desc="eval", disable=not progress, leave=False):
        predictions, unknown = learner.predict_task(task, beam)
        references = ["".join(t) for t in task.query_target]
        guesses = ["".join(p) for p in predictions]
        accuracy = exact_match(references, guesses) / 100
        distance = mean_levenshtein(references, guesses)
        accuracies.append(accuracy)
        distances.append(distance)
        per_task[task.name or str(len(per_task))] = {
            "accuracy": accuracy, "levenshtein": distance, "queries": len(references), "unknown": unknown}
    seconds = (time.perf_counter() - start) / len(tasks)
    return Seq2SeqEvalResult(EvalResult("accuracy", accuracies, seconds),
                             EvalResult("levenshtein", distances, seconds), per_task,
                             beam if beam is not None else learner.beam)
