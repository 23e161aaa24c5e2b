"""Omniglot for the speed benchmarks (``bench_fold.py``, ``bench_distance.py``, ``bench_allocator.py``).

The background and evaluation sets, decoded from the archives in ``root`` (default
``../shared/data/omniglot``), or read from ``data_pt``: the tensors that
``experiments/omniglot/omniglot_time_to_accuracy.py --export-data FILE`` writes, for machines without the
archives.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnmeta.data.omniglot import Omniglot

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def load_omniglot(root: str | Path | None = None,
                  data_pt: str | Path | None = None) -> tuple[Omniglot, Omniglot]:
    """``(background, evaluation)`` from ``data_pt`` when given, else from the archives in ``root``."""
    if data_pt:
        stored = torch.load(data_pt, weights_only=True)
        return tuple(Omniglot.from_tensors(stored[f"{k}_images"], stored[f"{k}_labels"],  # type: ignore
                                           stored[f"{k}_characters"]) for k in ("background", "evaluation"))
    root = root or DEFAULT_ROOT
    return Omniglot(root, background=True), Omniglot(root, background=False)
