"""compare(): all learners on the same episodes, one table, JSON and PNG; budgets; errors; the CLI entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnmeta.compare import PeakMemory, compare, main, train_learner
from attnmeta.data.benchmarks import Benchmark
from attnmeta.learners.matching import MatchingNetworks
from attnmeta.tasks.episode import Task, TaskBatch
from test_matching import gaussian_task


class GaussianSource:
    """Task source of fresh Gaussian-class episodes, with the source contract the learners need."""

    def __init__(self, ways: int = 3, shots: int = 1, queries: int = 3, num_classes: int = 10) -> None:
        self.ways, self.shots, self.queries, self.num_classes = ways, shots, queries, num_classes
        self.fixed_calls: list[tuple[int, int]] = []

    def _task(self, generator: torch.Generator) -> Task:
        task = gaussian_task(self.ways, self.shots, self.queries, generator=generator)
        classes = torch.randperm(self.num_classes, generator=generator)[:self.ways]
        return Task(task.support_x, task.support_y, task.query_x, task.query_y, classes)

    def sample(self, generator=None) -> Task:
        return self._task(generator or torch.Generator().manual_seed(0))

    def sample_batch(self, meta_batch: int, generator=None) -> TaskBatch:
        generator = generator or torch.Generator().manual_seed(0)
        return TaskBatch.stack([self._task(generator) for _ in range(meta_batch)])

    def fixed_tasks(self, n: int = 600, seed: int = 0) -> list[Task]:
        self.fixed_calls.append((n, seed))
        generator = torch.Generator().manual_seed(seed)
        return [self._task(generator) for _ in range(n)]


def gaussian_benchmark() -> Benchmark:
    source = GaussianSource()
    return Benchmark("gaussian", "classification", source, source, source, (8,),
                     default_backbone={"name": "mlp", "options": {"hidden": [16]}})


def test_compare_table_json_png_and_identical_episodes(tmp_path: Path):
    pytest.importorskip("matplotlib")
    lines: list[str] = []
    bench = gaussian_benchmark()
    result = compare(bench, ["protonet", "matching", "transfer", "snail"], ways=3, shots=1,
                     steps=3, episodes=7, out_dir=tmp_path, print_fn=lines.append)
    assert [r.algo for r in result.rows] == ["protonet", "matching", "transfer", "snail"]
    for row in result.rows:
        assert row.episodes == 7 and len(row.per_episode) == 7 and row.train_steps == 3
        assert 0 <= row.accuracy <= 1 and row.adapt_s_per_task > 0 and row.train_cpu_s > 0
        assert row.peak_memory_mib >= 0
    assert bench.test.fixed_calls == [(7, 0)]  # one set of test episodes, shared by every learner
    assert "protonet" in result.table() and "accuracy %" in result.table()
    assert any("matching" in line for line in lines)
    stored = json.loads((tmp_path / "compare.json").read_text())
    assert [r["algo"] for r in stored["rows"]] == ["protonet", "matching", "transfer", "snail"]
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_same_learner_same_numbers():
    a = compare(gaussian_benchmark(), ["matching"], ways=3, steps=2, episodes=5, print_fn=None)
    b = compare(gaussian_benchmark(), ["matching"], ways=3, steps=2, episodes=5, print_fn=None)
    assert a.rows[0].per_episode == b.rows[0].per_episode


def test_cpu_budget_stops_training():
    learner = MatchingNetworks(torch.nn.Linear(8, 8))
    trained = train_learner(learner, GaussianSource(), budget_seconds=0.0, print_fn=lambda _: None)
    assert trained["steps"] == 0
    trained = train_learner(learner, GaussianSource(), steps=4, budget_seconds=100.0)
    assert trained["steps"] == 4


def test_peak_memory_sees_an_allocation():
    with PeakMemory(interval=0.001) as memory:
        block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB
        block += 1
        import time

        time.sleep(0.05)
    del block
    assert memory.peak_mib > 40


def test_errors():
    with pytest.raises(ValueError, match="unknown learner"):
        compare(gaussian_benchmark(), ["nope"], print_fn=None)
    with pytest.raises(ValueError, match="at least one learner"):
        compare(gaussian_benchmark(), [], print_fn=None)
    with pytest.raises(ValueError, match="training budget"):
        train_learner(MatchingNetworks(torch.nn.Identity()), GaussianSource(), steps=None,
                      budget_seconds=None)
    with pytest.raises(ValueError, match="ALGO=FOLDER"):
        main(["gaussian", "--algos", "protonet", "--run-dir", "oops"])


def test_cli_entry_on_omniglot(shared_data: Path, tmp_path: Path, capsys):
    code = main(["omniglot", "--algos", "protonet,matching", "--root", str(shared_data / "omniglot"),
                 "--steps", "1", "--episodes", "3", "--queries", "2", "--out", str(tmp_path), "--no-plot"])
    assert code == 0
    out = capsys.readouterr().out
    assert "protonet" in out and "matching" in out
    assert len(json.loads((tmp_path / "compare.json").read_text())["rows"]) == 2
