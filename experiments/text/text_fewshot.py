"""Few-shot intent detection on CLINC150: meta-learned text encoders vs TF-IDF nearest centroid.

Classes (intents) are split by domain (default: 6 meta-train / 1 validation / 3 test domains, see
``attnmeta.data.text.CLINC150_DOMAINS_DEFAULT_SPLIT``) or at random (``--split random``). The tokenizer is
built from the meta-train utterances only. Each learner trains from scratch within a CPU-time budget
(``--cpu-minutes``, process time of this process), keeps the parameters with the best validation accuracy,
and is evaluated on the same 600 fixed 5-way test episodes (1-shot and 5-shot, 15 queries per class) as the
baselines:

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
        --learners protonet,matching,maml > experiments/text/results/text_fewshot.log 2>&1 &

Prints a table and writes ``experiments/text/results/text_fewshot.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from attnmeta.data.text import clinc150_domain_split, load_clinc150, random_class_split
from attnmeta.eval import evaluate
from attnmeta.learners.registry import build, spec
from attnmeta.nn.text import LexicalEncoder, TextEncoder, TextTokenizer, TfidfCentroid, corpus_idf
from attnmeta.tasks.sampler import EpisodeSampler

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
    parser.add_argument("--out", default=str(ROOT / "experiments/text/results/text_fewshot.json"))
    return parser.parse_args(argv)


def accuracy_row(name: str, result, extra: dict | None = None) -> dict:
    row = {"method": name, "mean": result.mean, "ci95": result.ci95, "n": result.summary.n,
           "seconds_per_task": result.seconds_per_task}
    row.update(extra or {})
    return row


def train(learner, sampler: EpisodeSampler, val_episodes, args, log) -> dict:
    """Adam on ``meta_loss`` until the CPU budget or ``max_steps``; keep the best validation state."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed + 1)
    budget_s = args.cpu_minutes * 60
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    best = {"val": -1.0, "step": 0, "state": copy.deepcopy(learner.state_dict())}
    history = []
    step = 0
    while step < args.max_steps and time.process_time() - start_cpu < budget_s:
        step += 1
        learner.train()
        out = learner.meta_loss(sampler.sample_batch(args.meta_batch, generator))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if step % args.eval_every == 0:
            with torch.no_grad():
                val = evaluate(learner, val_episodes).mean
            cpu = time.process_time() - start_cpu
            history.append({"step": step, "cpu_s": cpu, "train_loss": out.metrics.get("loss"),
                            "train_accuracy": out.metrics.get("accuracy"), "val_accuracy": val})
            log(f"  step {step:6d}  cpu {cpu:7.0f}s  loss {out.metrics.get('loss', float('nan')):.3f}  "
                f"train acc {out.metrics.get('accuracy', float('nan')):.3f}  val 5w1s {val:.4f}")
            if val > best["val"]:
                best = {"val": val, "step": step, "state": copy.deepcopy(learner.state_dict())}
    learner.load_state_dict(best["state"])
    return {"steps": step, "cpu_s": time.process_time() - start_cpu,
            "wall_s": time.perf_counter() - start_wall, "best_step": best["step"],
            "best_val_accuracy": best["val"], "history": history}


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
    val_episodes = sampler("val", 5, 1, 15).fixed_tasks(args.val_episodes, seed=args.seed + 7)
    train_sampler = sampler("train", args.train_ways, args.train_shots, args.train_queries)

    rows: dict[int, list[dict]] = {1: [], 5: []}
    train_mask = torch.isin(data.labels, torch.tensor(split["train"]))
    baselines = {"tfidf-centroid": TfidfCentroid(),
                 "tfidf-centroid (corpus idf)": TfidfCentroid(corpus_tokens=tokens[train_mask])}
    for name, baseline in baselines.items():
        for shots in (1, 5):
            rows[shots].append(accuracy_row(name, evaluate(baseline, test_episodes[shots])))

    idf = None if args.no_idf else corpus_idf(tokens[train_mask], tokenizer.num_embeddings)

    def make_attention_encoder() -> TextEncoder:
        return TextEncoder(tokenizer.num_embeddings, args.dim, args.dim, heads=args.heads,
                           self_attention=not args.no_self_attention, dropout=args.dropout,
                           freeze_embeddings=args.freeze_embeddings, normalize=args.normalize)

    def make_encoder() -> nn.Module:
        if args.encoder == "attention":
            return make_attention_encoder()
        return LexicalEncoder(tokenizer.num_embeddings, idf=idf, context_dim=args.context_dim,
                              learn_weights=not args.fixed_weights,
                              dense=make_attention_encoder() if args.dense else None,
                              dense_weight=args.dense_weight)

    algo_options = json.loads(args.algo_options)
    training = {}
    for name in [n.strip() for n in args.learners.split(",") if n.strip()]:
        torch.manual_seed(args.seed)
        options = dict(algo_options.get(name, {}))
        encoder = make_encoder()
        head = spec(name).head
        ways, learner_sampler = args.train_ways, train_sampler
        if head:  # encoder -> zero-initialised linear head; a fixed number of ways (5, as at test time)
            ways = 5
            learner_sampler = sampler("train", ways, args.train_shots, args.train_queries)
            linear = nn.Linear(encoder.out_features, ways)
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
            encoder = nn.Sequential(encoder, linear)
            options.setdefault("adapt", args.adapt)
        elif name == "protonet":
            options.setdefault("distance", args.distance)
            options.setdefault("scale", args.scale)
        elif name == "matching":
            options.setdefault("scale", args.scale)
        learner = build(name, model=encoder, task_type="classification", ways=ways, **options)
        for shots in (1, 5):
            rows[shots].append(accuracy_row(f"{name} (untrained)", evaluate(learner, test_episodes[shots])))
        log(f"{rows[1][-1]['method']}: 1-shot {100 * rows[1][-1]['mean']:.2f}, "
            f"5-shot {100 * rows[5][-1]['mean']:.2f}")
        log(f"training {name} ({args.encoder} encoder, options {options}): {ways}-way "
            f"{args.train_shots}-shot, "
            f"meta-batch {args.meta_batch}, budget {args.cpu_minutes} CPU-minutes, "
            f"{sum(p.numel() for p in learner.parameters())} parameters")
        info = train(learner, learner_sampler, val_episodes, args, log)
        training[name] = {k: v for k, v in info.items()}
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
