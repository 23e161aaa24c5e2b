"""The commands behind ``attnmeta``: train, eval, plot, predict, compare, recipes (one function each)."""

from __future__ import annotations

import argparse
import json
import sys
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
def _eval_rl(args: argparse.Namespace, trained: RunConfig) -> int:
    """``attnmeta eval`` of a meta-RL run: returns before and after each adaptation step, 95% CIs."""
    from attnmeta.train.rl_run import evaluate_rl_run

    refused = [f"--{k}" for k in ("ways", "shots", "queries") if getattr(args, k) is not None]
    refused += ["--rotation-ensemble"] * bool(args.rotation_ensemble)
    refused += ["--transductive"] * bool(getattr(args, "transductive", None))
    if refused:
        raise ValueError(f"{', '.join(refused)} do not apply to meta-RL runs; use --episodes (test tasks), "
                         "--adapt-steps and --seed")
    report = evaluate_rl_run(args.run_dir, trained, checkpoint=args.checkpoint, tasks=args.episodes or 40,
                             seed=args.seed, adapt_steps=args.adapt_steps)
    print(report.table())
    print(f"\ncheckpoint {report.checkpoint} (step {report.step}); per-task returns in {report.path}")
    return 0



def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from attnmeta.eval import evaluate
    from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint, load_weights
    from attnmeta.train.run_folder import check_writable
    from attnmeta.train.trainer import build_benchmark, build_learner, import_plugins, load_run_config

    trained = load_run_config(args.run_dir, report=_note("eval"))
    sequence_flags = (("--beam", args.beam), ("--finetune-steps", args.finetune_steps),
                      ("--hallucinate", args.hallucinate),
                      ("--hallucinated-share", args.hallucinated_share))
    sequence_only = [flag for flag, value in sequence_flags if value is not None]
    if sequence_only and trained.task_type != "seq2seq":
        raise ValueError(f"{', '.join(sequence_only)} apply only to sequence-to-sequence runs; "
                         f"{args.run_dir} is a {trained.task_type} run")
    if args.inner_steps is not None and trained.task_type not in ("classification", "regression"):
        steps_flag = {"seq2seq": "--finetune-steps", "rl": "--adapt-steps"}.get(trained.task_type)
        raise ValueError(f"--inner-steps applies to classification and regression runs of the MAML family; "
                         f"{args.run_dir} is a {trained.task_type} run"
                         + (f" (use {steps_flag})" if steps_flag else ""))
    if trained.task_type == "rl":
        return _eval_rl(args, trained)
    if trained.task_type == "detection":
        from attnmeta.cli.detection import eval_detection

        return eval_detection(args, trained)
    if trained.task_type == "seq2seq":
        from attnmeta.cli.seq2seq import eval_seq2seq

        return eval_seq2seq(args, trained)
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
    if target.task_type == "classification" and target.ways != trained.ways:
        # the test episodes take the new shape; training and validation keep the trained one, whose splits
        # may hold fewer classes than the test split (every CLINC150 test intent: 45-way; validation has 15)
        bench = build_benchmark(dataclasses.replace(target, train_ways=trained.train_ways or trained.ways),
                                val_ways=trained.ways)
    else:
        bench = build_benchmark(target)
    learner = build_learner(dataclasses.replace(trained, device=target.device), bench)
    load_weights(learner, weights, ckpt)
    if args.inner_steps is not None:
        _set_inner_steps(learner, trained.algo, args.inner_steps)
    inner_steps = getattr(learner, "eval_inner_steps", None)
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

    if target.task_type == "classification" and spec(trained.algo).head:
        assert target.ways is not None and trained.ways is not None  # classification runs have ways
        from attnmeta.train.builders import head_outputs

        outputs = head_outputs(trained)
        if target.ways > outputs:
            raise ValueError(
                f"{trained.algo} was meta-trained {outputs}-way with a {outputs}-output head and "
                f"cannot classify {target.ways} ways; use --ways <= {outputs} (metric learners "
                "such as protonet evaluate at any number of ways)"
            )
    from attnmeta.train.trainer import resolve_device

    device, dtype = resolve_device(target.device), getattr(torch, trained.dtype)
    if args.rotation_ensemble:
        from attnmeta.eval import with_rotation_ensemble

        learner = with_rotation_ensemble(learner)
    method = getattr(args, "transductive", None)
    if method:
        from attnmeta.eval.transductive import Transductive

        learner = Transductive(learner, method)
    count = args.episodes or 600
    episodes = [t.to(device, dtype) for t in bench.test.fixed_tasks(count, seed=args.seed)]
    if getattr(args, "oos", False):
        return _eval_oos(args, target, bench, learner, episodes, ckpt, state["step"])
    result = evaluate(learner, episodes, device=device, progress=not args.quiet, desc="eval")
    algo = f"{trained.algo}+{method}" if method else trained.algo
    from attnmeta.eval import group_results

    groups = {name: {"mean": g.mean, "ci95": g.ci95, "n": g.n}
              for name, g in group_results(result, episodes).items()}
    row = _result_row(dataclasses.replace(target, algo=algo), result)
    print(_results_table(_source_rows(target, row, groups)))
    suffix = "-rotation-ensemble" if args.rotation_ensemble else ""
    suffix += f"-{method}" if method else ""
    suffix += f"-inner{args.inner_steps}" if args.inner_steps is not None else ""
    out = (
        Path(args.run_dir)
        / f"eval-{target.ways or 0}w{target.shots}s-{count}ep-seed{args.seed}{suffix}.json"
    )
    out.write_text(
        json.dumps(
            {
                "checkpoint": str(ckpt),
                "step": state["step"],
                "ways": target.ways,
                "shots": target.shots,
                "rotation_ensemble": args.rotation_ensemble,
                "transductive": method,
                "inner_steps": inner_steps,
                **result.to_dict(),
            },
            indent=2,
        )
    )
    print(f"\ncheckpoint {ckpt} (step {state['step']}); per-episode results in {out}")
    return 0


