"""Few-shot intent detection on CLINC150: meta-learned text encoders vs TF-IDF nearest centroid.

Classes (intents) are split by domain (default: 6 meta-train / 1 validation / 3 test domains, see
``attnmeta.data.text.CLINC150_DOMAINS_DEFAULT_SPLIT``) or at random (``--split random``). The tokenizer is
built from the meta-train utterances only. Each learner trains from scratch with the library's trainer
(``attnmeta.train.train`` on the script's own task sources, ``bench=``; constant Adam learning rate) within a
CPU-time budget (``--cpu-minutes``, training steps only), one run folder per learner under ``--runs``; its
best checkpoint by validation accuracy is evaluated on the same 600 fixed 5-way test episodes (1-shot and
5-shot, 15 queries per class) as the baselines:

* ``tfidf-centroid``: nearest class centroid on TF-IDF vectors of the support examples (support-set idf);
* ``tfidf-centroid (corpus idf)``: the same with idf from the meta-train utterances (a stronger baseline);
* ``<learner> (untrained)``: the initial encoder with the same learner (what meta-training adds).

Encoders (``--encoder``):

* ``lexical`` (default): :class:`attnmeta.nn.text.LexicalEncoder`, a meta-learned TF-IDF: attention pooling of
  one-hot word and character-trigram ids whose scores start at ``log idf`` (idf from the meta-train
  utterances only) and are re-weighted by meta-training; with ``--distance cosine`` the untrained ProtoNet is
  TF-IDF nearest centroid over words + trigrams. ``--dense`` appends the attention-pooling encoder's output.
* ``attention``: :class:`attnmeta.nn.text.TextEncoder` (piece embeddings, self-attention, attention pooling).

Head learners (``maml``, ``fomaml``, ``anil``, ``attention-maml``) get ``encoder -> Linear(D, ways)`` with
a zero-initialised head and train 5-way (their head has a fixed number of ways); ``--adapt head`` adapts
only the head in the inner loop. Options of a learner: ``--algo-options '{"maml": {"inner_lr": 0.5}}'``.

Run (1 thread, in the background; timings are from a shared, loaded machine)::

    OMP_NUM_THREADS=1 nohup .venv/bin/python experiments/text/text_fewshot.py \
        --learners protonet,matching,maml > experiments/text/results/text_fewshot_trainer.log 2>&1 &

Prints a table and writes ``experiments/text/results/text_fewshot_trainer.json`` (``text_fewshot.json`` and
``text_fewshot_lexical.json`` are the runs of the script's earlier, hand-written Adam loop).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from attnmeta.data.text import clinc150_domain_split, load_clinc150, random_class_split
from attnmeta.eval import evaluate
from attnmeta.learners.base import Learner
from attnmeta.learners.registry import spec
from attnmeta.nn.text import TextTokenizer, TfidfCentroid, corpus_idf
from attnmeta.tasks.sampler import EpisodeSampler
from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint
from attnmeta.train.config import RunConfig
from attnmeta.train.trainer import BenchmarkParts, build_learner, read_metrics, train

ROOT = Path(__file__).resolve().parents[2]  # the repository


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/text/clinc150"))
    parser.add_argument("--split", choices=["domain", "random"], default="domain")
    parser.add_argument("--learners", default="protonet", help="comma-separated registry names")
    parser.add_argument("--encoder", choices=["lexical", "attention"], default="lexical")
    parser.add_argument("--context-dim", type=int, default=32, help="lexical: sub-word context score width")
    parser.add_argument("--no-idf", action="store_true", help="lexical: start from weight 1, not corpus idf")
    parser.add_argument("--fixed-weights", action="store_true", help="lexical: do not learn per-id weights")
    parser.add_argument("--dense", action="store_true", help="lexical: append the attention encoder")
    parser.add_argument("--dense-weight", type=float, default=0.3, help="lexical: initial weight of --dense")
    parser.add_argument("--distance", choices=["euclidean", "cosine"], default="cosine",
                        help="protonet distance")
    parser.add_argument("--scale", type=float, default=10.0, help="initial cosine temperature (protonet, "
                        "matching)")
    parser.add_argument("--adapt", default="head", help="head learners: parameters adapted in the inner loop")
    parser.add_argument("--algo-options", default="{}", help='JSON {"learner": {option: value}}')
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--cpu-minutes", type=float, default=25.0, help="training budget per learner")
    parser.add_argument("--max-steps", type=int, default=100000)
    parser.add_argument("--train-ways", type=int, default=10)
    parser.add_argument("--train-shots", type=int, default=5)
    parser.add_argument("--train-queries", type=int, default=10)
    parser.add_argument("--meta-batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--no-self-attention", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--freeze-embeddings", action="store_true", help="fixed random piece embeddings")
    parser.add_argument("--normalize", action="store_true", help="L2-normalised, scaled encoder output")
    parser.add_argument("--buckets", type=int, default=1 << 14, help="hash buckets for OOV words and n-grams")
    parser.add_argument("--max-words", type=int, default=24, help="words kept per utterance")
    parser.add_argument("--pieces", type=int, default=8, help="ids per word: word id + character trigrams")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--val-episodes", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/text_fewshot", help="folder of the run folders (one per "
                        "learner; -2, -3 ... appended when taken)")
    parser.add_argument("--out", default=str(ROOT / "experiments/text/results/text_fewshot_trainer.json"))
    return parser.parse_args(argv)


def accuracy_row(name: str, result, extra: dict | None = None) -> dict:
    row = {"method": name, "mean": result.mean, "ci95": result.ci95, "n": result.summary.n,
           "seconds_per_task": result.seconds_per_task}
    row.update(extra or {})
    return row


def best_learner(config: RunConfig, parts: BenchmarkParts, run_dir: Path) -> Learner:
    """``config``'s learner with the weights of its best checkpoint by validation (else the newest)."""
    manager = CheckpointManager(run_dir / "checkpoints")
    path = manager.best_path()
    path = path if path is not None and path.is_dir() else manager.latest_valid()
    learner = build_learner(config, parts)
    learner.load_state_dict(load_checkpoint(path)[0])
    return learner


