"""Encoding throughput and memory of the frozen sentence encoder (``attnmeta.nn.sentence``, extra 'text').

Encodes ``--texts`` CLINC150 utterances (the first ones of the held-out test domains, in data order) with
all-MiniLM-L6-v2 (the packaged weights, offline) at 1 and 2 threads, ``--batch-size`` texts per call: the
sentences per second of cold encoding (no cache; median of ``--repeats`` passes, each on a fresh in-memory
cache), of cache hits (the second call on the same texts), the process CPU seconds, and the peak resident
memory (``ru_maxrss``) after loading the model and after encoding. With ``--finetune-layers K`` (default 2)
it also measures, at one thread, what ``finetune_layers=K`` costs: encoding the token states entering the
last ``K`` layers (cold, sentences per second), their cached size per text, and the trainable layers' forward
(evaluation) and forward + backward (a training step) in sentences per second, batches of 150.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python benchmarks/bench_sentence.py --root ../shared/data/text/clinc150

Prints one line per setting and writes ``benchmarks/results/bench_sentence.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from attnmeta.data.text import CLINC150_DOMAINS_DEFAULT_SPLIT, load_clinc150  # noqa: E402
from attnmeta.nn.sentence import EmbeddingCache, SentenceEncoder, decode_utf8, encode_utf8  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def finetune_costs(rows: torch.Tensor, layers: int, batch_size: int, repeats: int) -> dict:
    """Token-state encoding and the trainable top's speed at one thread (``finetune_layers=layers``)."""
    torch.set_num_threads(1)
    encoder = SentenceEncoder(adapter="none", batch_size=batch_size, finetune_layers=layers)
    wall = time.perf_counter()
    encoder.cached_rows([r.encode("utf-8") for r in decode_utf8(rows)])   # cold: every text's token states
    encode_s = time.perf_counter() - wall
    rss_states = peak_rss_mib()
    state_bytes = [r.nbytes for r in encoder.cache.rows.values()]
    timings: dict[str, list[float]] = {"forward": [], "forward_backward": []}
    for _ in range(repeats):
        for i in range(0, len(rows) - 149, 150):
            batch = rows[i:i + 150]
            wall = time.perf_counter()
            with torch.no_grad():
                encoder.eval()(batch)
            timings["forward"].append(time.perf_counter() - wall)
            wall = time.perf_counter()
            encoder.train()(batch).sum().backward()
            timings["forward_backward"].append(time.perf_counter() - wall)
    row = {"layers": layers, "texts": len(rows), "state_encoding_sentences_per_s": len(rows) / encode_s,
           "state_bytes_per_text": statistics.mean(state_bytes),
           "forward_sentences_per_s": 150 / statistics.median(timings["forward"]),
           "train_sentences_per_s": 150 / statistics.median(timings["forward_backward"]),
           "peak_rss_mib": {"after_state_encoding": rss_states, "after_steps": peak_rss_mib()}}
    print(f"finetune_layers={layers}, 1 thread: token states {row['state_encoding_sentences_per_s']:.0f} "
          f"sentences/s cold, {row['state_bytes_per_text'] / 1024:.1f} KiB per text cached; trainable layers "
          f"{row['forward_sentences_per_s']:.0f} sentences/s forward, {row['train_sentences_per_s']:.0f}/s "
          f"forward + backward; peak RSS {rss_states:.0f} MiB after encoding the states, "
          f"{peak_rss_mib():.0f} MiB after the steps")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "text" / "clinc150"))
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--finetune-layers", type=int, default=2, help="0: skip the fine-tuning costs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_sentence.json"))
    args = parser.parse_args()

    data = load_clinc150(args.root)
    test = set(data.classes_in_domains(CLINC150_DOMAINS_DEFAULT_SPLIT["test"]))
    texts = [t for t, y in zip(data.texts, data.labels.tolist()) if y in test][:args.texts]
    rows = encode_utf8(texts, 136)
    rss_start = peak_rss_mib()
    start = time.perf_counter()
    encoder = SentenceEncoder(adapter="none", batch_size=args.batch_size)
    encoder.pretrained  # noqa: B018  # load the model
    load_seconds = time.perf_counter() - start
    rss_model = peak_rss_mib()
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        encoder.cache = EmbeddingCache()
        encoder(rows[:64])                                      # warm-up
        walls, cpus = [], []
        for _ in range(args.repeats):
            encoder.cache = EmbeddingCache()
            wall, cpu = time.perf_counter(), time.process_time()
            encoder(rows)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        wall = time.perf_counter()
        encoder(rows)                                            # all cached
        cached = time.perf_counter() - wall
        row = {"threads": threads, "texts": len(texts), "batch_size": args.batch_size,
               "sentences_per_s": len(texts) / statistics.median(walls),
               "cpu_s_per_1000": 1000 * statistics.median(cpus) / len(texts),
               "cached_sentences_per_s": len(texts) / cached, "wall_s": walls}
        results.append(row)
        print(f"{threads} thread(s): {row['sentences_per_s']:.0f} sentences/s cold "
              f"({row['cpu_s_per_1000']:.1f} CPU-s per 1000), {row['cached_sentences_per_s']:.0f}/s cached")
    report = {"model": encoder.model_name, "cpu": cpu_model(), "torch": torch.__version__,
              "load_seconds": load_seconds, "peak_rss_mib": {"start": rss_start, "model_loaded": rss_model,
                                                              "after_encoding": peak_rss_mib()},
              "embedding_bytes_per_text": 4 * encoder.out_features, "results": results}
    if args.finetune_layers:
        report["finetune"] = finetune_costs(rows, args.finetune_layers, args.batch_size, args.repeats)
    print(f"model load {load_seconds:.1f} s; peak RSS {rss_start:.0f} MiB at start, {rss_model:.0f} MiB "
          f"with the model, {peak_rss_mib():.0f} MiB after encoding; CPU {report['cpu']}")
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
