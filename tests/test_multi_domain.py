"""Multi-domain episodes ``multi:<name>,...`` (attnmeta.data.multi_domain) on tiny in-memory and on-disk
sources: synthetic Omniglot, a small imagefolder and a small CIFAR-100 release."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from attnmeta.cli import main
from attnmeta.data import make_benchmark
from attnmeta.data.multi_domain import MultiDomainSource, check_learner
from attnmeta.data.omniglot import Omniglot
from attnmeta.errors import UserError
from attnmeta.train.builders import build_learner
from attnmeta.train.config import RunConfig
from attnmeta.train.run import benchmark_parts
from synthetic import synthetic_omniglot
from test_cifar import _write_folder
from test_imagefolder import _folder

SIZE, QUERIES = 16, 2
NAME = "multi:omniglot,imagefolder"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("multi") / "images")  # 12 classes of 6 images (8/2/2 split)


@pytest.fixture(scope="module")
def omniglot_data() -> tuple[Omniglot, Omniglot]:
    background, evaluation = synthetic_omniglot(12, 0), synthetic_omniglot(8, 1)
    return Omniglot.from_tensors(**background), Omniglot.from_tensors(**evaluation)


def _bench(image_root: Path, omniglot_data, name: str = NAME, seed: int = 0, **options):
    options = {"roots": {"imagefolder": str(image_root)}, "sources": {"omniglot": {"data": omniglot_data}},
               "ways_min": 3, "ways_max": 6, **options}
    return make_benchmark(name, ways=5, shots=1, queries=QUERIES, image_size=SIZE, seed=seed, **options)


def _offsets(source: MultiDomainSource) -> dict[str, tuple[int, int]]:
    """Global class-id range of each source's pool in this split."""
    return {d.name: (int(d.sampler.classes.min()) + d.offset, int(d.sampler.classes.max()) + d.offset)
            for d in source.domains}


def test_episodes_come_from_one_source_with_bounded_ways_and_shots(image_root, omniglot_data):
    bench = _bench(image_root, omniglot_data)
    assert bench.input_shape == (3, SIZE, SIZE) and bench.task_type == "classification"
    train = bench.train
    assert train.num_classes == 48 + 8  # 12 characters x 4 rotations, 8 imagefolder training classes
    ranges, seen = _offsets(train), set()
    for _ in range(40):
        task = train.sample()
        source = task.info["source"]
        seen.add(source)
        low, high = ranges[source]
        assert ((task.classes >= low) & (task.classes <= high)).all()  # every class from that one source
        assert task.classes.unique().numel() == task.ways
        pool = next(d.num_classes for d in train.domains if d.name == source)
        assert min(3, pool) <= task.ways <= min(6, pool)
        assert task.support_x.shape[1:] == task.query_x.shape[1:] == (3, SIZE, SIZE)
        assert task.support_x.dtype == torch.float32
        shots = torch.bincount(task.support_y, minlength=task.ways)
        cap = 10 if source == "omniglot" else 6 - QUERIES  # shots_max, or the smallest class less queries
        assert shots.min() >= 1 and shots.max() <= cap and shots.tolist() == task.info["shots"]
        assert torch.bincount(task.query_y).tolist() == [QUERIES] * task.ways
        if source == "omniglot":  # grayscale repeated to three channels
            assert torch.equal(task.support_x[:, 0], task.support_x[:, 2])
    assert seen == {"omniglot", "imagefolder"}  # every source gets sampled
    assert len({tuple(train.sample().info["shots"]) for _ in range(10)}) > 1  # shots vary


def test_meta_batch_shares_one_source_and_shape_and_fixed_shots(image_root, omniglot_data):
    bench = _bench(image_root, omniglot_data)
    for _ in range(5):
        batch = bench.train.sample_batch(3)
        assert batch.support_x.shape[0] == 3 and batch.support_x.shape[2:] == (3, SIZE, SIZE)
        assert len({info["source"] for info in batch.infos}) == 1
    fixed = _bench(image_root, omniglot_data, variable_shots=False)
    for _ in range(10):
        task = fixed.train.sample()
        assert torch.bincount(task.support_y).tolist() == [1] * task.ways


def test_seeded_reproducible_resumable_and_fixed_evaluation_episodes(image_root, omniglot_data):
    a, b = _bench(image_root, omniglot_data), _bench(image_root, omniglot_data)
    first = [a.train.sample() for _ in range(5)]
    for x, y in zip(first, (b.train.sample() for _ in range(5))):
        assert torch.equal(x.support_x, y.support_x) and torch.equal(x.classes, y.classes)
    state = a.train.state_dict()
    after = a.train.sample_batch(2)
    b.train.load_state_dict(state)
    assert torch.equal(b.train.sample_batch(2).query_x, after.query_x)
    other = _bench(image_root, omniglot_data, seed=1).train.sample()
    assert not torch.equal(other.support_x, first[0].support_x) or other.info != first[0].info
    for split in ("val", "test"):
        one, two = getattr(a, split).fixed_tasks(8, seed=3), getattr(b, split).fixed_tasks(8, seed=3)
        assert [t.info for t in one] == [t.info for t in two]
        assert all(torch.equal(s.support_x, t.support_x) and torch.equal(s.query_y, t.query_y)
                   for s, t in zip(one, two))
        ranges = _offsets(getattr(a, split))
        for task in one:  # episodes of the val/test classes; imagefolder has 2 of them: 2-way
            low, high = ranges[task.info["source"]]
            assert ((task.classes >= low) & (task.classes <= high)).all()
            assert task.ways == (2 if task.info["source"] == "imagefolder" else task.ways)
    assert [t.info for t in a.test.fixed_tasks(8, seed=3)] == [t.info for t in one]  # identical again


