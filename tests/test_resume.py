"""Exact resume: a run SIGKILLed at arbitrary moments and resumed ends bit-identical to an uninterrupted run.

The killed runs are real ``python -m attnmeta train`` subprocesses; kills land mid-training and, when the
poll catches one, mid-checkpoint-write (a ``.tmp-*`` folder present).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from attnmeta.train import CheckpointManager, RunConfig, train
from attnmeta.train.trainer import final_weights, read_metrics

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "custom_learner.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _config(run_dir: Path, steps: int) -> dict:
    return dict(
        benchmark="sinusoid",
        algo="ridge",
        imports=[EXAMPLE],
        steps=steps,
        meta_batch=4,
        lr=3e-3,
        schedule="cosine",
        eval_every=7,
        eval_episodes=5,
        test_episodes=5,
        checkpoint_every=1,
        keep_last=2,
        run_dir=str(run_dir),
        plot=False,
        threads=1,
    )


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "attnmeta", "train", *args, "--quiet"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_when(
    process: subprocess.Popen, checkpoints: Path, *, min_step: int, mid_write: bool, timeout: float = 120
) -> None:
    """SIGKILL once a checkpoint >= ``min_step`` exists (and, if asked, while a write is in progress)."""
    manager = CheckpointManager(checkpoints)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before the kill:\n{process.stdout.read()}")
        steps = manager.steps()
        writing = checkpoints.is_dir() and any(p.name.startswith(".tmp-") for p in checkpoints.iterdir())
        if steps and steps[-1] >= min_step and (writing or not mid_write or steps[-1] >= min_step + 6):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.0005)
    process.kill()
    raise AssertionError("timed out waiting for the run to reach the kill point")


def _resume_killed_run(tmp_path: Path, steps: int, kill_points: list[tuple[int, bool]]) -> Path:
    run = tmp_path / "killed"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(_config(run, steps)))
    process = _start(["--config", str(config_file)])
    for min_step, mid_write in kill_points:
        _kill_when(process, run / "checkpoints", min_step=min_step, mid_write=mid_write)
        process = _start(["--resume", str(run), "--import", EXAMPLE])
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "resuming" in output
    return run


def _assert_identical(reference: Path, resumed: Path) -> None:
    a, b = final_weights(reference), final_weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The logged per-step losses match too (rows after a kill were rewritten, none duplicated).
    rows_a = [(r["step"], r["phase"], r["loss"], r["mse"]) for r in read_metrics(reference / "metrics.csv")]
    rows_b = [(r["step"], r["phase"], r["loss"], r["mse"]) for r in read_metrics(resumed / "metrics.csv")]
    assert rows_a == rows_b


def test_sigkill_twice_then_resume_is_bit_identical(tmp_path):
    steps = 40
    reference = tmp_path / "reference"
    train(RunConfig(**_config(reference, steps)), quiet=True, print_fn=lambda _: None)
    resumed = _resume_killed_run(tmp_path, steps, [(9, False), (23, True)])
    _assert_identical(reference, resumed)


@pytest.mark.slow
def test_sigkill_many_times_then_resume_is_bit_identical(tmp_path):
    steps = 80
    reference = tmp_path / "reference"
    train(RunConfig(**_config(reference, steps)), quiet=True, print_fn=lambda _: None)
    kills = [(3, True), (7, False), (14, True), (30, True), (45, False), (70, True)]
    resumed = _resume_killed_run(tmp_path, steps, kills)
    _assert_identical(reference, resumed)


def test_resume_skips_a_corrupted_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    config = RunConfig(**{**_config(run, 10), "keep_last": 3})
    reference = RunConfig(**_config(tmp_path / "reference", 10))
    train(reference, quiet=True, print_fn=lambda _: None)
    train(config, quiet=True, print_fn=lambda _: None)
    # Damage the newest checkpoint: resume reports it, redoes step 10 from step 9, and still ends identical.
    weights = run / "checkpoints" / "step-00000010" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    messages: list[str] = []
    train(config, resume=True, quiet=True, print_fn=messages.append)
    assert any("skipping a bad checkpoint" in m and "truncated" in m for m in messages)
    assert any("resuming" in m and "from step 9" in m for m in messages)
    _assert_identical(tmp_path / "reference", run)


@pytest.mark.parametrize("algo, ema_decay", [("maml", None), ("meta-sgd", None), ("maml", 0.8)])
def test_stop_and_resume_maml_family_is_bit_identical(tmp_path, algo, ema_decay):
    """In-process stop at step 4 and resume to 8 (constant LR) equals 8 uninterrupted steps."""
    values = {
        **_config(tmp_path / "x", 8),
        "algo": algo,
        "imports": [],
        "schedule": "constant",
        "meta_batch": 3,
        "eval_every": 3,
        "algo_options": {"inner_steps": 2},
        "ema_decay": ema_decay,
    }
    train(
        RunConfig(**{**values, "run_dir": str(tmp_path / "reference")}), quiet=True, print_fn=lambda _: None
    )
    stopped = {**values, "run_dir": str(tmp_path / "resumed")}
    train(RunConfig(**{**stopped, "steps": 4}), quiet=True, print_fn=lambda _: None)
    train(RunConfig(**stopped), resume=True, quiet=True, print_fn=lambda _: None)
    a, b = final_weights(tmp_path / "reference"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
