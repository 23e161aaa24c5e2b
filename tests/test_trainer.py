"""The trainer: learns on a real problem, writes a complete run folder, stops cleanly on a non-finite loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnmeta import learners
from attnmeta.learners.registry import register
from attnmeta.train import (
    CheckpointManager,
    NonFiniteLossError,
    RunConfig,
    RunExistsError,
    load_checkpoint,
    train,
)
from attnmeta.train.trainer import final_weights, import_plugins, lr_factor, read_metrics

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "custom_learner.py")
import_plugins([EXAMPLE])
RidgeLearner = learners.spec("ridge").builder.__globals__["RidgeLearner"]


class NaNAfter(RidgeLearner):
    """Ridge learner whose meta-loss becomes NaN on its ``nan_call``-th call (to test the early stop)."""

    def __init__(self, *args, nan_call: int = 5, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.nan_call = 0, nan_call

    def meta_loss(self, batch):
        out = super().meta_loss(batch)
        self.calls += 1
        if self.calls >= self.nan_call:
            out.loss = out.loss * float("nan")
            out.metrics["loss"] = float("nan")
        return out


if "nan-ridge" not in learners.available():
    register("nan-ridge", head=False)(
        lambda model, task_type, ways=None, **o: NaNAfter(model, task_type, ways, **o)
    )


def small(tmp_path: Path, **changes) -> RunConfig:
    values = dict(
        benchmark="sinusoid",
        algo="ridge",
        imports=[EXAMPLE],
        steps=60,
        meta_batch=4,
        lr=3e-3,
        eval_every=20,
        eval_episodes=20,
        test_episodes=100,
        checkpoint_every=20,
        keep_last=2,
        run_dir=str(tmp_path / "run"),
        plot=False,
        threads=1,
    )
    values.update(changes)
    return RunConfig(**values)


def test_learns_sinusoid_and_writes_the_run_folder(tmp_path):
    result = train(small(tmp_path), quiet=True, print_fn=lambda _: None)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "run.json",
        "metrics.csv",
        "summary.json",
        "checkpoints",
        "test_episodes.json",
    }
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["phase"] == "train"] == list(range(1, 61))
    assert [int(r["step"]) for r in rows if r["phase"] == "val"] == [20, 40, 60]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["test"]["n"] == 100
    assert CheckpointManager(run / "checkpoints").steps()[-2:] == [40, 60]
    # Learned: test MSE far below the zero predictor's on the same fixed test tasks (measured 1.31 vs 3.85).
    from attnmeta.tasks import Sinusoid

    zero_mse = sum(float((t.query_y**2).mean()) for t in Sinusoid(10, 10).fixed_tasks(100, seed=0)) / 100
    assert result.test.metric == "mse"
    assert result.test.mean < 0.5 * zero_mse
    # The test used the best validation checkpoint.
    assert result.best["step"] in (20, 40, 60) and summary["best"] == result.best


def test_non_finite_loss_stops_naming_step_and_keeps_last_checkpoint(tmp_path):
    config = small(tmp_path, algo="nan-ridge", algo_options={"nan_call": 7}, checkpoint_every=3)
    with pytest.raises(NonFiniteLossError) as error:
        train(config, quiet=True, print_fn=lambda _: None)
    message = str(error.value)
    assert "became nan at step 7" in message and "unchanged; the newest (step 6)" in message
    assert "--lr" in message and "grad_clip" in message
    weights, state = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000006")
    assert state["step"] == 6 and all(torch.isfinite(w).all() for w in weights.values())


def test_existing_run_needs_resume(tmp_path):
    train(
        small(tmp_path, steps=2, eval_every=2, checkpoint_every=2, test_episodes=5),
        quiet=True,
        print_fn=lambda _: None,
    )
    with pytest.raises(
        RunExistsError, match=r"already holds a run; continue it with `attnmeta train --resume"
    ):
        train(small(tmp_path, steps=2), quiet=True, print_fn=lambda _: None)


def test_validation_does_not_change_the_training_trajectory(tmp_path):
    a = small(tmp_path, steps=12, eval_every=3, run_dir=str(tmp_path / "a"), test_episodes=5)
    b = small(tmp_path, steps=12, eval_every=100, run_dir=str(tmp_path / "b"), test_episodes=5)
    train(a, quiet=True, print_fn=lambda _: None)
    train(b, quiet=True, print_fn=lambda _: None)
    wa, wb = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_learning_rate_schedules():
    constant = RunConfig(steps=100)
    assert lr_factor(constant, 1) == lr_factor(constant, 100) == 1.0
    cosine = RunConfig(steps=100, schedule="cosine", min_lr_ratio=0.1, warmup_steps=10)
    assert lr_factor(cosine, 5) == pytest.approx(0.5)
    assert lr_factor(cosine, 10) == pytest.approx(1.0)
    assert lr_factor(cosine, 55) == pytest.approx(0.55)
    assert lr_factor(cosine, 100) == pytest.approx(0.1)
    step = RunConfig(steps=100, schedule="step", step_size=30, gamma=0.5)
    assert [lr_factor(step, s) for s in (1, 30, 31, 61, 91)] == [1.0, 1.0, 0.5, 0.25, 0.125]


def test_bad_plugin_and_cuda_errors(tmp_path):
    with pytest.raises(ValueError, match=r"'imports': file 'nope.py' does not exist"):
        import_plugins(["nope.py"])
    with pytest.raises(ValueError, match=r"cannot import 'no_such_module_xyz'"):
        import_plugins(["no_such_module_xyz"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            train(small(tmp_path, device="cuda"), quiet=True)


def test_default_run_folder_is_never_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = small(tmp_path, run_dir=None, steps=2, eval_every=2, test_episodes=2)
    first = train(config, quiet=True, print_fn=lambda _: None).run_dir
    second = train(config, quiet=True, print_fn=lambda _: None).run_dir
    assert (str(first), str(second)) == ("runs/sinusoid-ridge-10shot", "runs/sinusoid-ridge-10shot-2")


@pytest.mark.parametrize("retain", [True, False])
def test_cpu_runs_retain_freed_memory_unless_configured_off(tmp_path, monkeypatch, retain):
    import attnmeta.train.run as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "retain_freed_memory", lambda: calls.append(True) or True)
    train(small(tmp_path, steps=2, eval_every=2, checkpoint_every=2, test_episodes=5, device="cpu",
                retain_memory=retain), quiet=True, print_fn=lambda _: None)
    assert calls == ([True] if retain else [])


def test_ema_decay_validates_tests_and_saves_the_average_without_changing_training(tmp_path):
    plain = train(small(tmp_path, run_dir=str(tmp_path / "plain")), quiet=True, print_fn=lambda _: None)
    zero = train(small(tmp_path, run_dir=str(tmp_path / "zero"), ema_decay=0.0), quiet=True,
                 print_fn=lambda _: None)
    ema = train(small(tmp_path, run_dir=str(tmp_path / "ema"), ema_decay=0.9), quiet=True,
                print_fn=lambda _: None)
    rows = {name: read_metrics(tmp_path / name / "metrics.csv") for name in ("plain", "zero", "ema")}
    train_losses = {name: [r["loss"] for r in rs if r["phase"] == "train"] for name, rs in rows.items()}
    assert train_losses["plain"] == train_losses["zero"] == train_losses["ema"]  # training unchanged
    # decay 0: the "average" is the trained parameters
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "zero")
    assert all(torch.allclose(a[k], b[k]) for k in a)
    assert zero.test.mean == pytest.approx(plain.test.mean)
    # decay 0.9: validation, the saved weights and the test use the average
    val = {name: [r["mse"] for r in rs if r["phase"] == "val"] for name, rs in rows.items()}
    assert val["ema"] != val["plain"]
    c = final_weights(tmp_path / "ema")
    assert any(not torch.allclose(a[k], c[k]) for k in a if a[k].is_floating_point())
    assert ema.test.mean != plain.test.mean
    _, state = load_checkpoint(CheckpointManager(tmp_path / "ema" / "checkpoints").path(60))
    assert state["ema_updates"] == 60
    assert all(torch.allclose(a[k], state["trained_parameters"][k]) for k in state["trained_parameters"])
    with pytest.raises(ValueError, match="ema_decay"):
        small(tmp_path, ema_decay=1.0)
    with pytest.raises(ValueError, match="saved with ema_decay, but the config resuming it has ema_decay=No"):
        train(small(tmp_path, run_dir=str(tmp_path / "ema"), steps=80), resume=True, quiet=True,
              print_fn=lambda _: None)
    with pytest.raises(ValueError, match="saved without ema_decay"):
        train(small(tmp_path, run_dir=str(tmp_path / "plain"), steps=80, ema_decay=0.9), resume=True,
              quiet=True, print_fn=lambda _: None)


def test_adamw_decays_weights_decoupled_from_the_gradient():
    from attnmeta.train.trainer import make_optimizer

    weight = torch.nn.Parameter(torch.full((3,), 2.0))
    config = RunConfig(optimizer="adamw", lr=0.1, weight_decay=0.5)
    optimizer = make_optimizer(config, [weight])
    assert isinstance(optimizer, torch.optim.AdamW)
    weight.grad = torch.zeros(3)  # no gradient: Adam's step is 0, only the decoupled decay acts
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5)))
    coupled = torch.nn.Parameter(torch.full((3,), 2.0))
    adam = make_optimizer(RunConfig(optimizer="adam", lr=0.1, weight_decay=0.5), [coupled])
    coupled.grad = torch.zeros(3)
    adam.step()  # Adam's L2 term goes through the normalised step: a full lr-sized move
    torch.testing.assert_close(coupled.detach(), torch.full((3,), 2.0 - 0.1))


def test_snail_is_sized_for_the_run_shots():
    """SNAIL's sequence length comes from the run's shots (the larger of training and test shots) unless
    algo_options set it."""
    from attnmeta.train.builders import BenchmarkParts, build_learner

    bench = BenchmarkParts("omniglot", "classification", None, None, None, (1, 28, 28), {}, "conv4")
    config = RunConfig(benchmark="omniglot", algo="snail", ways=5, shots=5, device="cpu")
    assert build_learner(config, bench).shots == 5
    config = RunConfig(benchmark="omniglot", algo="snail", ways=5, shots=1, train_shots=3, device="cpu")
    assert build_learner(config, bench).shots == 3
    config = RunConfig(benchmark="omniglot", algo="snail", ways=5, shots=5, algo_options={"shots": 7},
                       device="cpu")
    assert build_learner(config, bench).shots == 7
