"""Presets of ``attnmeta train BENCHMARK --algo ALGO``: every classification learner's Omniglot preset builds
and trains (a few steps on synthetic Omniglot tensors), user settings drop the preset keys they contradict
(``--steps`` drops the time budget), a recipe replaces the preset, ``--help`` lists them, and the transfer
baselines get ``num_classes`` from the training data."""

from __future__ import annotations

import pytest

from attnmeta.cli import _train_config, build_parser
from attnmeta.data.omniglot import Omniglot
from attnmeta.train import RunConfig, recipes, train
from attnmeta.train.presets import OMNIGLOT, preset, preset_lines
from attnmeta.train.trainer import build_benchmark, build_learner

CLASSIFICATION_LEARNERS = ("maml", "fomaml", "meta-sgd", "anil", "maml++", "attention-maml", "protonet",
                           "matching", "snail", "feat", "meta-lstm", "meta-lstm-attention", "transfer",
                           "baseline++")


@pytest.fixture(scope="module")
def tiny_omniglot() -> tuple[Omniglot, Omniglot]:
    from synthetic import synthetic_omniglot

    return tuple(Omniglot.from_tensors(**synthetic_omniglot(characters, seed))  # type: ignore[return-value]
                 for characters, seed in ((40, 0), (10, 1)))


def cli_config(*argv: str) -> RunConfig:
    return _train_config(build_parser().parse_args(["train", *argv]))


def test_every_classification_learner_has_an_omniglot_preset():
    assert set(CLASSIFICATION_LEARNERS) <= set(OMNIGLOT)
    for algo in CLASSIFICATION_LEARNERS:
        config = cli_config("omniglot", "--algo", algo)
        assert (config.budget_minutes, config.budget_clock, config.steps) == (3, "wall", 100000)
        assert config.test_episodes == 600 and config.threads == 1 and config.schedule == "cosine"
        config.resolved()  # the learner takes the preset's options


@pytest.mark.parametrize("algo", CLASSIFICATION_LEARNERS)
def test_omniglot_preset_trains_two_steps(algo, tmp_path, tiny_omniglot):
    config = cli_config("omniglot", "--algo", algo, "--steps", "2")
    small = {"benchmark_options": {"data": tiny_omniglot}, "eval_episodes": 2, "test_episodes": 3,
             "run_dir": str(tmp_path / algo), "plot": False, "backbone_options.hidden": 8,
             "train_ways": min(config.train_ways or 5, 30)}
    result = train(config.with_overrides(small), quiet=True, print_fn=lambda _: None)
    assert result.steps == 2 and result.test is not None and result.test.summary.n == 3
    # the run records the options it read from the data (num_classes of transfer, shots of SNAIL) too
    from_data = {"num_classes", "shots"} - set(preset("omniglot", algo).get("algo_options", {}))
    recorded = {k: v for k, v in result.config.algo_options.items() if k not in from_data}
    assert recorded == {**preset("omniglot", algo).get("algo_options", {})}


def test_user_settings_drop_the_preset_keys_they_contradict(tmp_path):
    for steps in (["--steps", "7"], ["--set", "steps=7"]):
        config = cli_config("omniglot", "--algo", "protonet", *steps)
        assert (config.steps, config.budget_minutes, config.budget_clock) == (7, None, "cpu")
    config_file = tmp_path / "mine.yaml"
    config_file.write_text("steps: 7\n")
    assert cli_config("omniglot", "--algo", "maml", "--config", str(config_file)).budget_minutes is None
    config = cli_config("omniglot", "--algo", "maml", "--budget", "2m")  # the user's budget: CPU unless said
    assert (config.steps, config.budget_minutes, config.budget_clock) == (100000, 2.0, "cpu")
    config = cli_config("omniglot", "--algo", "protonet", "--shots", "5", "--set", "algo_options.scale=5")
    assert (config.shots, config.train_shots, config.train_ways, config.train_queries) == (5, None, 150, 3)
    assert config.algo_options == {"distance": "l2", "scale": 5}  # support_splits fits the preset's shape
    config = cli_config("omniglot", "--algo", "protonet", "--queries", "1")
    assert "support_splits" not in config.algo_options and config.train_queries is None
    plain = cli_config("omniglot", "--algo", "protonet")
    assert plain.algo_options == {"distance": "l2", "support_splits": 4}
    assert config.backbone_options == {"norm": "fused", "pool_last": False}
    assert cli_config("omniglot", "--algo", "protonet", "--backbone", "resnet12").backbone_options == {}
    assert cli_config("sinusoid").steps == 1200  # the regression preset keeps its steps


def test_a_recipe_replaces_the_preset():
    for name in recipes.names():
        config = cli_config("--recipe", name)
        assert config == RunConfig.from_dict({**recipes.load(name).config, "recipe": name})


def test_help_shows_every_learner_preset():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "setting steps drops a preset's budget" in text
    lines = [line for line in preset_lines() if line.startswith("omniglot with ")]
    listed = {algo for line in lines for algo in line.split(":")[0][len("omniglot with "):].split(", ")}
    assert listed == set(OMNIGLOT)
    assert "omniglot with protonet: train_ways=150" in text


def test_transfer_gets_num_classes_from_the_training_data(tiny_omniglot):
    base = dict(benchmark="omniglot", ways=5, shots=1, queries=2, backbone_options={"hidden": 4}, steps=1)
    for algo in ("transfer", "baseline++"):
        config = RunConfig(**base, algo=algo, benchmark_options={"data": tiny_omniglot}).resolved()
        bench = build_benchmark(config)
        assert build_learner(config, bench).num_classes == bench.train.num_classes == 160  # 40 x 4 rotations
        given = config.with_overrides({"algo_options.num_classes": 500})
        assert build_learner(given, bench).num_classes == 500
    # a split whose training class ids are not 0..n-1: the classifier covers the largest id
    config = RunConfig(**base, algo="transfer", split="maml",
                       benchmark_options={"data": tiny_omniglot, "train_characters": 30}).resolved()
    bench = build_benchmark(config)
    learner = build_learner(config, bench)
    assert learner.num_classes == int(bench.train.classes.max()) + 1 > bench.train.num_classes
    assert learner.meta_loss(bench.train.sample_batch(2)).loss.isfinite()
