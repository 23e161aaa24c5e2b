"""Learning-curve plots: smoothing/CI numbers and a PNG of several runs."""

from __future__ import annotations

import math

import pytest

from attnmeta.cli import main
from attnmeta.plots import curves, plot_runs, smoothed
from attnmeta.train.trainer import MetricsLog


def _fake_run(path, metric: str, scale: float):
    path.mkdir()
    log = MetricsLog(path, enabled=True, resume_step=None)
    for step in range(1, 101):
        value = scale / step
        log.write(step, "train", {"loss": value, metric: value, "lr": 1e-3, "train_seconds": step * 0.1})
        if step % 25 == 0:
            log.write(step, "val", {metric: value, "ci95": 0.1 * value, "train_seconds": step * 0.1})
    log.close()


def test_smoothed_mean_and_ci_are_exact():
    means, cis = smoothed([1.0, 3.0, 5.0, 7.0], window=2)
    assert means == [1.0, 2.0, 4.0, 6.0]
    assert cis[0] == 0.0 and cis[1] == pytest.approx(1.96 * 1.0 / math.sqrt(2))
    with pytest.raises(ValueError, match="window must be >= 1"):
        smoothed([1.0], 0)


def test_curves_read_train_and_val(tmp_path):
    _fake_run(tmp_path / "a", "mse", 2.0)
    c = curves(tmp_path / "a")
    assert c["metric"] == "mse" and c["val_step"] == [25, 50, 75, 100]
    assert c["val_metric"] == [2.0 / 25, 2.0 / 50, 2.0 / 75, 2.0 / 100]
    assert c["val_ci"][0] == pytest.approx(0.1 * 2.0 / 25)
    assert len(c["train_loss"]) == 100 and c["train_loss"][0] == 2.0


def test_plot_several_runs_into_one_png(tmp_path, capsys):
    _fake_run(tmp_path / "a", "accuracy", 0.5)
    _fake_run(tmp_path / "b", "accuracy", 0.9)
    out = plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "figs" / "curves.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "cli.png")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "cli.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="at least one run folder"):
        plot_runs([], tmp_path / "x.png")
