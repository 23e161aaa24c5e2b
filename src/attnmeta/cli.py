"""The ``attnmeta`` command (also ``python -m attnmeta`` and ``torchrun -m attnmeta``).

attnmeta train sinusoid                                   # the README's main job (~1 minute on 2 CPUs)
attnmeta train omniglot --algo maml --ways 5 --shots 1 --root ../shared/data/omniglot
attnmeta train clinc150 --algo protonet --root ../shared/data/text/clinc150   # few-shot intents (text)
attnmeta train --resume runs/omniglot-maml-5w1s
attnmeta eval runs/omniglot-maml-5w1s --ways 20 --shots 1
attnmeta plot runs/a runs/b -o curves.png
attnmeta predict runs/omniglot-maml-5w1s --support support/ --query query/
attnmeta compare ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
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
        if result.metric == "accuracy"
        else f"{result.mean:.4f} +/- {result.ci95:.4f}"
    )
    return {
        "benchmark": config.benchmark,
        "algo": config.algo,
        "ways": config.ways if config.task_type == "classification" else "-",
        "shots": config.shots,
        "episodes": result.summary.n,
        "metric": result.metric,
        "result": value,
    }


def _note(command: str) -> Any:
    """A ``report`` callback printing one note line to stderr."""
    return lambda line: print(f"attnmeta {command}: note: {line}", file=sys.stderr)


# -- train ------------------------------------------------------------------------------------------
def _train_config(args: argparse.Namespace) -> RunConfig:
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
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
    # Benchmark presets sit under everything the user wrote (file, flags, --set).
    chosen = base.with_overrides(overrides)
    preset = RunConfig.preset(chosen.benchmark, chosen.algo)
    user_keys = set(values) | {key.split(".", 1)[0] for key in overrides}
    merged = {k: v for k, v in preset.items() if k not in user_keys}
    if "algo_options" in preset:
        merged["algo_options"] = {**preset["algo_options"], **chosen.algo_options}
    return chosen.with_overrides(merged)


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
    config = result.config
    if result.test is not None:
        print()
        print(_results_table([_result_row(config, result.test)]))
        print(
            f"\nrun folder: {result.run_dir}  (train time {result.summary['train_seconds']:.1f} s; "
            f"best validation {result.best['metric']} {result.best['value']:.4g} "
            f"at step {result.best['step']})"
            if result.best
            else f"\nrun folder: {result.run_dir}"
        )
    return 0


# -- eval ---------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from attnmeta.eval import evaluate
    from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint, load_weights
    from attnmeta.train.run_folder import check_writable
    from attnmeta.train.trainer import build_benchmark, build_learner, import_plugins, load_run_config

    trained = load_run_config(args.run_dir, report=_note("eval"))
    import_plugins(args.imports or [])  # never the imports the run folder names
    if trained.threads:
        torch.set_num_threads(trained.threads)
    changes = {k: getattr(args, k) for k in ("ways", "shots", "queries") if getattr(args, k) is not None}
    if args.root is not None:
        changes["root"] = args.root
    if args.device is not None:
        changes["device"] = args.device
    target = dataclasses.replace(trained, **changes).resolved()
    target.validate()
    manager = CheckpointManager(Path(args.run_dir) / "checkpoints")
    ckpt = manager.best_path() if args.checkpoint == "best" else None
    if ckpt is None or not ckpt.is_dir():
        ckpt = manager.latest_valid()
    if ckpt is None:
        raise ValueError(f"run folder {args.run_dir!r} has no valid checkpoint to evaluate")
    check_writable(Path(args.run_dir), "the evaluation results")
    weights, state = load_checkpoint(ckpt)
    bench = build_benchmark(target)
    learner = build_learner(dataclasses.replace(trained, device=target.device), bench)
    load_weights(learner, weights, ckpt)
    if (
        target.task_type == "classification"
        and target.ways != trained.ways
        and not getattr(learner, "any_ways", True)
    ):
        raise ValueError(
            f"{trained.algo} was meta-trained {trained.ways}-way and cannot be evaluated "
            f"{target.ways}-way; evaluate with --ways {trained.ways}"
        )
    from attnmeta.learners import spec

    if target.task_type == "classification" and spec(trained.algo).head and target.ways > trained.ways:
        raise ValueError(
            f"{trained.algo} was meta-trained {trained.ways}-way with a {trained.ways}-output head and "
            f"cannot classify {target.ways} ways; use --ways <= {trained.ways} (metric learners "
            "such as protonet evaluate at any number of ways)"
        )
    from attnmeta.train.trainer import resolve_device

    device, dtype = resolve_device(target.device), getattr(torch, trained.dtype)
    if args.rotation_ensemble:
        from attnmeta.eval import with_rotation_ensemble

        learner = with_rotation_ensemble(learner)
    episodes = [t.to(device, dtype) for t in bench.test.fixed_tasks(args.episodes, seed=args.seed)]
    result = evaluate(learner, episodes, device=device, progress=not args.quiet, desc="eval")
    print(_results_table([_result_row(dataclasses.replace(target, algo=trained.algo), result)]))
    suffix = "-rotation-ensemble" if args.rotation_ensemble else ""
    out = (
        Path(args.run_dir)
        / f"eval-{target.ways or 0}w{target.shots}s-{args.episodes}ep-seed{args.seed}{suffix}.json"
    )
    out.write_text(
        json.dumps(
            {
                "checkpoint": str(ckpt),
                "step": state["step"],
                "ways": target.ways,
                "shots": target.shots,
                "rotation_ensemble": args.rotation_ensemble,
                **result.to_dict(),
            },
            indent=2,
        )
    )
    print(f"\ncheckpoint {ckpt} (step {state['step']}); per-episode results in {out}")
    return 0


# -- plot, predict, compare ---------------------------------------------------------------------
def cmd_plot(args: argparse.Namespace) -> int:
    from attnmeta.plots import plot_runs

    output = plot_runs(args.run_dirs, args.output)
    print(f"wrote {output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from attnmeta.predictor import load
    from attnmeta.predictor_inputs import read_query_folder, read_support_folder

    clf = load(args.run_dir, imports=args.imports or ())
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


# -- parser -------------------------------------------------------------------------------------------
def _add_import_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--import", dest="imports", action="append", metavar="MODULE_OR_FILE", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnmeta",
        description="Attention-based meta-learning: train, evaluate, plot and use few-shot "
        "learners. Run `attnmeta COMMAND --help` for each command. Errors in your input are one line "
        "(exit status 2); add --debug anywhere to see the traceback.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train",
        help="meta-train a learner, then evaluate it on the fixed test episodes",
        description="Meta-train a learner on a benchmark, validate on fixed episodes, keep the best "
        "checkpoint, then evaluate it on the fixed test episodes (mean +/- 95% CI). Settings "
        "come from defaults < --config FILE < flags < --set key=value. Everything is written "
        "to the run folder (config.yaml, checkpoints/, metrics.csv, summary.json, "
        "learning_curves.png). Example: attnmeta train sinusoid",
    )
    t.add_argument("benchmark", nargs="?", help="sinusoid (default), multimodal, omniglot or miniimagenet")
    t.add_argument("--algo", help="learner name, e.g. maml, fomaml, meta-sgd, anil, protonet (default maml)")
    t.add_argument("--ways", type=int, help="N classes per task (classification; default 5)")
    t.add_argument("--shots", type=int, help="K support examples per class (regression: per task)")
    t.add_argument("--queries", type=int, help="query examples per class (regression: per task)")
    t.add_argument("--train-ways", type=int,
                   help="N of the training episodes only (default --ways; e.g. 60 for ProtoNets tested "
                        "5-way)")
    t.add_argument("--train-shots", type=int, help="K of the training episodes only (default --shots)")
    t.add_argument("--train-queries", type=int,
                   help="queries of the training episodes only (default --queries)")
    t.add_argument("--meta-batch", type=int, help="tasks per outer step")
    t.add_argument("--steps", type=int, help="outer steps")
    t.add_argument("--lr", type=float, help="outer learning rate")
    t.add_argument("--optimizer", help="adam, adamw (decoupled weight decay) or sgd")
    t.add_argument("--schedule", help="constant, cosine or step")
    t.add_argument("--backbone", help="conv4, resnet12 or mlp (default: the benchmark's)")
    t.add_argument("--root", help="data folder of image benchmarks")
    t.add_argument("--split", help="benchmark split name")
    t.add_argument("--image-size", type=int, help="image side in pixels")
    t.add_argument("--eval-every", type=int, help="validate every this many steps")
    t.add_argument("--eval-episodes", type=int, help="fixed validation episodes")
    t.add_argument("--test-episodes", type=int, help="fixed test episodes at the end (default 600)")
    t.add_argument("--seed", type=int, help="seed of every RNG")
    t.add_argument("--device", help="auto, cpu or cuda")
    t.add_argument("--dtype", help="float32 or float64")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--run-dir", help="run folder (default runs/<benchmark>-<algo>-<shape>)")
    t.add_argument("--config", help="YAML or JSON file of config keys (see attnmeta.train.config.RunConfig)")
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set algo_options.inner_steps=5 (repeatable)",
    )
    _add_import_flag(t, "import a module or .py file first (to register a custom learner; also needed with "
                     "--resume: a run folder's own imports are never executed; repeatable)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    t.add_argument("--quiet", action="store_true", help="no progress bar; one log line per validation")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a trained run on fixed test episodes",
        description="Evaluate a run's best checkpoint on fixed, seeded test episodes, possibly with "
        "another number of ways/shots than in training (where the learner allows it). "
        "Example: attnmeta eval runs/omniglot-protonet-5w1s --ways 20 --shots 1",
    )
    e.add_argument("run_dir", help="run folder written by attnmeta train")
    e.add_argument("--ways", type=int, help="N classes per test task (default: as trained)")
    e.add_argument("--shots", type=int, help="K support examples per class (default: as trained)")
    e.add_argument("--queries", type=int, help="query examples per class (default: as trained)")
    e.add_argument("--episodes", type=int, default=600, help="number of test episodes (default 600)")
    e.add_argument("--seed", type=int, default=0, help="seed of the fixed test episodes (default 0)")
    e.add_argument("--checkpoint", choices=("best", "latest"), default="best", help="which checkpoint")
    e.add_argument("--root", help="data folder (default: as trained)")
    e.add_argument("--device", help="auto, cpu or cuda")
    e.add_argument("--rotation-ensemble", action="store_true",
                   help="test-time ensemble of the task's four rotations (0/90/180/270 degrees): "
                   "concatenated embeddings for protonet and matching without FCE, averaged "
                   "log-probabilities of one adaptation per view for other classification learners")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_import_flag(e, "import a module or .py file first (a custom learner the run needs; a run folder's "
                     "own imports are never executed; repeatable)")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "plot",
        help="learning curves of one or several runs in one PNG",
        description="Plot training loss and train/validation metrics (95% CIs) of runs.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument(
        "-o", "--output", default="learning_curves.png", help="PNG file (default learning_curves.png)"
    )
    p.set_defaults(func=cmd_plot)

    q = sub.add_parser(
        "predict",
        help="label query images with a trained run and a labelled support folder",
        description="Fit a trained run to a support folder (one subfolder of images per class, "
        "named by the label) and print `file<TAB>label<TAB>probability` for each query image.",
    )
    q.add_argument("run_dir", help="run folder or checkpoint folder")
    q.add_argument("--support", required=True, help="folder with one subfolder of images per class")
    q.add_argument("--query", required=True, help="folder of images to label")
    _add_import_flag(q, "import a module or .py file first (a custom learner the run needs; repeatable)")
    q.set_defaults(func=cmd_predict)

    c = sub.add_parser(
        "compare",
        help="compare learners on the same fixed episodes (attnmeta.compare)",
        description="Delegates to attnmeta.compare; see `attnmeta compare --help`.",
        add_help=False,
    )
    c.add_argument("compare_args", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attnmeta``; returns the exit status (0 done, 2 bad input, 130 interrupted).

    An error caused by the user's input or environment (``attnmeta.errors.is_user_error``) is printed as one
    line; any other exception is a bug and keeps its traceback. ``--debug`` (anywhere on the command line,
    or ``ATTNMETA_DEBUG=1``) shows the traceback of every error.
    """
    from attnmeta.errors import is_user_error, one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("ATTNMETA_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["compare"]:  # attnmeta.compare parses its own arguments (and its own --help)
        argv = ["compare", "--", *argv[1:]]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\nattnmeta {args.command}: interrupted; continue with --resume RUN_DIR", file=sys.stderr)
        return 130
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        print(f"attnmeta {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