def _set_inner_steps(learner: Any, algo: str, steps: int) -> None:
    """``attnmeta eval --inner-steps``: the adaptation steps of a MAML-family learner at test time."""
    if not hasattr(learner, "eval_inner_steps"):
        raise ValueError(f"--inner-steps applies to learners with an inner loop (the MAML family); {algo} "
                         "adapts without one")
    if steps < 0:
        raise ValueError(f"--inner-steps must be >= 0, got {steps}")
    learner.eval_inner_steps = steps


def _eval_oos(args: argparse.Namespace, target: RunConfig, bench: Any, learner: Any, episodes: list[Any],
              ckpt: Path, step: int) -> int:
    """``attnmeta eval RUN --oos``: CLINC150 out-of-scope detection (attnmeta.eval.oos)."""
    from attnmeta.eval.oos import clinc150_oos_texts, evaluate_oos, text_inputs, write_oos

    if target.benchmark != "clinc150":
        raise ValueError("--oos needs a clinc150 run (its oos utterances are the out-of-scope queries)")
    from attnmeta.train.builders import default_data_root

    root = target.root if target.root is not None else default_data_root("clinc150")
    if root is None:
        raise ValueError("--oos needs the CLINC150 folder: pass --root")
    oos = text_inputs(clinc150_oos_texts(root), bench.preprocessing)
    result = evaluate_oos(learner, episodes, oos, recall=args.oos_recall, seed=args.seed)
    print(result.table())
    name = f"eval-oos-{target.ways}w{target.shots}s-{len(episodes)}ep-seed{args.seed}.json"
    out = Path(args.run_dir) / name
    write_oos(out, result, {"checkpoint": str(ckpt), "step": step, "ways": target.ways,
                            "shots": target.shots})
    print(f"\ncheckpoint {ckpt} (step {step}); results in {out}")
    return 0


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
