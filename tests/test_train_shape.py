"""Training episodes of another shape than the test's: ``train_ways`` / ``train_shots`` / ``train_queries``
in ``make_benchmark``, ``RunConfig``, the trainer and ``attnmeta train``."""

from __future__ import annotations

import json

import pytest
import torch

from attnmeta.cli import _train_config, build_parser
from attnmeta.cli import main as cli_main
from attnmeta.data.benchmarks import make_benchmark
from attnmeta.data.omniglot import Omniglot
from attnmeta.train import RunConfig, train
from attnmeta.train.trainer import build_benchmark, build_learner, load_run_config


@pytest.fixture(scope="module")
def tiny_omniglot() -> tuple[Omniglot, Omniglot]:
    from synthetic import synthetic_omniglot

    return tuple(Omniglot.from_tensors(**synthetic_omniglot(characters, seed))  # type: ignore[return-value]
                 for characters, seed in ((6, 0), (7, 1)))


def test_training_source_alone_takes_the_training_shape(tiny_omniglot):
    bench = make_benchmark("omniglot", data=tiny_omniglot, ways=5, shots=1, queries=15, train_ways=12,
                           train_shots=2, train_queries=3)
    task = bench.train.sample()
    assert (task.ways, task.support_y.numel(), task.query_y.numel()) == (12, 24, 36)
    for source in (bench.val, bench.test):
        task = source.sample()
        assert (task.ways, task.support_y.numel(), task.query_y.numel()) == (5, 5, 75)
    same = make_benchmark("omniglot", data=tiny_omniglot, ways=5, shots=1, queries=15)
    assert torch.equal(same.train.sample().support_x, make_benchmark(
        "omniglot", data=tiny_omniglot, ways=5, shots=1, queries=15, train_ways=5).train.sample().support_x)
    regression = make_benchmark("sinusoid", ways=1, shots=10, queries=10, train_shots=4, train_queries=6)
    task = regression.train.sample()
    assert (task.support_x.shape[0], task.query_x.shape[0]) == (4, 6)
    assert regression.test.sample().support_x.shape[0] == 10


def test_config_validates_the_training_shape():
    assert RunConfig(benchmark="omniglot", ways=5, train_ways=60).train_ways == 60
    with pytest.raises(ValueError, match="'train_ways' must be >= 2"):
        RunConfig(benchmark="omniglot", train_ways=1)
    with pytest.raises(ValueError, match="'train_shots' must be >= 1"):
        RunConfig(benchmark="omniglot", train_shots=0)
    with pytest.raises(ValueError, match="regression tasks have no classes"):
        RunConfig(benchmark="sinusoid", train_ways=5)


def omniglot_config(tmp_path, data, **changes) -> RunConfig:
    values = dict(benchmark="omniglot", benchmark_options={"data": data}, ways=5, shots=1, queries=2,
                  backbone_options={"hidden": 4}, meta_batch=2, steps=2, eval_every=2, eval_episodes=2,
                  test_episodes=3, checkpoint_every=2, run_dir=str(tmp_path / "run"), plot=False, threads=1)
    values.update(changes)
    return RunConfig(**values).resolved()


SMALL_SNAIL = {"filters": 4, "attention_sizes": [[4, 4], [4, 4], [4, 4]]}


def test_learners_that_cannot_train_on_other_ways_say_so_before_training(tmp_path, tiny_omniglot):
    maml = omniglot_config(tmp_path, tiny_omniglot, algo="maml", train_ways=10)
    with pytest.raises(ValueError, match=r"^config key 'train_ways' \(10\) must equal 'ways' \(5\) for maml: "
                       r"its model ends in a head whose rows are learned per label; drop train_ways, set "
                       r"algo_options.head_init=shared, zero or prototypes \(the MAML family\) or use a "
                       r"metric learner such as protonet$"):
        build_learner(maml, build_benchmark(maml))
    snail = omniglot_config(tmp_path, tiny_omniglot, algo="snail", train_ways=10, algo_options=SMALL_SNAIL)
    # subtasks of larger episodes: the plugin learner (tests/experiments/test_snail_variants.py)
    with pytest.raises(ValueError, match=r"cannot train on 10-way episodes.*'snail-variants'"):
        train(snail)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    same = omniglot_config(tmp_path, tiny_omniglot, algo="maml", train_ways=5)
    build_learner(same, build_benchmark(same))  # equal ways: fine for any learner


@pytest.mark.parametrize("head_init", ["shared", "zero", "prototypes"])
def test_maml_whose_classes_share_a_head_row_trains_on_more_ways(tmp_path, tiny_omniglot, head_init):
    """A shared, zero or prototype head starts every class the same way: the model gets ``train_ways``
    outputs, training episodes use all of them, test episodes the first ``ways``."""
    config = omniglot_config(tmp_path, tiny_omniglot, algo="maml", train_ways=10,
                             algo_options={"head_init": head_init})
    learner = build_learner(config, build_benchmark(config))
    assert learner.head_rows_shared and learner.model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    result = train(config, quiet=True)
    assert result.steps == 2 and result.test is not None and len(result.test.per_episode) == 3


@pytest.mark.parametrize("algo, options", [("protonet", "{}"), ("maml", '{"head_init": "shared"}')])
def test_trains_on_larger_episodes_and_tests_on_ways(tmp_path, algo, options):  # snail-variants: experiments/
    from test_omniglot import _fake_archive

    _fake_archive(tmp_path / "images_background.zip", alphabets=2, characters=4, drawings=3)
    _fake_archive(tmp_path / "images_evaluation.zip", "images_evaluation", alphabets=2, characters=3,
                  drawings=3)
    run = tmp_path / "run"
    assert cli_main(["train", "omniglot", "--root", str(tmp_path), "--algo", algo, "--ways", "5", "--shots",
                     "1", "--queries", "1", "--train-ways", "12", "--steps", "2", "--test-episodes", "3",
                     "--set", f"algo_options={options}", "--set", "backbone_options.hidden=4", "--run-dir",
                     str(run), "--quiet"]) == 0
    saved = load_run_config(run)
    assert (saved.train_ways, saved.ways) == (12, 5)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["test"]["n"] == 3
    # more ways than the 5 of the run: any learner for protonet, up to the head's 12 outputs for shared MAML
    assert cli_main(["eval", str(run), "--ways", "6", "--episodes", "2", "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["max_ways"] == (12 if algo == "maml" else None)


def test_cli_train_flags_set_the_training_shape():
    args = build_parser().parse_args(["train", "omniglot", "--ways", "5", "--train-ways", "60",
                                      "--train-shots", "2", "--train-queries", "3"])
    config = _train_config(args)
    assert (config.ways, config.train_ways, config.train_shots, config.train_queries) == (5, 60, 2, 3)
    assert _train_config(build_parser().parse_args(["train", "omniglot"])).train_ways is None


def test_in_memory_omniglot_refuses_another_image_size(tiny_omniglot):
    with pytest.raises(ValueError) as info:
        make_benchmark("omniglot", data=tiny_omniglot, ways=5, shots=1, queries=15, image_size=42)
    assert str(info.value) == ("the Omniglot data passed in memory has 28-pixel images but image_size is 42; "
                               "set image_size to 28 or pass data of 42 pixels")
