"""Compare meta-learners on identical episodes: "which algorithm should I choose?".

``compare("omniglot", ["protonet", "matching", "snail"], root=...)`` trains each learner with the
library's one trainer (``attnmeta.train.train``, as ``attnmeta train`` does: the same presets, the same
budgets), or loads it from a run folder written by ``attnmeta train``, evaluates all of them on the **same**
fixed test episodes (``attnmeta.eval.evaluate``) and returns / prints one table: accuracy (classification) or
MSE (regression) +/- 95% CI, training steps and time (wall and process CPU seconds, from the run's
``summary.json``), adaptation time per task, peak memory; it can also write a JSON file and a PNG bar chart.
On the meta-RL benchmarks (``navigation``, ``halfcheetah-dir``, ``halfcheetah-vel``) the learners are
``maml-rl`` / ``snail-rl``, all evaluated on the same fixed test tasks (``evaluate_rl``): the value is the
return after adaptation (higher is better) and each row also keeps its adaptation curve.

Each learner's run config is built as the CLI builds it: defaults < the preset of (benchmark, learner)
(``attnmeta.train.presets``) < compare's settings (``steps``, a time budget ``budget_minutes`` on
``budget_clock``, ``meta_batch``, ``lr``, ``algo_options`` ...) < ``overrides`` (like ``attnmeta train
--set``). The runs go to ``out_dir/runs/<algo>`` (kept: resume, plot or evaluate them like any run), or to a
temporary folder removed afterwards when ``out_dir`` is None. Every learner is evaluated as ``attnmeta train``
tests a run: its best checkpoint by validation (the newest without validation). A learner can appear under
a label, ``LABEL=LEARNER`` (e.g. ``pretrained=maml-rl`` with ``algo_options={"pretrained": {"inner_steps":
0}}``), so that one learner is compared with different options.

Peak memory is the peak resident set size of this process while the algorithm trained and was evaluated,
minus the resident size before it started (sampled every 10 ms from ``/proc/self/statm``; on CUDA,
``torch.cuda.max_memory_allocated``); freed memory is handed back to the system between learners. Command
line: ``attnmeta compare omniglot --algos protonet,matching --root ../shared/data/omniglot --budget 2m``
(see ``main``).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from attnmeta import learners
from attnmeta.compare_report import CompareResult, CompareRow, PeakMemory, _return_freed_memory
from attnmeta.compare_runs import (
    TEST_KEYS,
    TRAIN_SHAPE_KEYS,
    Benchmarks,
    Shared,
    build_for,
    check_loaded_benchmark,
    compare_config,
    compare_settings,
    differences,
    evaluate_learner,
    load_from_run,
    shared_episodes,
    trained_learner,
)
from attnmeta.eval import EvalResult
from attnmeta.train.config import RL_ALGOS, RunConfig

__all__ = ["CompareRow", "CompareResult", "compare", "compare_config", "build_for", "PeakMemory", "main"]


# ---------------------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------------------
def compare(benchmark: str | Any, algos: Sequence[str], *, ways: int | None = None, shots: int | None = None,
            queries: int | None = None, root: str | Path | None = None, steps: int | None = None,
            budget_minutes: float | None = None, budget_clock: str | None = None,
            budget_seconds: float | None = None, meta_batch: int | None = None, lr: float | None = None,
            lr_decay_every: int | None = None, episodes: int = 600, eval_seed: int = 0, seed: int = 0,
            backbone: str | None = None, backbone_options: dict[str, Any] | None = None,
            algo_options: dict[str, dict[str, Any]] | None = None,
            run_dirs: dict[str, str | Path] | None = None, benchmark_options: dict[str, Any] | None = None,
            overrides: dict[str, Any] | None = None, presets: bool = True, log_every: int = 0,
            out_dir: str | Path | None = None, plot: bool = True,
            print_fn: Callable[[str], None] | None = print) -> CompareResult:
    """Train (or load) every learner in ``algos`` and evaluate all on the same fixed test episodes.

    Args:
        benchmark: a name for ``attnmeta.data.benchmarks.make_benchmark`` (built as ``attnmeta train`` builds
            it, with ``root`` and ``benchmark_options``), a meta-RL benchmark (``navigation``,
            ``halfcheetah-dir``, ``halfcheetah-vel``) or an already built benchmark
            (``make_benchmark(...)``, ``attnmeta.train.builders.BenchmarkParts`` or any object with
            ``task_type``, ``train`` / ``val`` / ``test`` task sources and ``input_shape``); the presets of
            its ``name`` apply, less the training episodes' shape (the object's training source defines it).
            Every learner trains from the same position of the training source.
        algos: registered learner names, e.g. ``["protonet", "matching", "snail", "transfer"]`` (meta-RL:
            ``["maml-rl", "snail-rl"]``); ``"LABEL=LEARNER"`` lists a learner under another name (its row,
            run folder and ``algo_options`` / ``run_dirs`` key), e.g. ``"pretrained=maml-rl"``.
        ways / shots / queries: the episodes (``None``: the preset's, else 5-way 1-shot 15 queries for
            classification, 10 / 10 for regression); every learner is tested on the same episodes.
        steps: outer steps per learner (``None``: the preset's, else 1000). Setting it drops a preset's time
            budget, as ``attnmeta train --steps`` does.
        budget_minutes / budget_clock: stop each learner's training after this many minutes of ``cpu``
            (process CPU time, the default) or ``wall`` time, or at ``steps``, whichever comes first
            (``attnmeta train --budget``). ``budget_seconds``: the same budget in seconds.
        meta_batch, lr, lr_decay_every: outer loop settings (``None``: the preset's); ``lr_decay_every``
            halves the learning rate every that many steps (``schedule="step"``).
        episodes, eval_seed: the fixed test episodes (``benchmark.test.fixed_tasks(episodes, eval_seed)``),
            recorded as the runs' ``test_episodes`` / ``test_seed``; on meta-RL, the fixed test tasks
            ``RL_BENCHMARKS[name].make_family(seed + 2).fixed_tasks(episodes, eval_seed)`` (the CLI's
            default there: 40, the preset's ``test_episodes``).
        seed: the runs' seed (every RNG; the benchmark's too when it is built here).
        backbone / backbone_options: override the benchmark's default backbone.
        algo_options: per-algorithm learner options, e.g. ``{"matching": {"fce": True}}`` (over the preset's);
            a labelled learner gets its learner's options, then its label's.
        run_dirs: ``{algo or label: run folder}`` to load trained learners (``attnmeta train``, meta-RL runs
            too) instead of training them.
        overrides: any other config keys for every learner, applied last (``attnmeta train --set``), e.g.
            ``{"schedule": "cosine", "threads": 1}``.
        presets: ``False``: no presets (defaults < compare's settings), for scripts that pin every setting.
        log_every: validate and print a line every this many steps (``eval_every``; 0: the preset's).
        out_dir: where the runs (``runs/<algo>``), ``compare.json`` and ``compare.png`` go (``None``: the runs
            go to a temporary folder, removed at the end, and nothing else is written).

    Returns a ``CompareResult`` (``.rows``, ``.table()``); the table is printed unless ``print_fn`` is None.
    """
    labels, run_dirs = _check_algos(algos, run_dirs)
    say = print_fn or (lambda _line: None)
    name, given = _benchmark_name(benchmark, root, benchmark_options)
    settings = compare_settings(ways=ways, shots=shots, queries=queries, root=root, steps=steps,
                                budget_minutes=budget_minutes, budget_clock=budget_clock,
                                budget_seconds=budget_seconds, meta_batch=meta_batch, lr=lr,
                                lr_decay_every=lr_decay_every, episodes=episodes, eval_seed=eval_seed,
                                seed=seed, backbone=backbone, backbone_options=backbone_options,
                                benchmark_options=benchmark_options, log_every=log_every,
                                plot=plot and out_dir is not None)
    runs_folder = Path(out_dir) / "runs" if out_dir is not None else None
    configs = _learner_configs(name, given, labels, run_dirs, settings, overrides or {}, algo_options or {},
                               presets, runs_folder)
    first = _check_shared_test_episodes(configs, labels, run_dirs, runs_folder)
    shared = shared_episodes(first, given, episodes, eval_seed)
    rows, trained_configs = _train_and_evaluate(labels, configs, run_dirs, shared, runs_folder is None, say)
    outcome = CompareResult(rows, {
        "benchmark": name, "ways": first.ways, "shots": first.shots, "queries": first.queries,
        "metric": rows[0].metric if rows else None, "steps": steps,
        "budget_minutes": settings.get("budget_minutes"), "budget_clock": settings.get("budget_clock"),
        "meta_batch": meta_batch, "lr": lr, "episodes": episodes, "eval_seed": eval_seed, "seed": seed,
        "backbone": backbone or shared.default_backbone, "threads": shared.threads, "presets": presets,
        "configs": trained_configs})
    _report(outcome, out_dir, plot, say)
    return outcome


# -- the arguments ----------------------------------------------------------------------------------------
_LABEL = re.compile(r"[A-Za-z0-9_.+-]+")


def _check_algos(algos: Sequence[str], run_dirs: dict[str, str | Path] | None
                 ) -> tuple[dict[str, str], dict[str, str | Path]]:
    """``{label: learner}`` of ``algos`` (a learner under its own name, or ``LABEL=LEARNER``), checked, and
    ``run_dirs`` as a dict."""
    if not algos:
        raise ValueError("algos is empty; name at least one learner, e.g. algos=['protonet']")
    run_dirs = dict(run_dirs or {})
    known = [*learners.available(), *RL_ALGOS]
    pairs = [_label_and_learner(entry, known) for entry in algos]
    unknown = [algo for label, algo in pairs if algo not in known and label not in run_dirs]
    if unknown:
        raise ValueError(f"unknown learner(s) {unknown}; choose from: {', '.join(known)}")
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"algos lists a learner twice: {list(algos)}; list it again under a label, e.g. "
                         "'pretrained=maml-rl'")
    return dict(pairs), run_dirs


def _label_and_learner(entry: str, known: list[str]) -> tuple[str, str]:
    """``("pretrained", "maml-rl")`` for ``"pretrained=maml-rl"``, ``("maml", "maml")`` for ``"maml"``."""
    if "=" not in entry:
        return entry, entry
    label, algo = (part.strip() for part in entry.split("=", 1))
    if not _LABEL.fullmatch(label) or label in known:
        raise ValueError(f"{entry!r}: the label before '=' must be a new name (letters, digits, '_.+-'), "
                         "not a learner's, e.g. 'pretrained=maml-rl'")
    return label, algo


def _benchmark_name(benchmark: str | Any, root: str | Path | None,
                    benchmark_options: dict[str, Any] | None) -> tuple[str, Any]:
    """The benchmark's name and the built benchmark given (``None`` for a name: each run builds it)."""
    from attnmeta.train.run import benchmark_parts

    if isinstance(benchmark, str):
        return benchmark, None
    if root is not None or benchmark_options:
        raise ValueError("root and benchmark_options build a benchmark given by name; this benchmark is "
                         "already built: drop them")
    given = benchmark_parts(benchmark)
    return given.name, given


# -- the configs ------------------------------------------------------------------------------------------
def _learner_configs(name: str, given: Any, labels: dict[str, str], run_dirs: dict[str, str | Path],
                     settings: dict[str, Any], overrides: dict[str, Any],
                     algo_options: dict[str, dict[str, Any]], presets: bool,
                     runs_folder: Path | None) -> dict[str, RunConfig]:
    """``{label: run config}`` of the learners trained here: defaults < the preset < ``settings`` (and the
    learner's, then the label's ``algo_options``) < ``overrides``. When all are loaded, the first one's
    config (of its learner, or of its run's learner) still defines the test episodes."""
    configs = {}
    for label in [label for label in labels if label not in run_dirs] or list(labels)[:1]:
        algo = labels[label]
        if algo not in [*learners.available(), *RL_ALGOS]:  # a run folder loaded under a label
            from attnmeta.train.run_folder import load_run_config

            algo = load_run_config(run_dirs[label], report=lambda _line: None).algo
        options = {**algo_options.get(algo, {}), **(algo_options.get(label, {}) if label != algo else {})}
        values = {**settings, **({"algo_options": options} if options else {}), **overrides}
        if runs_folder is not None:
            values["run_dir"] = str(runs_folder / label)
        configs[label] = _learner_config(name, given, algo, values, presets)
    return configs


def _learner_config(name: str, given: Any, algo: str, values: dict[str, Any], presets: bool) -> RunConfig:
    """``compare_config`` of ``algo``; on a built benchmark, without the preset's training-episode shape."""
    config = compare_config(name, algo, values, presets=presets)
    if given is not None:  # the object's own training episodes: drop the preset's shape
        shape: dict[str, Any] = {k: (values.get(k) if k in values else None) for k in TRAIN_SHAPE_KEYS}
        config = dataclasses.replace(config, **shape)
    return config


def _check_shared_test_episodes(configs: dict[str, RunConfig], labels: dict[str, str],
                                run_dirs: dict[str, str | Path], runs_folder: Path | None) -> RunConfig:
    """The first config, after checking that every config defines its test episodes, that no run folder
    to train into holds a run already and that the meta-RL runs to load are of the same benchmark."""
    first = next(iter(configs.values()))
    for label, config in configs.items():
        differ = differences(first, config, TEST_KEYS)
        if differ:
            raise ValueError(
                f"the presets of {label} and {first.algo} define different test episodes "
                f"({', '.join(differ)}); set them for all, e.g. ways=5, shots=1, queries=15 "
                "(--ways/--shots/--queries)")
        folder = Path(str(config.run_dir))  # (set by `resolved`)
        if runs_folder is not None and label not in run_dirs and folder.exists() and any(folder.iterdir()):
            raise ValueError(f"{config.run_dir} already holds a run: load it with run_dirs={{{label!r}: "
                             f"{config.run_dir!r}}} (--run-dir {label}={config.run_dir}) or choose another "
                             "out_dir")
    for label in [label for label in labels if label in run_dirs]:
        check_loaded_benchmark(first, run_dirs[label])
    return first


# -- training and evaluating ------------------------------------------------------------------------------
def _train_and_evaluate(labels: dict[str, str], configs: dict[str, RunConfig],
                        run_dirs: dict[str, str | Path], shared: Shared, temporary: bool,
                        say: Callable[[str], None]) -> tuple[list[CompareRow], dict[str, dict[str, Any]]]:
    """A row per learner, in order, and the stored config of each learner trained here; ``temporary``: the
    runs go to a scratch folder, removed at the end."""
    scratch = Path(tempfile.mkdtemp(prefix="attnmeta-compare-")) if temporary else None
    rows: list[CompareRow] = []
    trained_configs: dict[str, dict[str, Any]] = {}
    try:
        for label in labels:
            say(f"[{label}]")
            row, stored = _one_learner(label, configs.get(label), run_dirs.get(label), shared, scratch, say)
            rows.append(row)
            if stored is not None:
                trained_configs[label] = stored
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return rows, trained_configs


def _one_learner(label: str, config: RunConfig | None, run_dir: str | Path | None, shared: Shared,
                 scratch: Path | None, say: Callable[[str], None]
                 ) -> tuple[CompareRow, dict[str, Any] | None]:
    """Train (or load) one learner and evaluate it on the shared episodes, measuring its peak memory; its
    row and, when trained here, its stored config."""
    stored = None
    with PeakMemory() as memory:
        try:
            if run_dir is not None:
                learner, config, trained = load_from_run(run_dir)
                trained.update(origin=f"run folder {run_dir}", kept=str(run_dir))
            else:
                assert config is not None
                learner, trained, stored = _train_one(label, config, shared.benches, scratch, say)
            result, curve = evaluate_learner(learner, config, shared.episodes, shared.eval_seed)
            del learner
        finally:
            torch.set_num_threads(shared.threads)  # a run's `threads` stays with its run
            _return_freed_memory()
    say(f"  {label}: {result}")
    return _row(label, result, curve, trained, memory, len(shared.episodes)), stored


def _train_one(label: str, config: RunConfig, benches: Benchmarks | None, scratch: Path | None,
               say: Callable[[str], None]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Train ``config`` with the one trainer (meta-RL runs build their own task family); its tested learner,
    its training steps, seconds and folder, and its stored config."""
    from attnmeta.train.trainer import train

    if scratch is not None:
        config = dataclasses.replace(config, run_dir=str(scratch / label))
    bench = benches.for_config(config) if benches is not None else None
    run = train(config, bench=bench, evaluate_test=False, quiet=True, print_fn=say)
    run_config = run.config or config  # (the trainer's: the benchmark named as the run recorded it)
    stored = run_config.to_storable_dict()
    if scratch is not None:
        stored["run_dir"] = None  # removed at the end
    learner = trained_learner(run_config, bench, run.run_dir)
    trained = {"steps": run.steps, "wall_s": float(run.summary["train_seconds"]),
               "cpu_s": float(run.summary["train_cpu_seconds"]), "origin": "trained here",
               "kept": str(run.run_dir) if scratch is None else None}
    return learner, trained, stored


def _row(label: str, result: EvalResult, curve: dict[str, Any] | None, trained: dict[str, Any],
         memory: PeakMemory, episodes: int) -> CompareRow:
    peak = memory.cuda_peak_mib if memory.cuda_peak_mib is not None else memory.peak_mib
    return CompareRow(label, result.metric, result.mean, result.ci95, episodes, trained["steps"],
                      trained["wall_s"], trained["cpu_s"], result.seconds_per_task, peak, trained["origin"],
                      trained["kept"], result.per_episode, curve)


def _report(outcome: CompareResult, out_dir: str | Path | None, plot: bool,
            say: Callable[[str], None]) -> None:
    """Print the table; with ``out_dir``, write ``compare.json`` and (``plot``) ``compare.png``."""
    say(outcome.table())
    if out_dir is not None:
        outcome.save_json(Path(out_dir) / "compare.json")
        if plot:
            outcome.plot(Path(out_dir) / "compare.png")


# ---------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``attnmeta compare BENCHMARK --algos a,b,c [--ways 5 --shots 1 --budget 2m ...]`` (the flags:
    ``attnmeta.compare_cli``)."""
    from attnmeta.compare_cli import parse

    benchmark, algos, kwargs = parse(argv)
    compare(benchmark, algos, **kwargs)
    return 0
