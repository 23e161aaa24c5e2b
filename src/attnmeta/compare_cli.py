"""The command line of ``attnmeta compare`` (``attnmeta.compare.main``): its flags, as ``compare()``'s
arguments."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

DESCRIPTION = ("Compare meta-learners on identical episodes: \"which algorithm should I choose?\". Each "
               "learner trains as `attnmeta train BENCHMARK --algo ALGO` would (the same presets), with the "
               "settings below on top.")


def build_parser() -> argparse.ArgumentParser:
    from attnmeta.cli.parser import parse_budget

    parser = argparse.ArgumentParser(prog="attnmeta compare", description=DESCRIPTION)
    parser.add_argument("benchmark", help="benchmark name, e.g. omniglot (meta-RL: navigation, ...)")
    parser.add_argument("--algos", required=True,
                        help="comma-separated learner names; LABEL=LEARNER lists a learner under another "
                        "name, e.g. maml-rl,pretrained=maml-rl")
    parser.add_argument("--ways", type=int, default=None,
                        help="N classes per task (default: the preset's, else 5)")
    parser.add_argument("--shots", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--root", default=None, help="data folder (e.g. ../shared/data/omniglot)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per algorithm (default: the preset's; drops a preset's budget)")
    parser.add_argument("--budget", type=parse_budget, default=None, metavar="TIME",
                        help="training time per algorithm, e.g. 5m, 90s, 1h (CPU time unless "
                        "--budget-clock wall)")
    parser.add_argument("--budget-clock", choices=("cpu", "wall"), default=None)
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="training time per algorithm in seconds (CPU time unless --budget-clock wall)")
    parser.add_argument("--meta-batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--episodes", type=int, default=None,
                        help="fixed test episodes shared by every learner (default 600; meta-RL: test tasks, "
                        "default the preset's 40)")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config key for every learner, e.g. --set schedule=cosine "
                        "(repeatable)")
    parser.add_argument("--algo-options", action="append", default=[], metavar="LABEL.KEY=VALUE",
                        help="a learner option of one learner or label (over the preset's), e.g. "
                        "--algo-options pretrained.inner_steps=0 or pretrained='{inner_steps: 0}' "
                        "(repeatable)")
    parser.add_argument("--run-dir", action="append", default=[],
                        help="ALGO=FOLDER: load instead of training (ALGO: a learner or any label)")
    parser.add_argument("--out", default=None,
                        help="folder for the runs (runs/ALGO), compare.json and compare.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--log-every", type=int, default=0,
                        help="validate and print a line every N steps (eval_every; default: the preset's)")
    return parser


def parse(argv: Sequence[str] | None) -> tuple[str, list[str], dict[str, Any]]:
    """``(benchmark, algos, keyword arguments of compare())`` of the command line ``argv``."""
    from attnmeta.train.config import parse_overrides

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    kwargs = dict(ways=args.ways, shots=args.shots, queries=args.queries, root=args.root, steps=args.steps,
                  budget_minutes=args.budget, budget_clock=args.budget_clock,
                  budget_seconds=args.budget_seconds,
                  meta_batch=args.meta_batch, lr=args.lr, episodes=_episodes(args), eval_seed=args.eval_seed,
                  seed=args.seed, backbone=args.backbone, overrides=parse_overrides(args.set),
                  run_dirs=parse_run_dirs(args.run_dir), out_dir=args.out, plot=not args.no_plot,
                  log_every=args.log_every)
    if args.algo_options:
        kwargs["algo_options"] = parse_algo_options(args.algo_options)
    return args.benchmark, algos, kwargs


def _episodes(args: argparse.Namespace) -> int:
    """``--episodes``, else 600 test episodes, or on a meta-RL benchmark its preset's test tasks (40)."""
    from attnmeta.train.config import RL_ALGOS, RL_BENCHMARKS, RunConfig

    if args.episodes is not None:
        return int(args.episodes)
    if args.benchmark in RL_BENCHMARKS:
        return int(RunConfig.preset(args.benchmark, RL_ALGOS[0]).get("test_episodes", 600))
    return 600


def parse_run_dirs(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in values:
        if "=" not in item:
            raise ValueError(f"--run-dir takes ALGO=FOLDER, got {item!r}")
        algo, folder = item.split("=", 1)
        out[algo] = folder
    return out


def parse_algo_options(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{"pretrained": {"inner_steps": 0}}`` of ``["pretrained.inner_steps=0"]`` or
    ``["pretrained={inner_steps: 0}"]`` (values read as YAML, as ``--set`` reads them)."""
    from attnmeta.train.config import parse_overrides

    out: dict[str, dict[str, Any]] = {}
    for item in values:
        key, sep, _ = item.partition("=")
        label, _, option = key.strip().partition(".")
        value = parse_overrides([item])[key.strip()] if sep else None
        if not sep or not label or (not option and not isinstance(value, dict)):
            raise ValueError(f"--algo-options takes LABEL.KEY=VALUE or LABEL={{KEY: VALUE}}, got {item!r}")
        out.setdefault(label, {}).update({option: value} if option else dict(value or {}))
    return out
