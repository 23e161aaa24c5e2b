"""``experiments/sinusoid/sinusoid_maml.py``: the MAML paper's sinusoid setting, shortened."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("name,threshold",
                         [("maml", 3.0), pytest.param("meta-sgd", 2.5, marks=pytest.mark.slow)])
def test_shortened_sinusoid_reproduction(experiment, tmp_path, name, threshold):
    """The paper's setting (alpha 0.01, 1 step, meta-batch 25, Adam 1e-3, K=10) for 200 of its 70k meta-steps,
    through the library's trainer: 10-shot MSE after one step on 100 fixed tasks is already below a
    conservative bound (zero predictor: about 4.2; full run: the script itself)."""
    bench = experiment("sinusoid", "sinusoid_maml")
    config = bench.run_config(name, tmp_path / name, eval_every=200)
    result = bench.meta_train(config, 200)
    assert result.steps == 200
    learner = bench.trained_learner(result)
    mse = bench.evaluate_sinusoid(learner, shots=10, inner_steps=1, tasks=100)
    assert mse["mse"] < threshold, mse


def test_script_resumes_its_run_from_one_checkpoint_to_the_next(experiment, tmp_path, capsys):
    bench = experiment("sinusoid", "sinusoid_maml")
    out = tmp_path / "report.json"
    report = bench.main(["--learners", "maml", "--steps", "4", "--checkpoints", "2", "--eval-tasks", "3",
                         "--runs", str(tmp_path / "runs"), "--out", str(out)])
    rows = report["results"]["maml"]
    assert [row["meta_steps"] for row in rows] == [2, 4]
    assert set(rows[0]) >= {"k5_steps1", "k20_steps10", "train_seconds"}
    assert rows[1]["train_seconds"] >= rows[0]["train_seconds"]
    assert json.loads(out.read_text())["runs"]["maml"] == str(tmp_path / "runs" / "maml")
    assert "published 5-shot" in capsys.readouterr().out
