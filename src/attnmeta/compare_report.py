"""What ``attnmeta.compare`` measures and reports: peak memory, a row per learner, table, JSON, chart."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


# ---------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the (monotonic) peak RSS of the process
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _return_freed_memory() -> None:
    """Undo the trainer's ``retain_memory`` (glibc keeps freed memory in the heap) and hand the freed heap
    back to the system, so that the next learner's peak memory is measured from a low level."""
    from attnmeta.train.memory import retain_freed_memory

    if retain_freed_memory(False):  # glibc only
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakMemory:
    """Context manager: peak resident memory above the starting level, in MiB (``.peak_mib``).

    Samples the process RSS every ``interval`` seconds in a thread (CPU); on CUDA, also reports
    ``torch.cuda.max_memory_allocated`` (``.cuda_peak_mib``).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_mib = 0.0
        self.cuda_peak_mib: float | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self._start = _rss_bytes()
        self._peak = self._start
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_mib = (self._peak - self._start) / 2 ** 20
        if torch.cuda.is_available():
            self.cuda_peak_mib = torch.cuda.max_memory_allocated() / 2 ** 20


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------
@dataclass
class CompareRow:
    """One algorithm's line of the comparison table (times in seconds).

    ``metric`` is ``"accuracy"`` (``mean`` and ``ci95`` as fractions), ``"mse"`` (regression) or ``"return"``
    (meta-RL: the return after adaptation, higher is better; ``adaptation`` holds the adaptation curve,
    ``AdaptationCurve.as_dict()``: the mean return after each step, or episode of a trial, per task).
    """

    algo: str
    metric: str
    mean: float
    ci95: float
    episodes: int
    train_steps: int
    train_wall_s: float
    train_cpu_s: float
    adapt_s_per_task: float
    peak_memory_mib: float
    source: str
    run_dir: str | None = None
    per_episode: list[float] = field(default_factory=list, repr=False)
    adaptation: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def accuracy(self) -> float:
        """``mean`` of a classification row (a regression row has an MSE, ``mean``)."""
        if self.metric != "accuracy":
            raise AttributeError(f"the {self.algo} row holds {self.metric}, not accuracy; read row.mean")
        return self.mean

    def value_text(self) -> str:
        """``97.50 +/- 0.30`` (accuracy in %), ``0.0123 +/- 0.0010`` (MSE) or ``-20.18 +/- 2.80`` (return)."""
        if self.metric == "accuracy":
            return f"{100 * self.mean:.2f} +/- {100 * self.ci95:.2f}"
        if self.metric == "return":
            return f"{self.mean:.2f} +/- {self.ci95:.2f}"
        return f"{self.mean:.4f} +/- {self.ci95:.4f}"


def _metric_label(metric: str) -> str:
    return {"accuracy": "accuracy %", "return": "return (higher is better)"}.get(metric, metric.upper())


def axis_label(metric: str) -> str:
    """The chart's value axis: ``"test accuracy (%)"``, ``"test MSE (lower is better)"``, ``"return (higher
    is better)"``."""
    if metric == "accuracy":
        return "test accuracy (%)"
    return "return (higher is better)" if metric == "return" else f"test {metric.upper()} (lower is better)"


@dataclass
class CompareResult:
    rows: list[CompareRow]
    settings: dict[str, Any]

    @property
    def metric(self) -> str:
        """``"accuracy"``, ``"mse"`` or ``"return"``: what the table's values are (every row saw the same
        tasks)."""
        return self.rows[0].metric if self.rows else self.settings.get("metric", "accuracy")

    def table(self) -> str:
        """Plain-text table, one line per algorithm; the value column follows the metric (accuracy %, MSE,
        return); the adaptation time is in ms per task (meta-RL: seconds per test task, rollouts included)."""
        label = " / ".join(dict.fromkeys(_metric_label(r.metric) for r in self.rows)) or _metric_label(
            self.metric)
        values = [r.value_text() for r in self.rows]
        width = max([len(label), *map(len, values)])
        rl = self.metric == "return"
        per_task, scale, digits = ("adapt s/task", 1, 3) if rl else ("adapt ms/task", 1000, 1)
        header = (f"{'algo':<20} {label:>{width}} {'steps':>7} {'train wall s':>12} {'train cpu s':>11} "
                  f"{per_task:>13} {'peak MiB':>9}")
        lines = [header, "-" * len(header)]
        for r, value in zip(self.rows, values):
            lines.append(f"{r.algo:<20} {value:>{width}} {r.train_steps:>7} {r.train_wall_s:>12.1f} "
                         f"{r.train_cpu_s:>11.1f} {scale * r.adapt_s_per_task:>13.{digits}f} "
                         f"{r.peak_memory_mib:>9.1f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "rows": [asdict(r) for r in self.rows]}

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def plot(self, path: str | Path) -> Path:
        """Bar chart of accuracy, MSE or return (with 95% CI) and training CPU time per algorithm, saved as
        PNG."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("the comparison chart needs matplotlib: pip install 'attnmeta[plots]'") \
                from error
        names = [r.algo for r in self.rows]
        fig, (left, right) = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(names) + 3), 3.6))
        if self.metric == "accuracy":
            left.bar(names, [100 * r.mean for r in self.rows], yerr=[100 * r.ci95 for r in self.rows],
                     capsize=4, color="tab:blue")
            left.set_ylabel(axis_label(self.metric))
            low = min(100 * (r.mean - r.ci95) for r in self.rows)
            left.set_ylim(max(0.0, low - 5), 100)
        else:
            left.bar(names, [r.mean for r in self.rows], yerr=[r.ci95 for r in self.rows], capsize=4,
                     color="tab:blue")
            left.set_ylabel(axis_label(self.metric))
            if self.metric == "return":  # meta-RL: returns are often negative (minus a distance)
                left.axhline(0.0, color="black", linewidth=0.8)
            else:
                left.set_ylim(bottom=0)
        right.bar(names, [r.train_cpu_s / 60 for r in self.rows], color="tab:orange")
        right.set_ylabel("training CPU minutes")
        for ax in (left, right):
            ax.tick_params(axis="x", rotation=30)
        title = self.settings.get("benchmark", "")
        shots = f"{self.settings.get('shots')}-shot"
        shape = f" {self.settings.get('ways')}-way {shots}" if self.metric == "accuracy" else f" {shots}"
        count = self.rows[0].episodes if self.rows else 0
        what = "tasks" if self.metric == "return" else "episodes"
        fig.suptitle(f"{title}{'' if self.metric == 'return' else shape}, {count} identical test {what}")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
