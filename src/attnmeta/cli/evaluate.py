"""``attnmeta eval``: a run's best checkpoint on fixed test episodes (classification, regression, meta-RL;
detection and sequence-to-sequence runs hand over to ``cli.detection`` and ``cli.seq2seq``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from attnmeta.cli.commands import _note, _result_row, _results_table, _source_rows
from attnmeta.train.config import RunConfig


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
    if args.inner_steps is not None and args.inner_steps < 0:
        raise ValueError(f"--inner-steps must be >= 0, got {args.inner_steps}")
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
