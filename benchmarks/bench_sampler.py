"""Episode sampling speed: the in-memory fast path vs the Dataset path vs a naive per-example Python sampler.

Omniglot-sized data (32,460 images of 1x28x28, 1,623 classes of 20), meta-batch 32 of 5-way 1-shot 15-query
tasks. Prints a table of time per task (median and best over repeats) and the speed-up over the naive
baseline measured in the same run, and writes ``benchmarks/results/bench_sampler.json``.

    .venv/bin/python benchmarks/bench_sampler.py [--repeats 30] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attnmeta.tasks import EpisodeSampler, TaskBatch

WAYS, SHOTS, QUERIES, META_BATCH = 5, 1, 15, 32
IMAGES, CLASSES, SIDE = 32460, 1623, 28


class TensorDataset(torch.utils.data.Dataset):
    """A map-style Dataset over the same tensor, one ``(x, y)`` item per ``__getitem__``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels.tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.labels[index]


class NaiveSampler:
    """Baseline: Python lists per class, ``random.sample`` per task and class, a tensor index per example."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> None:
        self.images = images
        self.by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels.tolist()):
            self.by_class.setdefault(label, []).append(index)
        self.classes = sorted(self.by_class)
        self.random = random.Random(seed)

    def sample_batch(self, meta_batch: int) -> TaskBatch:
        support_x, support_y, query_x, query_y, chosen = [], [], [], [], []
        for _ in range(meta_batch):
            classes = self.random.sample(self.classes, WAYS)
            s_x, s_y, q_x, q_y = [], [], [], []
            for label, cls in enumerate(classes):
                picks = self.random.sample(self.by_class[cls], SHOTS + QUERIES)
                for position, index in enumerate(picks):
                    (s_x if position < SHOTS else q_x).append(self.images[index])
                    (s_y if position < SHOTS else q_y).append(label)
            support_x.append(torch.stack(s_x))
            query_x.append(torch.stack(q_x))
            support_y.append(torch.tensor(s_y))
            query_y.append(torch.tensor(q_y))
            chosen.append(torch.tensor(classes))
        return TaskBatch(
            torch.stack(support_x),
            torch.stack(support_y),
            torch.stack(query_x),
            torch.stack(query_y),
            torch.stack(chosen),
        )


def time_round_robin(samplers: list[Callable[[], TaskBatch]], repeats: int, device: str) -> list[list[float]]:
    """Seconds per task of each sampler, ``repeats`` meta-batches each, taken in turns (so that load changes
    on a shared machine hit every sampler alike), after two warm-up batches each."""
    for sample in samplers:
        for _ in range(2):
            sample()
    times: list[list[float]] = [[] for _ in samplers]
    for _ in range(repeats):
        for sample, record in zip(samplers, times):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            batch = sample()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            record.append((time.perf_counter() - start) / META_BATCH)
            assert batch.support_x.shape[:2] == (META_BATCH, WAYS * SHOTS)
            assert batch.query_x.shape[:2] == (META_BATCH, WAYS * QUERIES)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="where the image tensor lives for the fast path")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_sampler.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(CLASSES).repeat_interleave(IMAGES // CLASSES)
    images_uint8 = torch.randint(0, 256, (IMAGES, 1, SIDE, SIDE), dtype=torch.uint8, generator=generator)
    images = images_uint8.float().div_(255)
    on_device = images.to(args.device)

    rows: list[tuple[str, Callable[[], TaskBatch]]] = []
    naive = NaiveSampler(images, labels)
    rows.append(("naive per-example Python (baseline)", lambda: naive.sample_batch(META_BATCH)))
    dataset = EpisodeSampler(TensorDataset(images, labels), labels, WAYS, SHOTS, QUERIES)
    rows.append(("EpisodeSampler, Dataset path", lambda: dataset.sample_batch(META_BATCH)))
    fast = EpisodeSampler(on_device, labels, WAYS, SHOTS, QUERIES)
    rows.append(
        (f"EpisodeSampler, tensor path float32 ({args.device})", lambda: fast.sample_batch(META_BATCH))
    )
    fast8 = EpisodeSampler(images_uint8.to(args.device), labels, WAYS, SHOTS, QUERIES)
    rows.append(
        (f"EpisodeSampler, tensor path uint8 ({args.device})", lambda: fast8.sample_batch(META_BATCH))
    )
    rotated = EpisodeSampler(on_device, labels, WAYS, SHOTS, QUERIES, rotations=(0, 90, 180, 270))
    rows.append(
        (f"  + 4 rotation classes, float32 ({args.device})", lambda: rotated.sample_batch(META_BATCH))
    )
    rotated8 = EpisodeSampler(
        images_uint8.to(args.device), labels, WAYS, SHOTS, QUERIES, rotations=(0, 90, 180, 270)
    )
    rows.append((f"  + 4 rotation classes, uint8 ({args.device})", lambda: rotated8.sample_batch(META_BATCH)))
    to_float = EpisodeSampler(
        images_uint8.to(args.device),
        labels,
        WAYS,
        SHOTS,
        QUERIES,
        rotations=(0, 90, 180, 270),
        batch_transform=lambda x: x.float().div_(255),
    )
    rows.append(
        (f"  + rotations, uint8 -> float32 out ({args.device})", lambda: to_float.sample_batch(META_BATCH))
    )
    precomputed = EpisodeSampler(
        images_uint8.to(args.device),
        labels,
        WAYS,
        SHOTS,
        QUERIES,
        rotations=(0, 90, 180, 270),
        batch_transform=lambda x: x.float().div_(255),
        precompute_augmentation=True,
    )
    rows.append(
        (
            f"  + rotations precomputed, uint8 -> float32 ({args.device})",
            lambda: precomputed.sample_batch(META_BATCH),
        )
    )

    load_before = os.getloadavg()[0]
    times = time_round_robin([sample for _, sample in rows], args.repeats, args.device)
    results = [
        {"name": name, "median_s": statistics.median(record), "best_s": min(record)}
        for (name, _), record in zip(rows, times)
    ]
    baseline = results[0]["median_s"]
    print(
        f"{WAYS}-way {SHOTS}-shot {QUERIES}-query, meta-batch {META_BATCH}, "
        f"data [{IMAGES}, 1, {SIDE}, {SIDE}], "
        f"{args.threads} thread(s), {args.repeats} repeats, 1-min load average {load_before:.1f} on "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'sampler':<52} {'median us/task':>15} {'best us/task':>13} {'speed-up':>9}")
    for row in results:
        row["speedup_vs_naive"] = baseline / row["median_s"]
        print(
            f"{row['name']:<52} {row['median_s'] * 1e6:>15.1f} {row['best_s'] * 1e6:>13.1f} "
            f"{row['speedup_vs_naive']:>8.1f}x"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "ways": WAYS,
        "shots": SHOTS,
        "queries": QUERIES,
        "meta_batch": META_BATCH,
        "data_shape": [IMAGES, 1, SIDE, SIDE],
        "threads": args.threads,
        "repeats": args.repeats,
        "device": args.device,
        "torch": torch.__version__,
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }
    out.write_text(json.dumps({"config": meta, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
