"""Time to accuracy on Omniglot (background alphabets -> evaluation alphabets), 5-way 1-shot test.

A thin driver of the library's trainer (``attnmeta.train.train``, ``bench=`` the script's own task sources):
trains a learner on episodes of the 964 background characters (x4 rotation classes), validating every
``--eval-every`` steps on fixed 5-way 1-shot 15-query episodes of the 659 evaluation characters (seed 1).
Records the training time (CPU and wall minutes, evaluation excluded) at which that accuracy first reaches
95 / 97 / 98 / 98.8%, and the accuracy +/- 95% CI of the last weights on 600 fixed episodes (seed 0) at 5w1s
and 20w1s (when the learner allows other ways). Prints a table and writes ``--out-dir/<name>.json``; the run
folder (checkpoints, ``metrics.csv``) goes to ``--run-dir``. The recipes ``attnmeta train --recipe
omniglot-protonet`` (``-maml``, ``-matching``) are the supported versions of its best configurations.

Example (the ProtoNets recipe)::

    OMP_NUM_THREADS=1 python experiments/omniglot/omniglot_time_to_accuracy.py --algo protonet \
        --train-ways 150 --train-shots 1 --train-queries 3 --optimizer adamw --weight-decay 0.3 --lr 6e-3 \
        --schedule cosine --episodes 100000 --cpu-minutes 20 --eval-every 75 --eval-episodes 200 \
        --learner-options '{"distance": "l2", "support_splits": 4}' --shift-pixels 2 --no-pool-last

``--export-data FILE`` (on a machine with the archives) writes the decoded tensors, ``--data-pt FILE`` reads
them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from attnmeta.data.benchmarks import make_benchmark
from attnmeta.eval import evaluate, with_rotation_ensemble
from attnmeta.learners import registry
from attnmeta.nn import backbones
from attnmeta.tasks import EpisodeSampler
from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint
from attnmeta.train.config import RunConfig
from attnmeta.train.trainer import BenchmarkParts, build_learner, read_metrics, train

ROOT = Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(Path(__file__).resolve().parent))
from omniglot_sources import (  # noqa: E402, F401  (re-exported for the analysis scripts)
    alphabet_fold,
    augmented_sampler,
    compose,
    load_data,
    parse_affine,
    parse_fold,
    training_characters,
    with_mirror_classes,
)

THRESHOLDS = (0.95, 0.97, 0.98, 0.988)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--algo", default="protonet")
    add("--root", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    add("--data-pt", default=None, help="pre-decoded tensors written by --export-data")
    add("--export-data", default=None, help="write the decoded tensors to this file and exit")
    add("--train-ways", type=int, default=60)
    add("--train-shots", type=int, default=5)
    add("--train-queries", type=int, default=5)
    add("--meta-batch", type=int, default=1)
    add("--optimizer", default="adam", choices=("adam", "adamw", "sgd"))
    add("--lr", type=float, default=3e-3)
    add("--weight-decay", type=float, default=0.0)
    add("--clip-grad-norm", type=float, default=0.0, help="clip the gradient's global norm (0: no clipping)")
    add("--schedule", default="cosine", choices=("cosine", "cosine-budget", "exp", "constant"),
        help="cosine (alias cosine-budget): over whichever of --episodes and the time budget runs out first; "
             "exp halves the lr every --half-life steps; exp and constant stop at the budget only")
    add("--episodes", type=int, default=1000, help="training steps of the cosine schedule")
    add("--half-life", type=float, default=250.0)
    add("--cpu-minutes", type=float, default=20.0, help="stop after this much training CPU time")
    add("--wall-minutes", type=float, default=None, help="a wall-time budget instead (GPU runs)")
    add("--eval-every", type=int, default=25)
    add("--eval-episodes", type=int, default=300, help="fixed 5w1s validation episodes")
    add("--final-episodes", type=int, default=600)
    add("--norm", default="fused", choices=("fused", "meta", "running"), help="Conv-4 batch norm")
    add("--hidden", type=int, default=64)
    add("--no-pool-last", dest="pool_last", action="store_false", help="Conv-4 without its fourth max-pool")
    add("--pools", type=int, default=None, help="max-pool after the first N Conv-4 blocks only")
    add("--shift-pixels", type=int, default=0, help="RandomShift of training examples (augment shift)")
    add("--affine", type=parse_affine, default=None, metavar="DEG,SCALE,SHEAR,PIXELS",
        help="RandomAffine of training examples after --shift-pixels (augment affine)")
    add("--channels-last", action="store_true", default=True)
    add("--no-channels-last", dest="channels_last", action="store_false")
    add("--learner-options", default="{}", help='JSON learner options ("ways": the ways the learner is built '
        "for, e.g. SNAIL on subtasks of larger episodes; default --train-ways)")
    add("--threads", type=int, default=1)
    add("--no-retain-memory", dest="retain_memory", action="store_false")
    add("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    add("--init-backbone", default=None, help="start from this Conv-4 state dict (--save-backbone)")
    add("--freeze-backbone", action="store_true", help="train only the learner's own parameters")
    add("--save-backbone", default=None, help="write the trained Conv-4 state dict here")
    add("--save-learner", default=None, help="write the trained learner's state dict here")
    add("--seed", type=int, default=0)
    add("--no-rotations", dest="rotations", action="store_false", help="no x4 rotation classes")
    add("--alphabet-fold", type=parse_fold, default=None, metavar="R/K",
        help="train on the background alphabets whose index modulo K is not R (--heldout-fold: is R)")
    add("--heldout-fold", action="store_true", help="see --alphabet-fold")
    add("--mirror-classes", action="store_true", help="add mirror images as new training characters")
    add("--mirror-only", action="store_true", help="train on the mirror images alone, as new characters")
    add("--name", default=None, help="result file stem (default omniglot_<algo>)")
    add("--rotation-ensemble", action="store_true",
        help="validate with the four-rotation ensemble (test_rotation_ensemble); final figures of both")
    add("--ema", type=float, default=None, metavar="DECAY",
        help="validate and save an EMA of the parameters (ema_decay); final figures of both")
    add("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    add("--run-dir", default=None, help="run folder (default runs/omniglot/<name>, -2, -3 ... when taken)")
    args = p.parse_args(argv)
    if args.heldout_fold and not args.alphabet_fold:
        p.error("--heldout-fold selects the held-out part of --alphabet-fold: give it --alphabet-fold R/K")
    if args.mirror_classes and args.mirror_only:
        p.error("--mirror-classes adds the mirror images to the characters, --mirror-only trains on them "
                "alone: give one")
    if args.freeze_backbone and not args.init_backbone:
        p.error("--freeze-backbone keeps the Conv-4 as loaded: give it --init-backbone")
    if args.ema is not None and not 0 <= args.ema < 1:
        p.error(f"--ema takes a decay in [0, 1) (e.g. 0.995), got {args.ema}")
    return args


def conv4_backbone(args: argparse.Namespace, adjust_model: Callable[[nn.Module], nn.Module] | None) -> str:
    """The trainer's backbone name: ``conv4``, or a Conv-4 loaded (``--init-backbone``), changed
    (``adjust_model``) and frozen (``--freeze-backbone``), registered for this process as ``conv4-script``."""
    if not (args.init_backbone or adjust_model):
        return "conv4"

    def build(in_shape: tuple[int, ...], out_features: int | None, **options) -> nn.Module:
        model = backbones.Conv4(in_shape, out_features=out_features, **options)
        if args.init_backbone:
            model.load_state_dict(torch.load(args.init_backbone, weights_only=True))
        model = adjust_model(model) if adjust_model else model
        return model.requires_grad_(False) if args.freeze_backbone else model
    backbones.register_backbone("conv4-script", build, replace=True)
    return "conv4-script"


def mark_reached(reached: dict, accuracy: float, episode: int, cpu_s: float, wall_s: float) -> None:
    """Record in ``reached`` the first time (CPU and wall minutes, episode) each threshold is met."""
    for threshold in THRESHOLDS:
        if accuracy >= threshold and str(threshold) not in reached:
            reached[str(threshold)] = {"cpu_min": round(cpu_s / 60, 3), "wall_min": round(wall_s / 60, 3),
                                       "episode": episode}


def run_config(args: argparse.Namespace, backbone: str, run_dir: Path) -> RunConfig:
    options = json.loads(args.learner_options)
    ways = options.pop("ways", args.train_ways)
    cosine = args.schedule.startswith("cosine")
    budget = args.wall_minutes if args.wall_minutes is not None else args.cpu_minutes
    return RunConfig(
        benchmark="omniglot", ways=ways, shots=1, queries=15, train_ways=args.train_ways,
        train_shots=args.train_shots, train_queries=args.train_queries, algo=args.algo, algo_options=options,
        backbone=backbone, backbone_options={"hidden": args.hidden, "norm": args.norm, "pools": args.pools,
                                             "pool_last": args.pool_last or args.pools is not None},
        meta_batch=args.meta_batch, steps=args.episodes if cosine else 10**12, optimizer=args.optimizer,
        lr=args.lr, weight_decay=args.weight_decay, schedule={"exp": "step"}.get(args.schedule, "cosine" if
                                                                                  cosine else "constant"),
        step_size=1, gamma=0.5 ** (1 / args.half_life), grad_clip=args.clip_grad_norm or None,
        ema_decay=args.ema, budget_minutes=budget,
        budget_clock="cpu" if args.wall_minutes is None else "wall",
        augment={"shift": args.shift_pixels, **({"affine": list(args.affine)} if args.affine else {})},
        channels_last=args.channels_last, test_rotation_ensemble=args.rotation_ensemble,
        eval_every=args.eval_every, eval_episodes=args.eval_episodes, val_seed=1,
        test_episodes=args.final_episodes, checkpoint_every=10**12, seed=args.seed, device=args.device,
        threads=args.threads, retain_memory=args.retain_memory, run_dir=str(run_dir), plot=False)


def fresh(path: Path) -> Path:
    base, n = path, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def main(argv: list[str] | None = None, *, adjust_model: Callable[[nn.Module], nn.Module] | None = None,
         adjust_train: Callable[[EpisodeSampler], None] | None = None) -> dict:
    """Run the benchmark with command-line ``argv``; returns the report written to ``<name>.json``. Hooks of
    ``omniglot_protonet_variants.py``: ``adjust_model(conv4)`` returns the backbone to train,
    ``adjust_train(sampler)`` changes the training sampler in place (before the trainer's augmentation)."""
    args = parse_args(argv)
    background, evaluation = load_data(args)
    if args.export_data:
        pairs = (("background", background), ("evaluation", evaluation))
        torch.save({f"{k}_{f}": getattr(d, f) for k, d in pairs for f in ("images", "labels", "characters")},
                   args.export_data)
        print(f"wrote {args.export_data}")
        return {}
    background = training_characters(args, background)
    built = make_benchmark("omniglot", data=(background, evaluation), seed=args.seed,
                           rotations=args.rotations, ways=args.train_ways, shots=args.train_shots,
                           queries=args.train_queries)
    if adjust_train is not None:
        adjust_train(built.train)
    tests = {w: make_benchmark("omniglot", data=(background, evaluation), ways=w, shots=1, queries=15,
                               train_ways=2, train_queries=1).test for w in (5, 20)}
    parts = BenchmarkParts("omniglot", "classification", built.train, tests[5], tests[5], (1, 28, 28),
                           dict(built.preprocessing), {"name": "conv4", "options": {}})
    name = args.name or f"omniglot_{args.algo}"
    run_dir = Path(args.run_dir) if args.run_dir else fresh(Path("runs") / "omniglot" / name)
    config = run_config(args, conv4_backbone(args, adjust_model), run_dir)
    print(f"{name}: {args.algo} on {built.train!r}, run folder {run_dir}", flush=True)
    result = train(config, bench=parts, evaluate_test=False, quiet=True)

    rows = read_metrics(run_dir / "metrics.csv")
    train_rows = {row["step"]: row for row in rows if row["phase"] == "train"}
    curve, reached = [], {}
    for row in (r for r in rows if r["phase"] == "val"):
        step, cpu, wall = int(row["step"]), float(row["cpu_seconds"]), float(row["train_seconds"])
        curve.append({"episode": step, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                      "accuracy": float(row["accuracy"]), "ci95": float(row["ci95"]),
                      "train_loss": float(train_rows[row["step"]]["loss"]),
                      "lr": float(train_rows[row["step"]]["lr"])})
        mark_reached(reached, curve[-1]["accuracy"], step, cpu, wall)

    # the last weights (the EMA with --ema; the trained ones are in the checkpoint's state)
    weights, state = load_checkpoint(CheckpointManager(run_dir / "checkpoints").latest_valid())
    learner = build_learner(result.config, parts)
    versions = {"": {**weights, **state.get("trained_parameters", {})}}
    if args.ema is not None:
        versions[f"_ema{args.ema:g}"] = weights
    final = {}
    spec = registry.spec(args.algo)
    for ways, source in tests.items():
        if ways != config.ways and (not learner.any_ways or (spec.head and ways > config.ways)):
            continue  # a head of config.ways outputs (or one-hot labels of that size) cannot score them
        episodes = source.fixed_tasks(args.final_episodes, seed=0)
        for suffix, version in versions.items():
            learner.load_state_dict(version)
            evaluated = {"": learner, "_rotation_ensemble": with_rotation_ensemble(learner)}
            for kind, model in list(evaluated.items())[:1 + args.rotation_ensemble]:
                result_ = evaluate(model, episodes, device=args.device)
                final[f"{ways}w1s{suffix}{kind}"] = {"accuracy": result_.mean, "ci95": result_.ci95,
                                                     "n": result_.summary.n}
    learner.load_state_dict(versions[""])
    if args.save_backbone:
        torch.save(learner.model.state_dict(), args.save_backbone)
    if args.save_learner:
        torch.save(learner.state_dict(), args.save_learner)
    cpu, wall = result.summary["train_cpu_seconds"], result.summary["train_seconds"]
    report = {"name": name, "algo": args.algo, "args": vars(args), "config": result.config.to_storable_dict(),
              "run_dir": str(run_dir), "episodes": result.steps, "train_cpu_min": cpu / 60,
              "train_wall_min": wall / 60, "reached": reached, "final": final, "curve": curve,
              "monitor": "rotation ensemble" if args.rotation_ensemble else "plain",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "note": "training time excludes evaluation; the machine may be shared and loaded (wall >> cpu)"}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(f"\n{name}: {result.steps} episodes, training {cpu / 60:.2f} CPU-min ({wall / 60:.2f} wall-min)")
    print(f"{'target':>8} | {'CPU-min':>8} | {'wall-min':>8} | episode")
    for threshold in THRESHOLDS:
        hit = reached.get(str(threshold))
        cells = (f"{hit['cpu_min']:8.2f} | {hit['wall_min']:8.2f} | {hit['episode']}" if hit
                 else f"{'never':>8} | {'':>8} |")
        print(f"{100 * threshold:7.1f}% | {cells}")
    for key, value in final.items():
        print(f"final {key}: {100 * value['accuracy']:.2f} +/- {100 * value['ci95']:.2f}% "
              f"({value['n']} episodes)")
    return report


if __name__ == "__main__":
    main()
