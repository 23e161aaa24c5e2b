"""A run's ``metrics.csv`` (and TensorBoard when installed); reading it back for plots."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

METRIC_COLUMNS = (
    "step", "phase", "loss", "accuracy", "mse", "return", "map50", "ci95", "lr", "train_seconds",
    "cpu_seconds",
)

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
                if key not in ("lr", "train_seconds", "cpu_seconds") or phase == "train":
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
    return [r for r in rows if None not in r.values() and (r.get("step") or "").isdigit()]
