"""Summary statistics of per-episode results, as reported in the few-shot literature."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MeanCI:
    """Mean and half-width of the 95% confidence interval: ``1.96 * std / sqrt(n)``."""

    mean: float
    ci95: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} +/- {self.ci95:.2g}"

    def as_percent(self) -> str:
        return f"{100 * self.mean:.2f} +/- {100 * self.ci95:.2f}"


def mean_ci95(values: Sequence[float]) -> MeanCI:
    """Mean and 95% CI half-width (population std, as in Prototypical Networks / MAML code)."""
    n = len(values)
    if n == 0:
        raise ValueError("cannot summarise zero episodes; evaluate on at least one episode")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / n
    return MeanCI(mean, 1.96 * math.sqrt(var) / math.sqrt(n), n)
