"""What a run's ``summary.json`` reports beside the test result: timing, time to accuracy, the machine."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

#: Accuracy targets whose first crossing on the validation episodes ``summary.json`` records.
ACCURACY_TARGETS = (0.95, 0.97, 0.98)

TIMING_NOTE = (
    "train_seconds (wall) and train_cpu_seconds (process CPU time, all threads) count the training "
    "steps only: sampling, forward, backward and the optimizer; data loading, validation, "
    "checkpoints and the final test are excluded"
)


def time_to_targets(history: list[list[float]], metric: str) -> dict[str, Any] | None:
    """First validation reaching each accuracy target: ``{"0.95": {"step", "train_minutes",
    "train_cpu_minutes"} or None, ...}``; ``None`` for regression runs. ``history`` rows are
    ``[step, value, wall seconds, cpu seconds]``."""
    if metric != "accuracy":
        return None
    reached: dict[str, Any] = {}
    for target in ACCURACY_TARGETS:
        row = next((r for r in history if r[1] >= target), None)
        reached[f"{target:.2f}"] = (
            None
            if row is None
            else {
                "step": int(row[0]),
                "train_minutes": round(row[2] / 60, 3),
                "train_cpu_minutes": round(row[3] / 60, 3),
            }
        )
    return reached


def cpu_flags() -> list[str]:
    """The CPU flags that decide low-precision speed (``avx512_bf16``, ``amx_*``) from ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(
        flag for flag in set(flags) if flag in ("avx2", "avx512f", "avx512_bf16") or flag.startswith("amx")
    )


def machine_info() -> dict[str, Any]:
    """Where the run's times were measured."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                platform.processor(),
            )
    except OSError:
        return platform.processor()
