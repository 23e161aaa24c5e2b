"""Run configs: files + overrides, validated up front with errors naming the key and allowed values."""

from __future__ import annotations

import json

import pytest

from attnmeta.train.config import RunConfig, load_config_file, parse_overrides


def test_yaml_file_plus_overrides_resolve(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("benchmark: omniglot\nalgo: protonet\nways: 20\nalgo_options:\n  distance: euclidean\n")
    config = RunConfig.from_dict(load_config_file(path))
    config = config.with_overrides(parse_overrides(["lr=0.01", "algo_options.scale=2", "steps=7"]))
    assert (config.benchmark, config.algo, config.ways, config.steps) == ("omniglot", "protonet", 20, 7)
    assert config.lr == 0.01 and isinstance(config.lr, float)
    assert config.algo_options == {"distance": "euclidean", "scale": 2}
    resolved = config.resolved()
    assert (resolved.shots, resolved.queries) == (1, 15)
    assert resolved.run_dir.endswith("omniglot-protonet-20w1s")


def test_json_file_and_regression_defaults(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmark": "sinusoid", "steps": 3}))
    resolved = RunConfig.from_dict(load_config_file(path)).resolved()
    assert (resolved.ways, resolved.shots, resolved.queries, resolved.task_type) == (
        None,
        10,
        10,
        "regression",
    )


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ValueError, match=r"unknown config key 'meta_batc' \(did you mean 'meta_batch'\?\)"):
        RunConfig.from_dict({"meta_batc": 4})
    with pytest.raises(ValueError, match=r"unknown config key 'lrate'.*allowed keys: benchmark, root"):
        RunConfig().with_overrides({"lrate": 0.1})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optimizer", "lamb", r"'optimizer' must be one of adam, adamw, sgd; got 'lamb'"),
        ("schedule", "linear", r"'schedule' must be one of constant, cosine, step"),
        ("dtype", "float16", r"'dtype' must be one of float32, float64"),
        ("device", "tpu", r"'device' must be one of auto, cpu, cuda"),
        ("steps", 0, r"'steps' must be >= 1, got 0"),
        ("ways", 1, r"'ways' must be >= 2"),
        ("lr", -1.0, r"'lr' must be > 0"),
        ("min_lr_ratio", 2.0, r"'min_lr_ratio' must be in \[0, 1\]"),
        ("algo_options", {"ways": 5, "shots": 1}, r"'algo_options' may not set \['ways'\]: the learner gets"),
    ],
)
def test_bad_values_name_key_and_allowed(key, value, message):
    with pytest.raises(ValueError, match=message):
        RunConfig().with_overrides({key: value})


def test_wrong_types_are_type_errors():
    with pytest.raises(TypeError, match=r"config key 'steps' must be int, got '10' \(str\)"):
        RunConfig(steps="10")
    with pytest.raises(TypeError, match=r"config key 'meta_batch' must be int, got True"):
        RunConfig(meta_batch=True)
    with pytest.raises(TypeError, match=r"'algo_options' must be dict"):
        RunConfig(algo_options=[1])
    with pytest.raises(TypeError, match=r"'imports' must be a list of str"):
        RunConfig(imports=[3])


def test_override_parsing_and_errors():
    assert parse_overrides(["a=1", "b=0.5", "c=true", "d=[1, 2]", "e=adam", "f="]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": [1, 2],
        "e": "adam",
        "f": None,
    }
    with pytest.raises(ValueError, match=r"override 'lr' must look like key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ValueError, match=r"config key 'lr' is not a mapping"):
        RunConfig().with_overrides({"lr.x": 1})


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ValueError, match="is not valid yaml"):
        load_config_file(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config_file(listing)
