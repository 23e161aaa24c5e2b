"""Name -> builder registry, so the CLI and configs can build any learner by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attnmeta.learners.base import Learner

_BUILDERS: dict[str, Callable[..., Learner]] = {}


def register(name: str) -> Callable[[Callable[..., Learner]], Callable[..., Learner]]:
    """Decorator: ``@register("maml")`` on a function ``(model, task_type, **options) -> Learner``."""

    def decorate(builder: Callable[..., Learner]) -> Callable[..., Learner]:
        if name in _BUILDERS:
            raise ValueError(f"a learner named {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorate


def available() -> list[str]:
    return sorted(_BUILDERS)


def build(name: str, **kwargs: Any) -> Learner:
    if name not in _BUILDERS:
        raise ValueError(f"unknown learner {name!r}; choose one of: {', '.join(available())}")
    return _BUILDERS[name](**kwargs)
