"""Learning curves of one or several runs in one PNG (matplotlib is imported only when plotting)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _metric_name(rows: list[dict[str, str]]) -> str:
    for metric in ("accuracy", "return", "map50"):
        if any(r.get(metric) for r in rows):
            return metric
    return "mse"


def smoothed(values: Sequence[float], window: int) -> tuple[list[float], list[float]]:
    """Trailing moving mean and its 95% CI half-width (``1.96 * std / sqrt(w)``) over ``window`` points."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    means, cis = [], []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        mean = sum(chunk) / len(chunk)
        var = sum((v - mean) ** 2 for v in chunk) / len(chunk)
        means.append(mean)
        cis.append(1.96 * math.sqrt(var / len(chunk)))
    return means, cis


def curves(run_dir: str | Path) -> dict[str, Any]:
    """Train loss / metric (smoothed, with CI) and validation metric (with CI) of a run folder."""
    from attnmeta.train.metrics_log import read_metrics

    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} has no metrics.csv; pass run folders written by `attnmeta train`")
    rows = read_metrics(path)
    metric = _metric_name(rows)
    train = [r for r in rows if r["phase"] == "train"]
    val = [r for r in rows if r["phase"] == "val" and r.get(metric)]
    window = max(1, len(train) // 50)
    loss, loss_ci = smoothed([float(r["loss"]) for r in train], window)
    train_metric = [float(r[metric]) for r in train if r.get(metric)]
    tm, tm_ci = smoothed(train_metric, window) if len(train_metric) == len(train) else ([], [])
    return {
        "metric": metric,
        "train_step": [int(r["step"]) for r in train],
        "train_loss": loss,
        "train_loss_ci": loss_ci,
        "train_metric": tm,
        "train_metric_ci": tm_ci,
        "val_step": [int(r["step"]) for r in val],
        "val_metric": [float(r[metric]) for r in val],
        "val_ci": [float(r["ci95"] or 0.0) for r in val],
    }


def plot_runs(run_dirs: Sequence[str | Path], output: str | Path) -> Path:
    """Write ``output`` (PNG): training loss (left) and train/validation metric with 95% CIs (right)."""
    if not run_dirs:
        raise ValueError("pass at least one run folder to plot")
    data = [(Path(d), curves(d)) for d in run_dirs]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (run, c) in enumerate(data):
        color = f"C{i % 10}"
        label = run.name or str(run)
        steps = c["train_step"]
        ax_loss.plot(steps, c["train_loss"], color=color, label=label)
        ax_loss.fill_between(
            steps,
            [m - e for m, e in zip(c["train_loss"], c["train_loss_ci"])],
            [m + e for m, e in zip(c["train_loss"], c["train_loss_ci"])],
            color=color,
            alpha=0.2,
        )
        if c["train_metric"]:
            ax_metric.plot(
                steps, c["train_metric"], color=color, linestyle=":", alpha=0.8, label=f"{label} train"
            )
        if c["val_step"]:
            ax_metric.errorbar(
                c["val_step"],
                c["val_metric"],
                yerr=c["val_ci"],
                color=color,
                marker="o",
                capsize=3,
                label=f"{label} val",
            )
    metric = data[0][1]["metric"]
    ax_loss.set(xlabel="outer step", ylabel="meta-training loss", title="training loss (95% CI band)")
    ax_metric.set(xlabel="outer step", ylabel=metric, title=f"{metric}: train (dotted), validation (95% CI)")
    if metric == "mse":
        ax_loss.set_yscale("log")
        ax_metric.set_yscale("log")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
