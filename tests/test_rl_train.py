"""Meta-RL through the one trainer and the CLI: train, resume exactly, eval, plot, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from attnmeta.cli import main
from attnmeta.rl import registry
from attnmeta.train import config as config_module
from attnmeta.train.config import RunConfig
from attnmeta.train.metrics_log import read_metrics
from attnmeta.train.trainer import final_weights, train

#: A tiny navigation run: 2 tasks x 2 episodes per iteration, 2 fixed tasks for validation and test.
TINY = ["--meta-batch", "2", "--set", "algo_options.episodes=2", "--eval-episodes", "2",
        "--test-episodes", "2", "--set", "eval_every=2", "--set", "checkpoint_every=2", "--threads", "1",
        "--quiet"]


def tiny_config(run_dir: Path, steps: int, **changes) -> RunConfig:
    values = dict(benchmark="navigation", algo="maml-rl", algo_options={"episodes": 2}, meta_batch=2,
                  steps=steps, eval_every=2, eval_episodes=2, test_episodes=2, checkpoint_every=2, threads=1,
                  plot=False, run_dir=str(run_dir))
    return RunConfig(**{**values, **changes})


def error_of(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, "".join(line for line in err.splitlines(keepends=True) if line.startswith("attnmeta "))


def test_names_agree_with_the_rl_registry():
    assert config_module.RL_BENCHMARKS == tuple(registry.RL_BENCHMARKS)
    assert config_module.RL_ALGOS == tuple(registry.RL_LEARNERS)


def test_cli_trains_evaluates_and_plots_a_navigation_run(tmp_path, capsys):
    run = tmp_path / "nav"
    assert main(["train", "navigation", "--steps", "4", "--run-dir", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "navigation  maml-rl" in out and "return" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algo"] == "maml-rl" and summary["steps"] == 4  # maml-rl is the default learner
    assert summary["test"]["metric"] == "return" and summary["test"]["n"] == 2
    assert summary["adaptation"]["steps"] == [0, 1, 2, 3]
    assert summary["adaptation"]["mean"][1] == pytest.approx(summary["test"]["mean"])
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[5] == "return" and sum(",val," in r for r in rows) == 2
    assert json.loads((run / "run.json").read_text())["task_type"] == "rl"

    assert main(["eval", str(run), "--episodes", "3", "--adapt-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "mean return +/- 95% CI  (over 3 tasks)" in out and out.count("+/-") == 4
    written = json.loads((run / "eval-rl-3tasks-2steps-seed0.json").read_text())
    assert len(written["adaptation"]["per_task"]) == 3 and len(written["adaptation"]["per_task"][0]) == 3
    if importlib.util.find_spec("matplotlib"):
        assert main(["plot", str(run), "-o", str(tmp_path / "curves.png")]) == 0
        assert (tmp_path / "curves.png").stat().st_size > 0 and (run / "adaptation.png").is_file()


def test_a_resumed_rl_run_ends_with_bit_identical_weights(tmp_path):
    straight = train(tiny_config(tmp_path / "straight", 4), quiet=True)
    train(tiny_config(tmp_path / "split", 2), quiet=True)
    resumed = train(tiny_config(tmp_path / "split", 4), quiet=True, resume=True)
    a, b = final_weights(straight.run_dir), final_weights(resumed.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = "seconds_per_task"
    assert {k: v for k, v in resumed.summary["test"].items() if k != timing} == {
        k: v for k, v in straight.summary["test"].items() if k != timing}


def test_training_improves_the_return_after_adaptation(tmp_path):
    """A few TRPO iterations on navigation already move the adapted return up on the fixed tasks."""
    result = train(tiny_config(tmp_path / "learn", 12, meta_batch=10, eval_episodes=10), quiet=True,
                   evaluate_test=False)
    history = result.summary["best"]
    first = json.loads((tmp_path / "learn" / "checkpoints" / "best.json").read_text())
    assert history["step"] > 2 and first["value"] == history["value"]
    rows = read_metrics(tmp_path / "learn" / "metrics.csv")
    val = [float(r["return"]) for r in rows if r["phase"] == "val"]
    assert val[-1] > val[0] + 5, val


def test_snail_rl_trains_in_the_same_loop(tmp_path):
    config = tiny_config(tmp_path / "snail", 1, algo="snail-rl", meta_batch=1, eval_every=1, eval_episodes=1,
                         test_episodes=1, algo_options={"trials": 1, "epochs": 1})
    result = train(config, quiet=True)
    assert result.summary["test"]["metric"] == "return"
    assert result.summary["adaptation"]["steps"] == [0, 1]  # the two episodes of a trial


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "navigation", "--algo", "maml"],
         "attnmeta train: error: benchmark 'navigation' is meta-RL: choose --algo maml-rl or snail-rl (not "
         "'maml')\n"),
        (["train", "sinusoid", "--algo", "snail-rl"],
         "attnmeta train: error: learner 'snail-rl' is for the meta-RL benchmarks (navigation, "
         "halfcheetah-dir, halfcheetah-vel), not 'sinusoid'; choose another --algo or benchmark\n"),
        (["train", "navigation", "--shift", "2"],
         "attnmeta train: error: config key 'augment' is for classification and regression runs; meta-RL "
         "benchmark 'navigation' does not use it: drop it\n"),
        (["train", "navigation", "--set", "algo_options.inner_rate=0.1"],
         "attnmeta train: error: config key 'algo_options': maml-rl takes no option 'inner_rate'; valid: "
         + ", ".join(registry.valid_rl_options("maml-rl")) + "\n"),
    ],
)
def test_bad_rl_configs_are_one_line(args, message, tmp_path, capsys):
    assert error_of([*args, "--run-dir", str(tmp_path / "r"), "--quiet"], capsys) == (2, message)
    assert not (tmp_path / "r").exists()


def test_eval_and_predict_of_an_rl_run_explain_what_applies(tmp_path, capsys):
    run = tmp_path / "nav"
    assert main(["train", "navigation", "--steps", "2", "--run-dir", str(run), *TINY]) == 0
    capsys.readouterr()
    assert error_of(["eval", str(run), "--ways", "5"], capsys) == (
        2, "attnmeta eval: error: --ways do not apply to meta-RL runs; use --episodes (test tasks), "
           "--adapt-steps and --seed\n")
    code, err = error_of(["predict", str(run), "--support", "s", "--query", "q"], capsys)
    assert code == 2 and err.startswith(f"attnmeta predict: error: {str(run)!r} is a meta-RL run (maml-rl on "
                                        "navigation); the predictor serves classification and regression")


def test_halfcheetah_without_mujoco_is_one_line(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mujoco" else real(name, *a))
    args = ["train", "halfcheetah-dir", "--run-dir", str(tmp_path / "c"), "--quiet"]
    assert error_of(args, capsys) == (
        2, "attnmeta train: error: benchmark 'halfcheetah-dir' simulates HalfCheetah with MuJoCo, which is "
           "not installed: pip install 'attnmeta[rl]' (gymnasium and mujoco)\n")


def test_halfcheetah_run_keeps_mujoco_quiet(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gymnasium", reason="HalfCheetah needs the rl extra: pip install -e '.[rl]'")
    pytest.importorskip("mujoco", reason="HalfCheetah needs the rl extra: pip install -e '.[rl]'")
    monkeypatch.chdir(tmp_path)
    args = ["train", "halfcheetah-vel", "--steps", "1", "--meta-batch", "1", "--set",
            "algo_options.episodes=1", "--eval-episodes", "1", "--test-episodes", "1", "--set",
            "eval_every=1", "--run-dir", "c", "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "settotalmass" not in err and "MuJoCo" not in err
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["test"]["n"] == 1
