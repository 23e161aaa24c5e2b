"""``experiments/rl/rl_navigation.py`` and ``rl_halfcheetah.py``: thin drivers of the library's trainer.

Each test trains tiny runs (2 tasks x 2 episodes, 1-2 iterations) into a temporary folder with the script's
``train`` stage, then runs its ``evaluate`` stage on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnmeta.errors import UserError
from attnmeta.train.rl_run import evaluate_rl_run
from attnmeta.train.run_folder import load_run_config

TINY = ["--iterations", "2", "--meta-batch", "2", "--episodes", "2", "--val-tasks", "2", "--test-tasks", "2",
        "--threads", "1"]


def test_budget_keeps_the_cpu_cap(experiment):
    driver = experiment("rl", "rl_navigation").rl_driver
    assert driver.budget(5.0, 9.0)[:2] == (5.0, "cpu") and "keeping the CPU cap" in driver.budget(5.0, 9.0)[2]
    assert driver.budget(None, 9.0) == (9.0, "wall", None)
    assert driver.budget(None, None, default_cpu_min=30.0) == (30.0, "cpu", None)
    assert driver.budget(None, None) == (None, "cpu", None)


def test_navigation_train_then_evaluate(experiment, tmp_path, capsys):
    script = experiment("rl", "rl_navigation")
    runs, results = tmp_path / "runs", tmp_path / "results"
    common = [*TINY, "--runs", str(runs)]
    maml = script.main(["train", "--algo", "maml", "--inner-steps", "2", "--max-cpu-min", "5",
                        "--max-wall-min", "9", *common])
    assert maml.steps == 2 and maml.run_dir == runs / "navigation-maml"
    config = load_run_config(maml.run_dir)
    assert (config.algo, config.budget_minutes, config.budget_clock) == ("maml-rl", 5.0, "cpu")
    assert config.algo_options == {"inner_steps": 2, "inner_lr": 0.1, "episodes": 2}
    assert "keeping the CPU cap" in capsys.readouterr().out
    # the joint baseline trained with other settings: evaluated with MAML's inner lr and episodes all the same
    pretrained = script.main(["train", "--algo", "pretrained", "--inner-lr", "0.3", *common, "--episodes",
                              "3"])
    joint = load_run_config(pretrained.run_dir)
    assert joint.algo_options == {"inner_steps": 0, "inner_lr": 0.3, "episodes": 3}
    assert script.rl_driver.eval_options(config, joint) == {"inner_steps": 0, "inner_lr": 0.1,
                                                            "episodes": 2}
    script.main(["train", "--algo", "maml", "--inner-steps", "1", "--tag", "_1step", *common, "--iterations",
                 "1"])

    out = script.main(["evaluate", "--runs", str(runs), "--results", str(results), "--test-tasks", "3",
                       "--steps", "2", "--baseline-lrs", "0.2"])
    printed = capsys.readouterr().out
    assert [c["name"] for c in out["curves"]] == ["maml", "pretrained", "maml_1step", "random init"]
    assert all(c["steps"] == [0, 1, 2] and len(c["per_task"][0]) == 3 for c in out["curves"])
    assert (out["inner_lr"], out["episodes"]) == (0.1, 2)
    assert set(out["maml_beats_with_non_overlapping_ci"]) == {"pretrained", "random init"}
    assert [c["name"] for c in out["baseline_step_size_check"]] == ["pretrained lr 0.2", "random init lr 0.2"]
    assert out["training"]["maml"]["iterations"] == 2 and len(out["training"]["maml"]["train_curve"]) == 2
    assert out["training"]["pretrained"]["inner_steps"] == 0
    assert out["training"]["maml_1step"]["iterations"] == 1
    assert "MAML above baseline with non-overlapping 95% CI" in printed and "random init" in printed
    saved = json.loads((results / "rl_navigation_trainer.json").read_text())
    assert saved["published_maml_after_adaptation"] == "-20.3 +/- 3.2" and len(saved["curves"]) == 4
    assert (results / "rl_navigation_trainer_adaptation.png").is_file()
    assert (results / "rl_navigation_trainer_training.png").is_file()
    # MAML's curve is what `attnmeta eval` measures on the run's best checkpoint (same tasks, same seed)
    report = evaluate_rl_run(maml.run_dir, config, tasks=3, seed=0, adapt_steps=2)
    assert report.curve.per_task == out["curves"][0]["per_task"]


def test_navigation_evaluate_names_the_missing_run(experiment, tmp_path):
    script = experiment("rl", "rl_navigation")
    with pytest.raises(UserError, match="navigation-maml.*train"):
        script.main(["evaluate", "--runs", str(tmp_path), "--results", str(tmp_path), "--baseline-lrs"])


def test_halfcheetah_train_then_evaluate(experiment, tmp_path):
    pytest.importorskip("gymnasium", reason="HalfCheetah needs the rl extra (gymnasium)")
    pytest.importorskip("mujoco", reason="HalfCheetah needs the rl extra (mujoco)")
    script = experiment("rl", "rl_halfcheetah")
    runs, results = tmp_path / "runs", tmp_path / "results"
    common = ["--kind", "velocity", "--tag", "_tiny", *TINY, "--iterations", "1", "--episodes", "1",
              "--runs", str(runs)]
    for algo in ("maml", "pretrained"):
        result = script.main(["train", "--algo", algo, *common])
        assert result.steps == 1 and result.run_dir == runs / f"halfcheetah-vel-{algo}_tiny"
        assert load_run_config(result.run_dir).budget_minutes is None
    out = script.main(["evaluate", "--kind", "velocity", "--tag", "_tiny", "--runs", str(runs), "--results",
                       str(results), "--test-tasks", "2", "--steps", "1"])
    assert [c["name"] for c in out["curves"]] == ["maml", "pretrained", "random init"]
    assert out["training"]["maml"]["env_steps"] == 2 * 2 * 1 * 200 * 1
    assert out["published_maml_after_adaptation"] == "-139.0 +/- 18.9"
    assert (results / "rl_halfcheetah_velocity_tiny_trainer.json").is_file()
    assert (results / "rl_halfcheetah_velocity_tiny_trainer_training.png").is_file()


def test_the_scripts_keep_no_training_loop():
    """The trainer runs the iterations: no RL script samples meta-batches or steps the learner itself."""
    folder = Path(__file__).resolve().parents[2] / "experiments" / "rl"
    for name in ("rl_navigation.py", "rl_halfcheetah.py", "rl_driver.py"):
        code = (folder / name).read_text()
        assert "train_iteration" not in code and "sample_batch" not in code, name
