"""Validation helpers of ``RunConfig`` (``attnmeta.train.config``): type and range checks of config keys,
each failing with one line that names the key, what it must be and what it got."""

from __future__ import annotations

import difflib
import math
import typing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnmeta.train.config import RunConfig

FLOAT_KEYS = ("lr", "weight_decay", "momentum", "min_lr_ratio", "gamma", "grad_clip", "ema_decay",
              "budget_minutes")
#: ``augment`` keys: ``shift`` (max pixels of ``RandomShift``), ``affine`` ([degrees, scale, shear, translate]
#: of ``RandomAffine``).
AUGMENT_KEYS = ("shift", "affine")
SEED_KEYS = ("seed", "val_seed", "test_seed")
#: String keys that may not be empty (``""`` as ``run_dir`` would write into the current folder).
NON_EMPTY_KEYS = ("benchmark", "algo", "split", "root", "run_dir", "backbone", "init_from")


def as_float(key: str, value: Any) -> Any:
    """Ints and float spellings (``"1e-3"``) of a float key as ``float``; anything else unchanged (the type
    check names it)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return value
    try:
        return float(value)
    except ValueError:
        return value
    except OverflowError:
        raise ValueError(f"config key {key!r} is too large for a float ({len(str(value))} digits)") from None


def check_numbers(config: RunConfig) -> None:
    """Float keys finite and in range, seeds in [0, 2**63), named strings not empty."""
    for key in FLOAT_KEYS:
        value = getattr(config, key)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"config key {key!r} must be a finite number, got {value}")
    ranges = (
        ("lr", config.lr > 0, "> 0"),
        ("weight_decay", config.weight_decay >= 0, ">= 0"),
        ("momentum", 0 <= config.momentum < 1, "in [0, 1) (e.g. 0.9)"),
        ("min_lr_ratio", 0 <= config.min_lr_ratio <= 1, "in [0, 1]"),
        ("gamma", config.gamma > 0, "> 0 (the step schedule multiplies the LR by it)"),
        ("grad_clip", config.grad_clip is None or config.grad_clip > 0, "> 0 or null"),
        ("ema_decay", config.ema_decay is None or 0 <= config.ema_decay < 1,
         "in [0, 1) (e.g. 0.995) or null"),
        ("budget_minutes", config.budget_minutes is None or config.budget_minutes > 0, "> 0 or null"),
    )
    for key, ok, allowed in ranges:
        if not ok:
            raise ValueError(f"config key {key!r} must be {allowed}, got {getattr(config, key)}")
    for key in SEED_KEYS:
        if not 0 <= getattr(config, key) < 2**63:
            raise ValueError(f"config key {key!r} must be in [0, 2**63), got {getattr(config, key)}")
    for key in NON_EMPTY_KEYS:
        if getattr(config, key) is not None and not getattr(config, key).strip():
            raise ValueError(f"config key {key!r} may not be empty; give a value or null for the default")


def check_key_is_str(key: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"config keys must be strings, got {key!r} ({type(key).__name__})")


def unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {key!r}{hint}; allowed keys: {', '.join(known)}"


def check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"config key {key!r} must be one of {', '.join(allowed)}; got {value!r}")


def check_type(key: str, value: Any, hint: Any) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    expected = origin or hint
    ok = isinstance(value, expected) and not (expected in (int, float) and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise TypeError(
            f"config key {key!r} must be {getattr(expected, '__name__', expected)}, "
            f"got {value!r} ({type(value).__name__})"
        )
    if expected is dict:
        bad = next((k for k in value if not isinstance(k, str)), None)
        if bad is not None:
            raise TypeError(f"config key {key!r} must map names (strings) to values, got the key {bad!r} "
                            f"({type(bad).__name__})")
    if expected is list and args:
        for item in value:
            if not isinstance(item, args[0]):
                raise TypeError(f"config key {key!r} must be a list of {args[0].__name__}, got item {item!r}")


def check_augment(augment: dict[str, Any]) -> None:
    for key in augment:
        if key not in AUGMENT_KEYS:
            message = unknown_key_message(key, list(AUGMENT_KEYS))
            raise ValueError(message.replace("unknown config key", "unknown augment key"))
    shift = augment.get("shift", 0)
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ValueError(f"augment key 'shift' must be a whole number of pixels >= 0, got {shift!r}")
    affine = augment.get("affine")
    if affine is not None and (not isinstance(affine, list) or len(affine) != 4
                               or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          for v in affine)):
        raise ValueError("augment key 'affine' must be [degrees, scale, shear, translate], e.g. "
                         f"[10, 0.1, 0, 1], got {affine!r}")


def storable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"<in-memory {type(value).__name__}: not stored>"
