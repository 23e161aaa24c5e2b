"""The ``attnmeta`` command: help texts, train -> results table, resume, eval, errors as one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnmeta.cli import build_parser, main

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "custom_learner.py")
SMALL = [
    "--import",
    EXAMPLE,
    "--algo",
    "ridge",
    "--steps",
    "20",
    "--meta-batch",
    "4",
    "--eval-every",
    "10",
    "--eval-episodes",
    "10",
    "--test-episodes",
    "30",
    "--threads",
    "1",
    "--set",
    "plot=false",
    "--quiet",
]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], "    compare "),
        (["train"], "--resume RUN_DIR"),
        (["eval"], "--episodes"),
        (["plot"], "RUN_DIR"),
        (["predict"], "--support"),
    ],
)
def test_every_command_documents_itself(capsys, command, expected):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert expected in out
    if not command:
        assert all(f"    {name} " in out for name in ("train", "eval", "plot", "predict", "compare"))


def test_train_prints_results_table_then_eval_other_shots(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", *SMALL, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("benchmark"))
    assert header.split() == [
        "benchmark",
        "algo",
        "ways",
        "shots",
        "episodes",
        "metric",
        "mean",
        "+/-",
        "95%",
        "CI",
    ]
    row = next(line for line in out.splitlines() if line.startswith("sinusoid"))
    assert row.split()[:6] == ["sinusoid", "ridge", "-", "10", "30", "mse"]
    assert json.loads((run / "summary.json").read_text())["test"]["n"] == 30

    assert main(["eval", str(run), "--shots", "5", "--episodes", "12", "--quiet"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sinusoid"))
    assert row.split()[:6] == ["sinusoid", "ridge", "-", "5", "12", "mse"]
    result = json.loads((run / "eval-0w5s-12ep-seed0.json").read_text())
    assert result["shots"] == 5 and len(result["per_episode"]) == 12
    assert main(["eval", str(run), "--beam", "2", "--hallucinate", "5"]) == 2
    assert capsys.readouterr().err.endswith(
        f"--beam, --hallucinate apply only to sequence-to-sequence runs; {run} is a regression run\n")

    assert main(["eval", str(run), "--inner-steps", "2"]) == 2
    assert capsys.readouterr().err.endswith(
        "--inner-steps applies to learners with an inner loop (the MAML family); ridge adapts without one\n")

    # Resume of a finished run is a no-op that still reports; extra settings with --resume are an error.
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--ways", "3"]) == 2
    assert "--resume continues the run as it was defined; it cannot change ways" in capsys.readouterr().err


def test_config_file_flags_and_set_precedence(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"benchmark: sinusoid\nalgo: ridge\nimports: [{EXAMPLE}]\nsteps: 999\nlr: 0.5\n")
    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(config),
        "--steps",
        "3",
        "--set",
        "lr=0.002",
        "--set",
        "eval_every=3",
        "--set",
        "test_episodes=3",
        "--set",
        "plot=false",
        "--run-dir",
        str(run),
        "--quiet",
    ]
    assert main(args) == 0
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["steps"], saved["lr"], saved["algo"], saved["shots"]) == (3, 0.002, "ridge", 10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "sinusoid", "--set", "stepz=3"], "unknown config key 'stepz' (did you mean 'steps'?)"),
        (["train", "sinusoid", "--optimizer", "lamb"], "'optimizer' must be one of adam, adamw, sgd"),
        (["train", "sinusoid", "--algo", "nope"], "unknown learner 'nope'; choose one of:"),
        (["train", "--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["eval", "no/such/run"], "run folder 'no/such/run' does not exist"),
        (["plot", "no/such/run"], "has no metrics.csv"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


def test_parser_maps_every_train_flag_to_a_config_key():
    from attnmeta.cli import TRAIN_FLAGS
    from attnmeta.train.config import RunConfig

    args = build_parser().parse_args(["train"])
    known = set(RunConfig().to_dict())
    for flag, key in TRAIN_FLAGS.items():
        assert hasattr(args, flag) and key.split(".")[0] in known


def test_main_job_defaults_train_maml_on_sinusoid(tmp_path, capsys):
    """`attnmeta train sinusoid` (shortened): MAML with the sinusoid preset, results table at the end."""
    run = tmp_path / "main"
    args = ["train", "sinusoid", "--steps", "6", "--eval-episodes", "5", "--test-episodes", "8"]
    assert main([*args, "--run-dir", str(run), "--quiet", "--set", "plot=false"]) == 0
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["algo"], saved["meta_batch"], saved["lr"], saved["schedule"], saved["threads"]) == (
        "maml",
        10,
        3e-3,
        "cosine",
        1,
    )
    assert saved["algo_options"] == {"eval_inner_steps": 10} and saved["steps"] == 6
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sinusoid"))
    assert row.split()[:6] == ["sinusoid", "maml", "-", "10", "8", "mse"]


def test_compare_delegates_to_attnmeta_compare(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0
    assert "--algos" in capsys.readouterr().out


def test_eval_of_a_maml_run_with_other_inner_steps_writes_its_own_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--algo", "maml", "--steps", "3", "--eval-every", "3",
                 "--eval-episodes", "5", "--test-episodes", "10", "--threads", "1", "--set", "plot=false",
                 "--quiet", "--run-dir", str(run)]) == 0
    means = {}
    for steps in (0, 3):
        assert main(["eval", str(run), "--inner-steps", str(steps), "--episodes", "10", "--quiet"]) == 0
        result = json.loads((run / f"eval-0w10s-10ep-seed0-inner{steps}.json").read_text())
        assert result["inner_steps"] == steps
        means[steps] = result["mean"]
    assert means[3] < means[0]  # adapting to the support points lowers the query MSE
    capsys.readouterr()
    assert main(["eval", str(run), "--inner-steps", "-1"]) == 2
    assert capsys.readouterr().err.endswith("--inner-steps must be >= 0, got -1\n")
