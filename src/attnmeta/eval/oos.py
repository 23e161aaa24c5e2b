"""Out-of-scope (OOS) detection in few-shot episodes: CLINC150's ``oos`` utterances as unknown queries.

Each fixed episode gets ``oos_queries`` extra queries drawn (seeded per episode) from a pool of OOS inputs;
the learner classifies all queries as usual (the OOS ones are among the queries, as in deployment) and every
query gets an OOS score, higher = more likely out of scope:

* ``msp``: ``1 - max softmax probability`` of the learner's logits (any classification learner);
* ``distance``: the distance of the query's embedding to the nearest prototype (class mean of the support
  embeddings) for learners with an embedding network ``learner.model`` (protonet, matching, ...): cosine
  distance when ``learner.distance == "cosine"``, else Euclidean.

Reported: AUROC of each score (OOS = positive; :func:`auroc`, rank based, ties counted half, equal to
scikit-learn's ``roc_auc_score``) pooled over all episodes and per episode (mean, 95% CI), and the in-scope
accuracy at a fixed OOS recall: with the threshold that flags ``recall`` of the OOS queries (pooled), the
fraction of in-scope queries both classified correctly and not flagged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnmeta.eval.stats import mean_ci95
from attnmeta.learners.base import Learner
from attnmeta.tasks.episode import Task

__all__ = ["auroc", "OOSResult", "oos_scores", "evaluate_oos", "clinc150_oos_texts", "text_inputs",
           "SCORES"]

SCORES = ("msp", "distance")


def auroc(scores: Sequence[float] | Tensor, labels: Sequence[int] | Tensor) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive): the probability that a
    random positive scores above a random negative, ties counting one half (Mann-Whitney U with mid-ranks).
    ``ValueError`` unless both classes are present."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().to(torch.bool)
    if s.numel() != y.numel():
        raise ValueError(f"{s.numel()} scores but {y.numel()} labels")
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    order = torch.argsort(s, stable=True)
    sorted_scores = s[order]
    ranks = torch.empty_like(s)
    # mid-ranks of tied groups (1-based)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    mid = ends - (counts.to(torch.float64) - 1) / 2
    ranks[order] = mid[inverse]
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _nearest_prototype_distance(learner: Learner, task: Task) -> Tensor | None:
    """Distance ``[n_query]`` of each query embedding to the nearest class mean of the support embeddings,
    or ``None`` when the learner has no embedding network."""
    from attnmeta.learners import registry

    model = getattr(learner, "model", None)
    name = getattr(learner, "name", None)
    if not isinstance(model, torch.nn.Module) or name not in registry.available() or registry.spec(name).head:
        return None  # only embedding networks (learners without a head) have prototypes to measure
    n_support = task.support_x.shape[0]
    embeddings = model(torch.cat([task.support_x, task.query_x])).flatten(1)
    support, query = embeddings[:n_support], embeddings[n_support:]
    one_hot = F.one_hot(task.support_y, task.ways).to(support.dtype)
    centroids = one_hot.T @ support / one_hot.sum(0).clamp_min(1).unsqueeze(1)
    if getattr(learner, "distance", None) == "cosine":
        similarity = F.normalize(query, dim=-1) @ F.normalize(centroids, dim=-1).T
        return 1 - similarity.max(-1).values
    return torch.cdist(query, centroids).min(-1).values


@torch.no_grad()
def oos_scores(learner: Learner, task: Task) -> tuple[Tensor, dict[str, Tensor]]:
    """``(predictions [n_query], {score name: [n_query]})`` of one episode (higher score = more OOS)."""
    logits = learner.predict(task)
    scores = {"msp": 1 - logits.float().softmax(-1).max(-1).values}
    distance = _nearest_prototype_distance(learner, task)
    if distance is not None:
        scores["distance"] = distance.float()
    return logits.argmax(-1), scores


@dataclass
class OOSResult:
    """Per-score AUROC (pooled and per-episode mean with 95% CI), in-scope accuracy with and without the
    rejection threshold at ``recall``."""

    recall: float
    episodes: int
    in_scope_queries: int
    oos_queries: int
    accuracy: dict[str, float]                  # in-scope accuracy without rejection: mean, ci95
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"recall": self.recall, "episodes": self.episodes, "in_scope_queries": self.in_scope_queries,
                "oos_queries": self.oos_queries, "accuracy": self.accuracy, "scores": self.scores}

    def table(self) -> str:
        accuracy = self.accuracy
        lines = [f"in-scope accuracy {100 * accuracy['mean']:.2f} +/- {100 * accuracy['ci95']:.2f}% "
                 f"({self.episodes} episodes, {self.in_scope_queries} in-scope + {self.oos_queries} OOS "
                 "queries)",
                 f"{'score':<10}{'AUROC pooled':>14}{'AUROC/episode':>22}"
                 f"{f'in-scope acc @ {100 * self.recall:.0f}% OOS recall':>34}"]
        for name, s in self.scores.items():
            per = f"{100 * s['auroc_mean']:.2f} +/- {100 * s['auroc_ci95']:.2f}"
            lines.append(f"{name:<10}{100 * s['auroc']:>14.2f}{per:>22}{100 * s['in_scope_accuracy']:>34.2f}")
        return "\n".join(lines)


def evaluate_oos(learner: Learner, episodes: Sequence[Task], oos_inputs: Tensor, *,
                 oos_queries: int | None = None, recall: float = 0.9, seed: int = 0) -> OOSResult:
    """OOS detection of ``learner`` on ``episodes`` with OOS queries drawn from ``oos_inputs`` ``[m, ...]``.

    ``oos_queries``: OOS queries added to each episode (default: as many as its in-scope queries). The draw
    is seeded by ``seed`` and the episode's index, so every learner sees the same OOS queries.
    """
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    episodes = list(episodes)
    if not episodes:
        raise ValueError("no episodes to evaluate; pass at least one Task")
    if oos_inputs.shape[0] < 1:
        raise ValueError("no OOS inputs given")
    was_training = learner.training
    learner.eval()
    correct: list[Tensor] = []
    pooled: dict[str, list[Tensor]] = {}
    is_oos: list[Tensor] = []
    per_episode: dict[str, list[float]] = {}
    accuracies: list[float] = []
    n_in = n_oos = 0
    try:
        for index, task in enumerate(episodes):
            count = task.query_x.shape[0] if oos_queries is None else int(oos_queries)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            pick = torch.randperm(oos_inputs.shape[0], generator=generator)[:count]
            extra = oos_inputs[pick].to(task.query_x.device, task.query_x.dtype)
            n_query = task.query_x.shape[0]
            mixed = Task(task.support_x, task.support_y, torch.cat([task.query_x, extra]),
                         torch.cat([task.query_y, task.query_y.new_zeros(extra.shape[0])]), task.classes,
                         dict(task.info))
            predictions, scores = oos_scores(learner, mixed)
            hit = (predictions[:n_query] == task.query_y).cpu()
            accuracies.append(float(hit.float().mean()))
            correct.append(hit)
            flags = torch.cat([torch.zeros(n_query, dtype=torch.bool),
                               torch.ones(extra.shape[0], dtype=torch.bool)])
            is_oos.append(flags)
            for name, value in scores.items():
                pooled.setdefault(name, []).append(value.cpu().double())
                per_episode.setdefault(name, []).append(auroc(value.cpu(), flags))
            n_in, n_oos = n_in + n_query, n_oos + extra.shape[0]
    finally:
        learner.train(was_training)
    labels = torch.cat(is_oos)
    hits = torch.cat(correct)
    summary = mean_ci95(accuracies)
    result = OOSResult(recall, len(episodes), n_in, n_oos, {"mean": summary.mean, "ci95": summary.ci95})
    for name, values in pooled.items():
        score = torch.cat(values)
        oos_sorted = score[labels].sort(descending=True).values
        k = max(1, math.ceil(recall * oos_sorted.numel()))
        threshold = float(oos_sorted[k - 1])          # flags (score >= threshold) at least `recall` of OOS
        kept = score[~labels] < threshold
        per = mean_ci95(per_episode[name])
        result.scores[name] = {"auroc": auroc(score, labels), "auroc_mean": per.mean, "auroc_ci95": per.ci95,
                               "threshold": threshold,
                               "in_scope_accuracy": float((hits & kept).double().mean()),
                               "in_scope_flagged": float((~kept).double().mean())}
    return result


def clinc150_oos_texts(root: str | Path) -> list[str]:
    """CLINC150's out-of-scope utterances (train, val and test splits pooled: 1,200)."""
    from attnmeta.data.text import load_clinc150

    data = load_clinc150(root, include_oos=True)
    oos = data.class_names.index("oos")
    return [text for text, label in zip(data.texts, data.labels.tolist()) if label == oos]


def text_inputs(texts: Sequence[str], preprocessing: dict[str, Any]) -> Tensor:
    """Model inputs of ``texts`` for a text benchmark's ``preprocessing`` (token ids or UTF-8 bytes)."""
    if preprocessing.get("text_inputs") == "utf8":
        from attnmeta.nn.sentence import encode_utf8

        return encode_utf8(list(texts), int(preprocessing["max_bytes"]))
    if "tokenizer" not in preprocessing:
        raise ValueError("OOS evaluation needs a text benchmark (its preprocessing has no tokenizer)")
    from attnmeta.nn.text import TextTokenizer

    return TextTokenizer.from_dict(preprocessing["tokenizer"]).encode(list(texts))


def write_oos(path: Path, result: OOSResult, extra: dict[str, Any]) -> None:
    """Write ``result`` (and ``extra``, e.g. the checkpoint) as JSON."""
    path.write_text(json.dumps({**extra, **result.to_dict()}, indent=2))
