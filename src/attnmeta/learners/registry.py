"""Name -> builder registry, so the CLI and configs can build any learner by name.

A builder is called as ``builder(model=..., task_type=..., ways=..., **options)`` and returns a
``Learner``. ``head`` says what ``model`` must be: ``True`` for learners that need the model to output
``ways`` logits (MAML family), ``False`` for learners that need an embedding network (metric learners).

``check_options(name, options)`` rejects an unknown option up front (``build`` calls it too): the valid
options are the builder's keyword parameters or, when it forwards ``**options`` to the learner class named
by its return annotation, that class's ``__init__`` parameters (following ``**kwargs`` up the class's
bases). Where they cannot be worked out (no annotation, ``**kwargs`` to an unknown place), nothing is
checked and the builder reports bad options itself. A learner may register ``check(options)`` too, which
``check_options`` then calls on the options (e.g. to validate nested mappings up front).

Options a learner registers as ``nested`` take mappings, and a dotted key sets one entry of them:
``{"task_attention.temperature": 0.2}`` (``--set algo_options.task_attention.temperature=0.2``) is folded by
``build`` and ``check_options`` into ``{"task_attention": {..., "temperature": 0.2}}`` (an entry that was
``true`` / ``false`` / absent becomes a mapping).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import textwrap
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from attnmeta.learners.base import Learner


@dataclass(frozen=True)
class LearnerSpec:
    name: str
    builder: Callable[..., Learner]
    head: bool
    description: str = ""
    check: Callable[[dict[str, Any]], None] | None = None
    nested: tuple[str, ...] = ()


_SPECS: dict[str, LearnerSpec] = {}


def register(name: str, *, head: bool, description: str = "",
             check: Callable[[dict[str, Any]], None] | None = None, nested: tuple[str, ...] = ()
             ) -> Callable[[Callable[..., Learner]], Callable[..., Learner]]:
    """Decorator: ``@register("maml", head=True)`` on ``builder(model, task_type, ways, **options)``;
    ``check(options)`` raises ``ValueError`` for bad option values (called by ``check_options``); ``nested``:
    options that take mappings (dotted keys set their entries)."""

    def decorate(builder: Callable[..., Learner]) -> Callable[..., Learner]:
        if name in _SPECS:
            raise ValueError(f"a learner named {name!r} is already registered")
        _SPECS[name] = LearnerSpec(name, builder, head, description, check, tuple(nested))
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
    learner = spec(name)
    return learner.builder(**nest_dotted(kwargs, learner.nested))


def nest_dotted(options: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``{"a": True, "a.b": 1}`` -> ``{"a": {"b": 1}}`` for ``a`` in ``names``; other keys unchanged."""
    def dotted(key: Any) -> bool:
        return isinstance(key, str) and key.partition(".")[0] in names and "." in key

    nested = {k: v for k, v in options.items() if not dotted(k)}
    for key, value in options.items():
        if not dotted(key):
            continue
        top, _, sub = key.partition(".")
        base = nested.get(top)
        if base is None or isinstance(base, bool):
            base = {}
        elif not isinstance(base, Mapping):
            raise ValueError(f"option {top!r} is not a mapping ({base!r}); set it as {top}=VALUE, "
                             f"not {key}=VALUE")
        nested[top] = {**base, sub: value}
    return nested


#: Builder arguments that come from the run, not from the learner options.
_GIVEN_BY_RUN = ("model", "task_type", "ways")


def valid_options(name: str) -> list[str] | None:
    """The option names learner ``name`` accepts, or ``None`` where they cannot be worked out."""
    builder = spec(name).builder
    names = _keyword_names(builder)
    if names is None:  # **options: forwarded to the learner class of the return annotation
        try:
            target = typing.get_type_hints(builder).get("return")
        except Exception:  # noqa: BLE001 - an annotation that does not resolve: do not check
            return None
        if not (inspect.isclass(target) and issubclass(target, Learner) and target is not Learner):
            return None
        names = _init_names(target)
        if names is None:
            return None
    return sorted(set(names) - {"self", *_GIVEN_BY_RUN} - _fixed_by_builder(builder))


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one line) if ``options`` has a key learner ``name`` does not take.

    Unknown learners are not checked here (``spec`` / ``build`` report them)."""
    _load_builtin()
    if name not in _SPECS:
        return
    options = nest_dotted(options, _SPECS[name].nested)
    valid = valid_options(name)
    for key in options if valid is not None else ():
        if valid is None or key in valid:
            continue
        listing = f"valid options: {', '.join(valid)}" if valid else "it takes no options"
        if isinstance(key, str) and key in _fixed_by_builder(_SPECS[name].builder):
            raise ValueError(f"option {key!r} is set by learner {name!r} itself and cannot be changed; "
                             f"{listing}")
        close = difflib.get_close_matches(key, valid, n=1) if isinstance(key, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown option {key!r} for learner {name!r}{hint}; {listing}")
    check = _SPECS[name].check
    if check is not None:
        check(options)


def _keyword_names(function: Callable[..., Any]) -> list[str] | None:
    """Keyword parameter names of ``function``; ``None`` if it takes ``**kwargs``."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _init_names(cls: type) -> list[str] | None:
    """``__init__`` keyword names of ``cls``, following ``**kwargs`` to the bases' ``__init__``."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        if klass is Learner or not issubclass(klass, Learner):
            return None  # **kwargs reach past the learner classes: unknown
        own = _keyword_names(klass.__init__)
        if own is not None:
            return names + own
        signature = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in signature if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return None


def _fixed_by_builder(builder: Callable[..., Any]) -> set[str]:
    """Keyword arguments the builder passes itself (``head="linear"``): options may not repeat them."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(builder)))
    except (OSError, TypeError, SyntaxError):
        return set()
    function = tree.body[0] if tree.body else None
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return set()  # a lambda or another expression: nothing known
    calls = [n for statement in function.body for n in ast.walk(statement) if isinstance(n, ast.Call)]
    return {k.arg for call in calls for k in call.keywords if k.arg is not None}


_BUILTIN_MODULES = ("maml_family", "protonet", "matching", "snail", "meta_lstm", "feat", "transfer",
                    "attention_maml", "reptile", "relationnet", "simpleshot", "r2d2", "metaoptnet_svm",
                    "contrastive")


def _load_builtin() -> None:
    """Import the built-in learner modules so their ``@register`` lines run (missing ones are skipped)."""
    import importlib
    import importlib.util

    for module in _BUILTIN_MODULES:
        full = f"attnmeta.learners.{module}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full)