@pytest.mark.parametrize("name, options, message", [
    ("multi:", {}, "'multi:' names 0 source(s); a multi-domain benchmark needs at least two, e.g. "
                   "multi:omniglot,cifar-fs (train one benchmark by its own name)"),
    ("multi:omniglot", {}, "'multi:omniglot' names 1 source(s); a multi-domain benchmark needs at least "
                           "two, e.g. multi:omniglot,cifar-fs (train one benchmark by its own name)"),
    ("multi:omniglot,nope", {}, "unknown multi-domain source 'nope' in 'multi:omniglot,nope'; choose from: "
                                "omniglot, miniimagenet, cifar-fs, fc100, cub, aircraft, flowers, dtd, "
                                "quickdraw, tiered-imagenet, imagefolder"),
    ("multi:omniglot,omniglot", {}, "multi-domain source 'omniglot' is named twice in "
                                    "'multi:omniglot,omniglot'; name each source once"),
    ("multi:cifar-fs,fc100", {}, "multi-domain sources 'cifar-fs' and 'fc100' both come from CIFAR-100: "
                                 "one's test classes are the other's training classes; keep one of them"),
    (NAME, {"ways_min": 8}, "multi-domain ways_min (8) must be <= ways_max (6); set "
                            "benchmark_options.ways_min / ways_max"),
    (NAME, {"ways_min": 1}, "multi-domain option 'ways_min' must be an int >= 2, got 1; set "
                            "benchmark_options.ways_min"),
    (NAME, {"roots": {}}, "multi-domain source 'imagefolder' has no data folder: set "
                          "benchmark_options.roots.imagefolder=PATH"),
    (NAME, {"crop": 3}, "unknown multi-domain options ['crop']; accepted: roots, sources, ways_min, "
                        "ways_max, shots_max, variable_shots (options of one source go in sources.NAME)"),
])
def test_bad_specs_are_one_line_errors(image_root, omniglot_data, monkeypatch, name, options, message):
    monkeypatch.delenv("ATTNMETA_DATA", raising=False)
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        _bench(image_root, omniglot_data, name=name, **options)


def test_missing_root_of_a_source_names_the_source_and_the_option(image_root, monkeypatch):
    monkeypatch.delenv("ATTNMETA_DATA", raising=False)
    message = ("multi-domain source 'omniglot' has no data folder: set benchmark_options.roots.omniglot=PATH "
               "(or --root BASE holding omniglot/, or $ATTNMETA_DATA)")
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        make_benchmark(NAME, ways=5, shots=1, queries=2, roots={"imagefolder": str(image_root)})


def test_learners_that_cannot_take_variable_ways_are_refused(image_root, omniglot_data):
    bench = benchmark_parts(_bench(image_root, omniglot_data))
    config = RunConfig(benchmark=NAME, algo="maml", ways=5, backbone_options={"hidden": 4}).resolved()
    with pytest.raises(UserError, match=r"^learner 'maml' ends in a 5-output head, but multi-domain episodes "
                       r"have up to 6 ways; set --ways 6 \(the head size\) or "
                       r"--set benchmark_options.ways_max=5$"):
        build_learner(config, bench)
    config = RunConfig(benchmark=NAME, algo="maml", ways=6, backbone_options={"hidden": 4}).resolved()
    learner = build_learner(config, bench)  # a 6-output head takes every 3- to 6-way episode
    assert learner.predict(bench.test.fixed_tasks(1, seed=0)[0]).shape[-1] >= 2
    fixed = SimpleNamespace(any_ways=False)
    with pytest.raises(UserError, match=r"^learner 'snail' is built for one number of ways and cannot take "
                       r"multi-domain episodes \(3 to 6 ways\); choose a learner that handles any ways"):
        check_learner("snail", fixed, 5, bench.test)


def test_cli_train_protonet_reports_accuracy_per_source(image_root, tmp_path, capsys):
    base = tmp_path / "data"
    _write_folder(base / "cifar100")  # --root BASE: cifar-fs reads BASE/cifar100 ($ATTNMETA_DATA layout)
    run = tmp_path / "run"
    code = main(["train", "multi:cifar-fs,imagefolder", "--root", str(base), "--algo", "protonet",
                 "--steps", "3", "--queries", "2", "--meta-batch", "1", "--eval-every", "3",
                 "--eval-episodes", "4", "--test-episodes", "8", "--threads", "1", "--set", "image_size=16",
                 "--set", f"benchmark_options.roots.imagefolder={image_root}",
                 "--set", "benchmark_options.ways_min=2", "--set", "benchmark_options.ways_max=4",
                 "--set", "backbone_options.hidden=8", "--set", "plot=false", "--run-dir", str(run),
                 "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    groups = summary["test_per_source"]
    assert set(groups) <= {"cifar-fs", "imagefolder"} and sum(g["n"] for g in groups.values()) == 8
    assert re.search(r"multi:cifar-fs,imagefolder\s+protonet\s+2-4\s+1-10\s+8\s+accuracy", out)
    for name in groups:
        assert f"  {name} " in out  # one row per source under the overall result
    assert main(["train", "--resume", str(run), "--steps", "4", "--quiet"]) == 0  # the source's state resumes
    assert main(["eval", str(run), "--episodes", "6", "--quiet"]) == 0  # rebuilt from the recorded config
    out = capsys.readouterr().out
    assert re.search(r"^  (cifar-fs|imagefolder)\s+protonet\s+2-4\s+1-10\s+\d\s+accuracy", out, re.M)
