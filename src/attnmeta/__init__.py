"""attnmeta: attention-based meta-learning for PyTorch.

``attnmeta.load(run_dir_or_checkpoint)`` returns a few-shot predictor (``fit`` / ``predict`` /
``predict_proba``); ``attnmeta.train.train(config)`` meta-trains a ``RunConfig``. Imported lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": ("attnmeta.predictor", "load"),
    "FewShotPredictor": ("attnmeta.predictor", "FewShotPredictor"),
    "RunConfig": ("attnmeta.train.config", "RunConfig"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'attnmeta' has no attribute {name!r}")