def validation_history(run_dir: Path) -> list[dict]:
    """The validations of a run (``metrics.csv``), with the training loss and accuracy of the same step."""
    rows = read_metrics(run_dir / "metrics.csv")
    train_rows = {row["step"]: row for row in rows if row["phase"] == "train"}

    def number(text: str | None) -> float | None:
        return float(text) if text else None
    return [{"step": int(row["step"]), "cpu_s": number(row["cpu_seconds"]),
             "train_loss": number(train_rows.get(row["step"], {}).get("loss")),
             "train_accuracy": number(train_rows.get(row["step"], {}).get("accuracy")),
             "val_accuracy": number(row["accuracy"])} for row in rows if row["phase"] == "val"]


def fresh(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` ... if it already holds a run."""
    base, n = path, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    data = load_clinc150(args.data)
    if args.split == "domain":
        split = clinc150_domain_split(data)
    else:
        split = random_class_split(data.num_classes, {"train": 90, "val": 15, "test": 45}, seed=args.seed)
    train_texts = data.subset(split["train"]).texts
    tokenizer = TextTokenizer.fit(train_texts, word_buckets=args.buckets, ngram_buckets=args.buckets,
                                  max_words=args.max_words, pieces=args.pieces)
    tokens = tokenizer.trim(tokenizer.encode(data.texts))
    log(f"CLINC150 {len(data)} utterances, {data.num_classes} intents; split {args.split}: "
        + ", ".join(f"{k} {len(v)} intents" for k, v in split.items())
        + f"; vocabulary {len(tokenizer.vocab)} words, tokens {tuple(tokens.shape)}")

    def sampler(part: str, ways: int, shots: int, queries: int) -> EpisodeSampler:
        return EpisodeSampler(tokens, data.labels, ways, shots, queries, classes=split[part], seed=args.seed)

    test_episodes = {shots: sampler("test", 5, shots, 15).fixed_tasks(args.episodes, seed=args.seed)
                     for shots in (1, 5)}

    rows: dict[int, list[dict]] = {1: [], 5: []}
    train_mask = torch.isin(data.labels, torch.tensor(split["train"]))
    baselines = {"tfidf-centroid": TfidfCentroid(),
                 "tfidf-centroid (corpus idf)": TfidfCentroid(corpus_tokens=tokens[train_mask])}
    for name, baseline in baselines.items():
        for shots in (1, 5):
            rows[shots].append(accuracy_row(name, evaluate(baseline, test_episodes[shots])))

    idf = None if args.no_idf else corpus_idf(tokens[train_mask], tokenizer.num_embeddings)
    # the trainer's "text" backbone (attnmeta.nn.text.build_text_backbone); head learners get a
    # zero-initialised Linear(D, 5) after it
    backbone: dict = {"num_embeddings": tokenizer.num_embeddings, "encoder": args.encoder, "dim": args.dim,
                      "heads": args.heads}
    attention = {"self_attention": not args.no_self_attention, "dropout": args.dropout,
                 "freeze_embeddings": args.freeze_embeddings, "normalize": args.normalize}
    if args.encoder == "attention" or args.dense:
        backbone.update(attention)
    if args.encoder == "lexical":
        backbone.update(idf=None if idf is None else idf.tolist(), context_dim=args.context_dim,
                        learn_weights=not args.fixed_weights, dense=args.dense,
                        dense_weight=args.dense_weight)

    algo_options = json.loads(args.algo_options)
    training = {}
    for name in [n.strip() for n in args.learners.split(",") if n.strip()]:
        options = dict(algo_options.get(name, {}))
        head = spec(name).head
        train_ways = 5 if head else args.train_ways  # a head has a fixed number of ways (5, as at test time)
        if head:
            options.setdefault("adapt", args.adapt)
        elif name == "protonet":
            options.setdefault("distance", args.distance)
            options.setdefault("scale", args.scale)
        elif name == "matching":
            options.setdefault("scale", args.scale)
        parts = BenchmarkParts("clinc150", "classification",
                               sampler("train", train_ways, args.train_shots, args.train_queries),
                               sampler("val", 5, 1, 15), sampler("test", 5, 1, 15), tuple(tokens.shape[1:]),
                               {"text": True, "tokenizer": tokenizer.to_dict()}, {"name": "text",
                                                                                 "options": backbone})
        config = RunConfig(
            benchmark="clinc150", ways=5, shots=1, queries=15, train_ways=None if head else train_ways,
            train_shots=args.train_shots, train_queries=args.train_queries, algo=name, algo_options=options,
            meta_batch=args.meta_batch, steps=args.max_steps, lr=args.lr, weight_decay=args.weight_decay,
            budget_minutes=args.cpu_minutes, budget_clock="cpu", eval_every=args.eval_every,
            eval_episodes=args.val_episodes, val_seed=args.seed + 7, checkpoint_every=args.max_steps,
            seed=args.seed, threads=args.threads, device="cpu", plot=False,
            run_dir=str(fresh(Path(args.runs) / name)))
        untrained = build_learner(config.resolved(), parts)  # the run's initial weights (same seed)
        for shots in (1, 5):
            rows[shots].append(accuracy_row(f"{name} (untrained)", evaluate(untrained, test_episodes[shots])))
        log(f"{rows[1][-1]['method']}: 1-shot {100 * rows[1][-1]['mean']:.2f}, "
            f"5-shot {100 * rows[5][-1]['mean']:.2f}")
        log(f"training {name} ({args.encoder} encoder, options {options}): {train_ways}-way "
            f"{args.train_shots}-shot, meta-batch {args.meta_batch}, budget {args.cpu_minutes} CPU-minutes, "
            f"{sum(p.numel() for p in untrained.parameters())} parameters, run folder {config.run_dir}")
        result = train(config, bench=parts, evaluate_test=False, quiet=True, print_fn=log)
        best = result.best or {"step": 0, "value": float("nan")}
        info = {"steps": result.steps, "cpu_s": result.summary["train_cpu_seconds"],
                "wall_s": result.summary["train_seconds"], "best_step": best["step"],
                "best_val_accuracy": best["value"], "run_dir": str(result.run_dir),
                "history": validation_history(result.run_dir)}
        training[name] = info
        learner = best_learner(result.config, parts, result.run_dir)
        for shots in (1, 5):
            rows[shots].append(accuracy_row(name, evaluate(learner, test_episodes[shots]),
                                            {"train_cpu_minutes": info["cpu_s"] / 60, "steps": info["steps"],
                                             "best_step": info["best_step"]}))

    baseline = {shots: rows[shots][0] for shots in (1, 5)}
    log("")
    held_out = "domains" if args.split == "domain" else "intents"
    log(f"5-way accuracy on {args.episodes} fixed episodes of held-out {held_out} (mean +/- 95% CI, %)")
    log(f"{'method':34s} {'1-shot':>16s} {'5-shot':>16s}  beats tfidf (non-overlapping CI)")
    for i in range(len(rows[1])):
        cells, wins = [], []
        for shots in (1, 5):
            row = rows[shots][i]
            row["beats_tfidf_non_overlapping"] = bool(row["mean"] - row["ci95"] >
                                                      baseline[shots]["mean"] + baseline[shots]["ci95"])
            cells.append(f"{100 * row['mean']:6.2f} +/- {100 * row['ci95']:4.2f}")
            wins.append("yes" if row["beats_tfidf_non_overlapping"] else "no")
        log(f"{rows[1][i]['method']:34s} {cells[0]:>16s} {cells[1]:>16s}  {'/'.join(wins)}")
    result = {"benchmark": "text_fewshot", "config": vars(args), "split": split,
              "vocabulary": len(tokenizer.vocab), "tokens_shape": list(tokens.shape),
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "note": "shared, loaded 2-core machine"},
              "results": {f"5way_{shots}shot": rows[shots] for shots in (1, 5)}, "training": training,
              "log": lines}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
