"""Attention-MAML options from a plain config (YAML, ``--set``): nested mappings -> attention objects.

``algo_options`` of ``attention-maml`` may hold, besides ``MAML``'s options::

    task_attention: true                 # MetaBatchWeighting() (the paper's defaults)
    task_attention: {kind: weighting, temperature: 0.1, entropy: 0.03, mode: gate, standardize: true,
                     scale_free: false, heldout_batch: 10, task_dim: 32}
    task_attention: {kind: selector, temperature: 0.05, uniform_share: 0.2, keep: 4}
    feature_attention: true              # FeatureAttention()
    feature_attention: {mode: all, task_dim: 32, spatial: false, block_names: ["1", "3"]}
    param_attention: true                # ParamAttentionRule(inner_lr, learn_lr=learn_inner_lr)
    param_attention: {mode: soft, top_k: 1, lr_mode: scalar, key_dim: 16, hidden: 32, temperature: 1.0}

``false`` / ``null`` switch a mechanism off. Each function below turns one entry into its object (objects
pass through unchanged) and rejects an unknown nested key with a one-line ``ValueError`` naming the valid
ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from attnmeta.learners.param_attention import ParamAttentionRule
from attnmeta.learners.task_attention import MetaBatchWeighting, TaskSelector
from attnmeta.nn.film import FeatureAttention

__all__ = ["task_attention_from_config", "feature_attention_from_config", "param_attention_from_config",
           "attention_options", "INNER_LR"]

INNER_LR = 0.01  # AttentionMAML's (and MAML's) default inner learning rate
TASK_KINDS = ("weighting", "selector")
#: ParamAttentionRule arguments that come from the learner's ``inner_lr`` / ``learn_inner_lr`` instead
_RULE_FROM_LEARNER = ("self", "lr", "learn_lr")


def task_attention_from_config(value: Any) -> MetaBatchWeighting | TaskSelector | None:
    """``true`` / ``{kind: weighting, ...}`` -> ``MetaBatchWeighting``; ``{kind: selector, ...}`` ->
    ``TaskSelector``; ``false`` / ``null`` -> ``None``."""
    if isinstance(value, (MetaBatchWeighting, TaskSelector)):
        return value
    options = _options("task_attention", value)
    if options is None:
        return None
    kind = options.pop("kind", "weighting")
    if kind not in TASK_KINDS:
        raise ValueError(f"algo_options.task_attention.kind must be one of {', '.join(TASK_KINDS)}, "
                         f"got {kind!r}")
    if kind == "selector":
        _check_keys("task_attention", options, ["kind", *_init_names(TaskSelector)])
        if "keep" not in options:
            raise ValueError("algo_options.task_attention with kind: selector needs keep: N (the tasks of "
                             "each meta-batch to train on)")
        return TaskSelector(**options)
    fields = [f.name for f in dataclasses.fields(MetaBatchWeighting)]
    _check_keys("task_attention", options, ["kind", *fields])
    return MetaBatchWeighting(**options)


def feature_attention_from_config(value: Any) -> FeatureAttention | None:
    """``true`` / ``{mode: all, task_dim: 32, spatial: false, block_names: [...]}`` ->
    ``FeatureAttention``."""
    if isinstance(value, FeatureAttention):
        return value
    options = _options("feature_attention", value)
    if options is None:
        return None
    _check_keys("feature_attention", options, [f.name for f in dataclasses.fields(FeatureAttention)])
    return FeatureAttention(**options)


def param_attention_from_config(value: Any, inner_lr: float = INNER_LR,
                                learn_inner_lr: bool = False) -> ParamAttentionRule | bool | None:
    """``{mode: soft, top_k: 1, lr_mode: scalar, ...}`` -> ``ParamAttentionRule(inner_lr, ...)``; ``true``
    stays ``True`` (the learner builds the default rule), ``false`` / ``null`` -> ``None``."""
    if value is True or isinstance(value, ParamAttentionRule):
        return value
    options = _options("param_attention", value)
    if options is None:
        return None
    valid = [n for n in _init_names(ParamAttentionRule) if n not in _RULE_FROM_LEARNER]
    _check_keys("param_attention", options, valid)
    for key in ("top_k", "key_dim", "hidden"):
        if key in options and (isinstance(options[key], bool) or not isinstance(options[key], int)):
            raise ValueError(f"algo_options.param_attention.{key} must be an int, got {options[key]!r}")
    if "temperature" in options and not _is_number(options["temperature"]):
        raise ValueError(f"algo_options.param_attention.temperature must be a number, "
                         f"got {options['temperature']!r}")
    return ParamAttentionRule(inner_lr, learn_lr=learn_inner_lr, **options)


def attention_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the three attention entries turned into objects (see the module docstring)."""
    options = dict(options)
    if "task_attention" in options:
        options["task_attention"] = task_attention_from_config(options["task_attention"])
    if "feature_attention" in options:
        options["feature_attention"] = feature_attention_from_config(options["feature_attention"])
    value = options.get("param_attention")
    if value is not None and value is not True and not isinstance(value, ParamAttentionRule):
        lr = options.get("inner_lr", INNER_LR)
        learn = options.pop("learn_inner_lr", False)
        options["param_attention"] = param_attention_from_config(value, lr, learn)
    return options


def _options(name: str, value: Any) -> dict[str, Any] | None:
    """A copy of a mechanism's nested mapping; ``{}`` for ``true``, ``None`` for ``false`` / ``null``."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"algo_options.{name} must be true, false or a mapping of its options, "
                         f"got {type(value).__name__} {value!r}")
    return dict(value)


def _check_keys(name: str, options: Mapping[str, Any], valid: list[str]) -> None:
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown key {key!r} in algo_options.{name}{hint}; valid keys: "
                             f"{', '.join(sorted(valid))}")


def _init_names(cls: type) -> list[str]:
    parameters = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]  # a class's own
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.name != "self" and p.kind in kinds]


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))
