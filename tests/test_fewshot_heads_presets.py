"""Issue 35's learners (relationnet, simpleshot, r2d2, metaoptnet-svm) through the CLI's Omniglot presets:
each trains two steps on synthetic Omniglot tensors and writes a checkpoint (SimpleShot's base mean in it)
that the predictor loads to classify new drawings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnmeta
from attnmeta.cli import _train_config, build_parser
from attnmeta.data.omniglot import Omniglot
from attnmeta.train import train
from attnmeta.train.checkpoint import CheckpointManager, load_checkpoint
from attnmeta.train.presets import OMNIGLOT, preset
from test_predictor import _drawings

LEARNERS = ("relationnet", "simpleshot", "r2d2", "metaoptnet-svm")


@pytest.fixture(scope="module")
def tiny_omniglot() -> tuple[Omniglot, Omniglot]:
    from synthetic import synthetic_omniglot

    return tuple(Omniglot.from_tensors(**synthetic_omniglot(characters, seed))  # type: ignore[return-value]
                 for characters, seed in ((40, 0), (10, 1)))


@pytest.mark.parametrize("algo", LEARNERS)
def test_omniglot_preset_trains_and_the_predictor_loads_it(algo, tmp_path, tiny_omniglot):
    assert algo in OMNIGLOT
    config = _train_config(build_parser().parse_args(["train", "omniglot", "--algo", algo, "--steps", "2"]))
    small = {"benchmark_options": {"data": tiny_omniglot}, "eval_episodes": 2, "test_episodes": 3,
             "run_dir": str(tmp_path / algo), "plot": False, "backbone_options.hidden": 8,
             "train_ways": min(config.train_ways or 5, 20)}
    result = train(config.with_overrides(small), quiet=True, print_fn=lambda _: None)
    assert result.steps == 2 and result.test is not None and result.test.summary.n == 3
    recorded = {k: v for k, v in result.config.algo_options.items() if k != "num_classes"}
    assert recorded == {**preset("omniglot", algo).get("algo_options", {})}
    if algo == "simpleshot":  # the base mean of the two training batches is in the checkpoint
        assert result.config.algo_options["num_classes"] > 0  # from the data, recorded for the predictor
        manager = CheckpointManager(tmp_path / algo / "checkpoints")
        weights, _ = load_checkpoint(manager.latest_valid())
        assert int(weights["base_batches"]) == 2 and float(weights["base_mean"].abs().sum()) > 0
    clf = attnmeta.load(tmp_path / algo, checkpoint="latest")
    images = _drawings(6, seed=2)
    clf.fit(images[:3], ["a", "b", "c"])
    proba = clf.predict_proba(images)
    assert proba.shape == (6, 3) and np.allclose(proba.sum(1), 1.0)
    assert bool(torch.isfinite(torch.tensor(proba)).all())
