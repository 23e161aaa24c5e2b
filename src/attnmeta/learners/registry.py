"""Name -> builder registry, so the CLI and configs can build any learner by name.

A builder is called as ``builder(model=..., task_type=..., ways=..., **options)`` and returns a
``Learner``. ``head`` says what ``model`` must be: ``True`` for learners that need the model to output
``ways`` logits (MAML family), ``False`` for learners that need an embedding network (metric learners).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from attnmeta.learners.base import Learner


@dataclass(frozen=True)
class LearnerSpec:
    name: str
    builder: Callable[..., Learner]
    head: bool
    description: str = ""


_SPECS: dict[str, LearnerSpec] = {}


def register(name: str, *, head: bool, description: str = "") -> Callable[[Callable[..., Learner]],
                                                                         Callable[..., Learner]]:
    """Decorator: ``@register("maml", head=True)`` on ``builder(model, task_type, ways, **options)``."""

    def decorate(builder: Callable[..., Learner]) -> Callable[..., Learner]:
        if name in _SPECS:
            raise ValueError(f"a learner named {name!r} is already registered")
        _SPECS[name] = LearnerSpec(name, builder, head, description)
        return builder

    return decorate


def available() -> list[str]:
    _load_builtin()
    return sorted(_SPECS)


def spec(name: str) -> LearnerSpec:
    _load_builtin()
    if name not in _SPECS:
        raise ValueError(f"unknown learner {name!r}; choose one of: {', '.join(sorted(_SPECS))}")
    return _SPECS[name]


def build(name: str, **kwargs: Any) -> Learner:
    return spec(name).builder(**kwargs)


_BUILTIN_MODULES = ("maml", "protonet", "matching", "snail", "meta_lstm", "feat", "transfer",
                    "attention_maml")


def _load_builtin() -> None:
    """Import the built-in learner modules so their ``@register`` lines run (missing ones are skipped)."""
    import importlib
    import importlib.util

    for module in _BUILTIN_MODULES:
        full = f"attnmeta.learners.{module}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full)
