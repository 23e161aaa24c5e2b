"""``attnmeta eval`` and ``attnmeta predict`` of sequence-to-sequence runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from attnmeta.errors import UserError


def eval_seq2seq(args: argparse.Namespace, trained: Any) -> int:
    """``attnmeta eval`` of a sequence run: the per-task table (accuracy, mean Levenshtein), the average."""
    from attnmeta.train.seq2seq_run import evaluate_seq2seq_run

    given = {"--ways": args.ways, "--shots": args.shots, "--queries": args.queries,
             "--rotation-ensemble": args.rotation_ensemble,
             "--transductive": getattr(args, "transductive", None), "--oos": getattr(args, "oos", False)}
    refused = [flag for flag, value in given.items() if value]
    if refused:
        raise UserError(f"{', '.join(refused)} do not apply to sequence-to-sequence runs; use --episodes "
                        "(test tasks), --beam, --finetune-steps, --hallucinate, --hallucinated-share, "
                        "--explore, --ensemble and --root")
    if args.root is not None:
        trained.root = args.root
    adaptation = {key: value for key, value in (("finetune_steps", args.finetune_steps),
                                                ("hallucinate", args.hallucinate),
                                                ("hallucinated_share", args.hallucinated_share),
                                                ("finetune_explore", args.explore),
                                                ("ensemble", args.ensemble))
                  if value is not None}
    if not 0 <= adaptation.get("hallucinated_share", 0) <= 1:
        raise UserError(f"--hallucinated-share must be in [0, 1], got {args.hallucinated_share}")
    if not 0 <= adaptation.get("finetune_explore", 0) <= 1:
        raise UserError(f"--explore must be in [0, 1], got {args.explore}")
    if "finetune_explore" in adaptation and not (trained.algo_options or {}).get("edits"):
        raise UserError("--explore is imitation learning of edit actions: this run was trained without them "
                        "(algo_options.edits)")
    if adaptation.get("ensemble", 1) < 1:
        raise UserError(f"--ensemble must be >= 1 (fine-tuned copies per test task), got {args.ensemble}")
    for key, value in adaptation.items():
        if value < 0:
            raise UserError(f"--{key.replace('_', '-')} must be >= 0, got {value}")
    report = evaluate_seq2seq_run(args.run_dir, trained, checkpoint=args.checkpoint,
                                  episodes=100 if args.episodes is None else args.episodes, beam=args.beam,
                                  quiet=args.quiet, adaptation=adaptation)
    print(report.table())
    print(f"\ncheckpoint {report.checkpoint} (step {report.step}); per-task results in {report.path}")
    return 0


def read_query_sources(path: str, source_format: str) -> list[Any]:
    """Sources to generate for, one a line: ``lemma<TAB>tags`` (or SIGMORPHON's 3 columns, the form
    ignored) for inflection runs, the source text (or ``source<TAB>...``, first column) otherwise."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--query {path!r} is not a file")
    sources: list[Any] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if source_format == "inflection":
            if len(fields) not in (2, 3) or not fields[0] or not fields[-1]:
                raise UserError(f"{path}:{number}: expected lemma<TAB>tags (or lemma<TAB>form<TAB>tags), got "
                                f"{line[:60]!r}")
            sources.append((fields[0], fields[-1]))
        else:
            sources.append(fields[0])
    if not sources:
        raise UserError(f"--query {path!r} has no sources")
    return sources


def read_support_pairs(path: str, source_format: str) -> tuple[list[Any], list[str]]:
    """The ``fit`` pairs: SIGMORPHON lines ``lemma<TAB>form<TAB>tags`` for inflection runs; a parallel-data
    ``.tsv`` / ``.jsonl`` file (``attnmeta.data.parallel``) otherwise."""
    if source_format == "inflection":
        from attnmeta.data.sigmorphon import read_inflections

        items = read_inflections(path)
        return [(lemma, tags) for lemma, _, tags in items], [form for _, form, _ in items]
    from attnmeta.data.parallel import read_parallel

    records = read_parallel(path, source_format)
    joiner = " " if source_format == "words" else ""
    return [joiner.join(s) for s, _, _ in records], [joiner.join(t) for _, t, _ in records]


def predict_seq2seq(args: argparse.Namespace, model: Any) -> int:
    """``attnmeta predict`` of a sequence run: fit on --support pairs, print one line per --query source
    (``lemma<TAB>form<TAB>tags`` for inflection runs, ``source<TAB>target`` otherwise)."""
    sources, targets = read_support_pairs(args.support, model.source_format)
    queries = read_query_sources(args.query, model.source_format)
    outputs = model.fit(sources, targets).generate(queries, beam=args.beam)
    for source, output in zip(queries, outputs):
        if model.source_format == "inflection":
            print(f"{source[0]}\t{output}\t{source[1]}")
        else:
            print(f"{source}\t{output}")
    if model.unknown_:
        shown = " ".join(model.unknown_symbols_[:20])
        print(f"attnmeta predict: note: {model.unknown_} query symbols were seen neither in training nor in "
              f"--support and were read as unknown: {shown}", file=sys.stderr)
    return 0
