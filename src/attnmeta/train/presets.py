"""Presets: the defaults of ``attnmeta train BENCHMARK --algo ALGO``, under everything the user sets.

A preset makes the plain command finish in minutes on 2 CPU cores with a useful result; recipes
(``attnmeta recipes``) are the longer, tuned configurations that reproduce published figures.
"""

from __future__ import annotations

from typing import Any

REGRESSION_BENCHMARKS = ("sinusoid", "multimodal")
MAML_FAMILY = ("maml", "fomaml", "meta-sgd", "anil", "maml++")

#: Defaults per benchmark, applied by ``RunConfig.preset`` (the CLI) under the user's own settings.
#: The regression preset is the README's main job: about a minute on 2 CPU cores. One torch thread: the
#: 40-40 MLP is far too small to gain from more, and extra threads spin against each other on a busy machine.
_REGRESSION_PRESET: dict[str, Any] = {
    "meta_batch": 10,
    "steps": 1200,
    "lr": 3e-3,
    "schedule": "cosine",
    "eval_every": 300,
    "eval_episodes": 100,
    "checkpoint_every": 300,
    "threads": 1,
}
BENCHMARK_PRESETS: dict[str, dict[str, Any]] = {
    "sinusoid": dict(_REGRESSION_PRESET),
    "multimodal": dict(_REGRESSION_PRESET),
    # few-shot intents (held-out domains); the lexical text encoder, a few CPU-minutes
    "clinc150": {"ways": 5, "shots": 1, "queries": 10, "meta_batch": 2, "steps": 300, "lr": 1e-3,
                 "eval_every": 100, "eval_episodes": 100, "checkpoint_every": 100, "threads": 1},
}
#: Learner options added on CLINC150: cosine prototypes (TF-IDF nearest centroid before meta-training) and
#: MAML on the zero-initialised head with a large inner step (the lexical features have norm 4).
CLINC150_OPTIONS = {"protonet": {"distance": "cosine"}, "maml": {"adapt": "head", "inner_lr": 0.5},
                    "fomaml": {"adapt": "head", "inner_lr": 0.5}, "anil": {"inner_lr": 0.5}}
#: Learner options added for the MAML family on the regression presets (evaluation with 10 inner steps,
#: as in the MAML paper's sinusoid results).
REGRESSION_MAML_OPTIONS = {"eval_inner_steps": 10}


def preset(benchmark: str, algo: str) -> dict[str, Any]:
    """The defaults for ``benchmark`` trained with ``algo`` (a fresh dict)."""
    values = dict(BENCHMARK_PRESETS.get(benchmark, {}))
    if benchmark in REGRESSION_BENCHMARKS and algo in MAML_FAMILY:
        values["algo_options"] = dict(REGRESSION_MAML_OPTIONS)
    if benchmark == "clinc150" and algo in CLINC150_OPTIONS:
        values["algo_options"] = dict(CLINC150_OPTIONS[algo])
    return values


def preset_lines() -> list[str]:
    """``benchmark [learner]: key=value, ...`` for every preset (``attnmeta train --help``)."""
    lines = [f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
             for name, values in BENCHMARK_PRESETS.items()]
    lines += [f"{name} with {', '.join(MAML_FAMILY)}: algo_options {REGRESSION_MAML_OPTIONS}"
              for name in REGRESSION_BENCHMARKS]
    lines += [f"clinc150 with {algo}: algo_options {options}" for algo, options in CLINC150_OPTIONS.items()]
    return lines
