"""The commands behind ``attnmeta``: train, eval, plot, predict, compare, recipes (one function each)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from attnmeta.train.config import RunConfig, load_config_file, parse_overrides

# CLI flag -> config key, for the dedicated train flags.
TRAIN_FLAGS = {
    "algo": "algo",
    "ways": "ways",
    "shots": "shots",
    "queries": "queries",
    "train_ways": "train_ways",
    "train_shots": "train_shots",
    "train_queries": "train_queries",
    "meta_batch": "meta_batch",
    "steps": "steps",
    "lr": "lr",
    "optimizer": "optimizer",
    "schedule": "schedule",
    "backbone": "backbone",
    "root": "root",
    "split": "split",
    "image_size": "image_size",
    "eval_every": "eval_every",
    "eval_episodes": "eval_episodes",
    "test_episodes": "test_episodes",
    "seed": "seed",
    "device": "device",
    "dtype": "dtype",
    "threads": "threads",
    "run_dir": "run_dir",
    "weight_decay": "weight_decay",
    "budget": "budget_minutes",
    "budget_clock": "budget_clock",
    "shift": "augment.shift",
    "rotation_ensemble": "test_rotation_ensemble",
    "ema": "ema_decay",
    "download": "benchmark_options.download",
}

def _results_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of evaluation results (mean +/- 95% CI)."""
    headers = ["benchmark", "algo", "ways", "shots", "episodes", "metric", "mean +/- 95% CI"]
    lines = [[str(r.get(h, "")) for h in headers[:-1]] + [r["result"]] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*headers), fmt.format(*("-" * w for w in widths)), *(fmt.format(*line) for line in lines)]
    )


def _result_row(config: RunConfig, result: Any) -> dict[str, Any]:
    value = (
        f"{100 * result.mean:.2f}% +/- {100 * result.ci95:.2f}"
        if result.metric in ("accuracy", "map50")
        else f"{result.mean:.4f} +/- {result.ci95:.4f}"
    )
    return {
        "benchmark": config.benchmark,
        "algo": config.algo,
        "ways": config.ways if config.task_type in ("classification", "detection") else "-",
        "shots": config.shots if config.task_type != "rl" else "-",
        "episodes": result.summary.n,
        "metric": result.metric,
        "result": value,
    }


def _source_rows(config: RunConfig, row: dict[str, Any], groups: dict[str, Any]) -> list[dict[str, Any]]:
    """``row``, then one row per episode source (``groups``: mean, ci95, n of the multi-domain benchmarks'
    sources, ``attnmeta.data.multi_domain``, whose ways and shots columns show ranges)."""
    if config.benchmark.startswith("multi:"):
        from attnmeta.data.multi_domain import shape_columns

        row = {**row, **shape_columns(config.benchmark_options, row["shots"])}
    return [row, *({**row, "benchmark": f"  {name}", "episodes": g["n"],
                    "result": f"{100 * g['mean']:.2f}% +/- {100 * g['ci95']:.2f}"}
                   for name, g in groups.items())]


def _note(command: str) -> Any:
    """A ``report`` callback printing one note line to stderr."""
    return lambda line: print(f"attnmeta {command}: note: {line}", file=sys.stderr)


# -- train ------------------------------------------------------------------------------------------
#: The default learner of the task families whose learners are not the classification ones.
DEFAULT_ALGOS = {"rl": "maml-rl", "detection": "prototype-detector"}


def _train_config(args: argparse.Namespace) -> RunConfig:
    """defaults < preset of (benchmark, learner) < --recipe < --config < flags < --set; a recipe replaces the
    preset, and some user keys drop preset keys (``_PRESET_DROPPED_BY``)."""
    values: dict[str, Any] = {}
    if getattr(args, "recipe", None):
        from attnmeta.train import recipes

        values = {**recipes.load(args.recipe).config, "recipe": args.recipe}
    if args.config:
        values.update(load_config_file(args.config))
    base = RunConfig.from_dict(values)
    overrides: dict[str, Any] = {}
    if args.benchmark is not None:
        overrides["benchmark"] = args.benchmark
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.imports:
        overrides["imports"] = [*base.imports, *args.imports]
    overrides.update(parse_overrides(args.set or []))
    chosen = base.with_overrides(overrides)
    if chosen.task_type in DEFAULT_ALGOS and "algo" not in values and "algo" not in overrides:
        chosen = chosen.with_overrides({"algo": DEFAULT_ALGOS[chosen.task_type]})
    if chosen.recipe is not None:  # a recipe is a whole run definition: no preset under it
        return chosen
    user_keys = set(values) | {key.split(".", 1)[0] for key in overrides}
    return chosen.with_overrides(_preset_under(chosen, user_keys))


#: User key -> preset keys it drops: N steps asked means N steps trained (no preset budget); a user's
#: budget is CPU time unless they say wall; a test shape the user sets is also the training shape; another
#: backbone does not take the default backbone's options.
#: ``support_splits`` divides each class's examples into support/query splits: a preset value may not fit
#: episodes of the user's own shape.
_SPLITS = "algo_options.support_splits"
_PRESET_DROPPED_BY = {"steps": ("budget_minutes", "budget_clock"), "budget_minutes": ("budget_clock",),
                      "ways": ("train_ways",), "shots": ("train_shots", _SPLITS),
                      "queries": ("train_queries", _SPLITS), "train_shots": (_SPLITS,),
                      "train_queries": (_SPLITS,), "backbone": ("backbone_options",)}


