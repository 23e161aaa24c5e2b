"""PNG plots of what each attention chose (matplotlib is imported lazily; ``pip install attnmeta[plots]``).

* ``plot_task_weights``: task-attention weights of clean vs corrupted meta-training tasks.
* ``plot_feature_gates``: FiLM channel gates (feature attention) per task, as a heatmap, rows grouped by kind.
* ``plot_param_weights``: parameter-attention weight of each parameter tensor at each inner step.
* ``plots_from_ablation``: all three from ``experiments/attention/results/attention_ablation*.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:  # the matplotlib.pyplot module
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("attention plots need matplotlib: pip install 'attnmeta[plots]'") from error
    return plt


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; give a path ending in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def plot_task_weights(weights: Sequence[float], corrupted: Sequence[bool], path: str | Path,
                      title: str = "Task attention: weight per meta-training task") -> Path:
    """Histogram of task weights (mean 1 = uniform) for clean and corrupted tasks; means marked."""
    if len(weights) != len(corrupted) or not weights:
        raise ValueError(f"need one corrupted flag per weight, got {len(weights)} weights and "
                         f"{len(corrupted)} flags")
    plt = _pyplot()
    path = _check_path(path)
    clean = [w for w, c in zip(weights, corrupted) if not c]
    bad = [w for w, c in zip(weights, corrupted) if c]
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = 40
    for values, label, color in ((clean, "clean", "tab:blue"), (bad, "corrupted", "tab:red")):
        if values:
            mean = sum(values) / len(values)
            ax.hist(values, bins=bins, alpha=0.6, color=color, density=True,
                    label=f"{label} tasks (n={len(values)}, mean {mean:.2f})")
            ax.axvline(mean, color=color, linestyle="--")
    ax.axvline(1.0, color="gray", linewidth=0.8, label="uniform weight")
    ax.set_xlabel("task weight in the outer loss (mean over a meta-batch = 1)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_feature_gates(gates: Sequence[Sequence[float]], labels: Sequence[str], path: str | Path,
                       title: str = "Feature attention: channel gates per task") -> Path:
    """Heatmap ``[tasks, channels]`` of FiLM channel gates (1 = unchanged, range 0..2), a row per task."""
    if len(gates) != len(labels) or not gates:
        raise ValueError(f"need one label per task, got {len(gates)} rows and {len(labels)} labels")
    plt = _pyplot()
    path = _check_path(path)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.18 * len(gates) + 1.5)))
    image = ax.imshow(gates, aspect="auto", cmap="coolwarm", vmin=0.0, vmax=2.0, interpolation="nearest")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=6)
    ax.set_xlabel("channel of the first block")
    ax.set_ylabel("task (by function kind)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="gate gamma (1 = unchanged)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_param_weights(weights: Sequence[Sequence[float]], names: Sequence[str], path: str | Path, *,
                       steps: int = 1, title: str = "Parameter attention: update weight per tensor") -> Path:
    """Mean weight of each parameter tensor at each inner step.

    ``weights``: one row per recorded inner step, ``[records, tensors]``, recorded over tasks in order
    (``steps`` rows per task); ``names``: the tensors' names."""
    if not weights or any(len(row) != len(names) for row in weights):
        raise ValueError(f"every row of weights needs one value per name ({len(names)} names)")
    if steps < 1 or len(weights) % steps:
        raise ValueError(f"{len(weights)} recorded rows is not a multiple of steps={steps}")
    plt = _pyplot()
    path = _check_path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / steps
    for step in range(steps):
        rows = weights[step::steps]
        means = [sum(r[i] for r in rows) / len(rows) for i in range(len(names))]
        ax.bar([i + step * width for i in range(len(names))], means, width=width,
               label=f"inner step {step + 1}")
    ax.axhline(1.0, color="gray", linewidth=0.8, label="uniform (plain MAML)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("weight w (update = lr * w * grad)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plots_from_ablation(results: str | Path | dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the three plots from an ablation JSON (``experiments/attention/attention_ablation.py``) into
    ``out_dir``."""
    data = results if isinstance(results, dict) else json.loads(Path(results).read_text())
    out_dir = Path(out_dir)
    written: list[Path] = []
    for record in data.get("records", []):
        tag = f"{record.get('benchmark')}_{record.get('method', '').replace(' ', '_').replace('+', 'plus_')}"
        tag = "".join(c if c.isalnum() or c in "._-" else "_" for c in tag)
        log = record.get("weights_log") or []
        if log and any(c for _, c in log):
            written.append(plot_task_weights([w for w, _ in log], [c for _, c in log],
                                             out_dir / f"task_weights_{tag}.png"))
        plots = record.get("plot_data") or {}
        if plots.get("gates"):
            written.append(plot_feature_gates(plots["gates"], plots["gate_kinds"],
                                              out_dir / f"feature_gates_{tag}.png"))
        if plots.get("param_weights"):
            written.append(plot_param_weights(plots["param_weights"], plots["param_names"],
                                              out_dir / f"param_weights_{tag}.png"))
    return written