def _preset_under(chosen: RunConfig, user_keys: set[str]) -> dict[str, Any]:
    """The preset of (benchmark, learner) less what the user set (``user_keys``, top-level names) and what
    those keys drop; mapping keys (``algo_options`` ...) are merged, the user's entries winning."""
    preset = RunConfig.preset(chosen.benchmark, chosen.algo)
    dropped = {k for key in user_keys for k in _PRESET_DROPPED_BY.get(key, ())}
    merged = {}
    for key, value in preset.items():
        if key in dropped:
            continue
        if isinstance(value, dict):
            kept = {k: v for k, v in value.items() if f"{key}.{k}" not in dropped}
            merged[key] = {**kept, **getattr(chosen, key)}
        elif key not in user_keys:
            merged[key] = value
    return merged


def _resume_config(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """The saved config of ``--resume RUN_DIR`` with the changes a resume may make (``RESUME_OVERRIDES``)."""
    from attnmeta.train.trainer import RESUME_OVERRIDES, load_run_config

    given = {flag: getattr(args, flag) for flag in TRAIN_FLAGS}
    changes = {TRAIN_FLAGS[flag]: value for flag, value in given.items() if value is not None}
    changes.update(parse_overrides(args.set or []))
    refused = sorted(key for key in changes if key not in RESUME_OVERRIDES)
    if args.benchmark or args.config or refused:
        what = ", ".join(["BENCHMARK"] * bool(args.benchmark) + ["--config"] * bool(args.config) + refused)
        raise ValueError(
            f"--resume continues the run as it was defined; it cannot change {what} (a resume may change "
            f"{', '.join(RESUME_OVERRIDES)}); start a new run with another --run-dir for the rest"
        )
    config = load_run_config(args.resume, report=_note("train"))
    config = config.with_overrides({**changes, "run_dir": str(args.resume)})
    return config, changes


def cmd_train(args: argparse.Namespace) -> int:
    from attnmeta.train.trainer import train

    if args.resume:
        config, changes = _resume_config(args)
        result = train(config, quiet=args.quiet, resume=True, imports=args.imports or (), changes=changes)
    else:
        result = train(_train_config(args), quiet=args.quiet)
    if result.test is not None:
        assert result.config is not None  # train() returns the resolved config
        print()
        row = _result_row(result.config, result.test)
        print(_results_table(_source_rows(result.config, row, result.summary.get("test_per_source", {}))))
        print(
            f"\nrun folder: {result.run_dir}  (train time {result.summary['train_seconds']:.1f} s; "
            f"best validation {result.best['metric']} {result.best['value']:.4g} "
            f"at step {result.best['step']})"
            if result.best
            else f"\nrun folder: {result.run_dir}"
        )
    return 0


# -- eval ---------------------------------------------------------------------------------------------
# -- plot, predict, compare ---------------------------------------------------------------------
def cmd_plot(args: argparse.Namespace) -> int:
    from attnmeta.plots import plot_runs

    output = plot_runs(args.run_dirs, args.output)
    print(f"wrote {output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from attnmeta.detector import FewShotDetector
    from attnmeta.predictor import load
    from attnmeta.predictor_inputs import read_query_folder, read_support_folder
    from attnmeta.seq2seq_predictor import FewShotSeq2Seq

    clf = load(args.run_dir, imports=args.imports or ())
    if isinstance(clf, FewShotSeq2Seq):
        from attnmeta.cli.seq2seq import predict_seq2seq

        return predict_seq2seq(args, clf)
    if isinstance(clf, FewShotDetector):
        raise ValueError(f"{args.run_dir!r} is a detection run; find its classes in images with `attnmeta "
                         "detect RUN --support DIR --images DIR --out DIR`")
    if clf.task_type != "classification":
        raise ValueError(f"{args.run_dir!r} is a {clf.task_type} run; `attnmeta predict` labels images. Use "
                         "attnmeta.load(RUN_DIR).fit(x, y).predict(x_new) in Python for regression")
    images, labels = read_support_folder(args.support, "--support")
    queries, query_files = read_query_folder(args.query, "--query")
    clf.fit(images, labels)
    probabilities = clf.predict_proba(queries)
    for file, row in zip(query_files, probabilities):
        best = int(row.argmax())
        print(f"{file.name}\t{clf.classes_[best]}\t{row[best]:.3f}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        from attnmeta import compare
    except ImportError:
        raise ValueError("`attnmeta compare` needs attnmeta.compare, which this installation lacks") from None
    entry = getattr(compare, "main", None)
    if entry is None:
        raise ValueError("attnmeta.compare has no main(argv) entry point")
    forwarded = list(args.compare_args)
    if forwarded[:1] == ["--"]:
        forwarded = forwarded[1:]
    return int(entry(forwarded) or 0)


def cmd_recipes(args: argparse.Namespace) -> int:
    from attnmeta.train import recipes

    if args.action == "show":
        if not args.target:
            raise ValueError("`attnmeta recipes show NAME` needs a name; `attnmeta recipes` lists them")
        print(recipes.show(args.target), end="")
        return 0
    if args.action == "record":
        if not args.target:
            raise ValueError("`attnmeta recipes record RUN_DIR` needs the folder of a finished recipe run")
        out = recipes.record(args.target, out_dir=args.out or recipes.RESULTS_DIR)
        print(f"wrote {out}")
        return 0
    rows = recipes.table()
    headers = list(rows[0])
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in headers]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(row[h].ljust(w) for h, w in zip(headers, widths)))
    print("\nreached: mean +/- 95% CI on the fixed test episodes of the committed run; DATA: your data "
          "folder (or set ATTNMETA_DATA and drop --root)")
    return 0
