"""Checkpoints: exact round trip without pickle, corruption/truncation detected, atomic writes, rotation."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from attnmeta.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


def _state():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.randn(3, 2))], lr=0.1)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3, 2)
    optimizer.step()
    return {
        "step": 12,
        "optimizer": optimizer.state_dict(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "nested": {"a": [1, 2.5, None, "x"]},
    }


def test_round_trip_is_exact_and_uses_no_pickle(tmp_path):
    weights = {"w": torch.randn(4, 3, dtype=torch.float64), "b": torch.arange(5)}
    state = _state()
    save_checkpoint(tmp_path / "ck", weights, state)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "manifest.json",
        "state.json",
        "state.safetensors",
        "weights.safetensors",
    ]
    loaded_weights, loaded = load_checkpoint(tmp_path / "ck")
    assert all(torch.equal(loaded_weights[k], v) for k, v in weights.items())
    assert loaded["step"] == 12 and loaded["nested"] == {"a": [1, 2.5, None, "x"]}
    assert torch.equal(loaded["torch"], state["torch"])
    # Restoring each RNG state reproduces the same random stream.
    random.setstate((loaded["python"][0], tuple(loaded["python"][1]), loaded["python"][2]))
    np.random.set_state(tuple(loaded["numpy"]))
    a = (random.random(), np.random.rand())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    assert a == (random.random(), np.random.rand())
    # The optimizer state (int keys, tensors) loads back into a fresh optimizer identically.
    fresh = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3, 2))], lr=0.1)
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    # No pickle anywhere: state.json is plain JSON, tensors are safetensors.
    json.loads((tmp_path / "ck" / "state.json").read_text())


def test_unsupported_state_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="cannot store a object in a checkpoint"):
        save_checkpoint(tmp_path / "ck", {}, {"bad": object()})


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_manifest", "missing_file"])
def test_damaged_checkpoint_is_detected_never_loaded(tmp_path, damage):
    path = save_checkpoint(tmp_path / "ck", {"w": torch.randn(100)}, {"step": 1})
    weights = path / "weights.safetensors"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
        message = "is corrupted"
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-17])
        message = "is truncated or changed"
    elif damage == "no_manifest":
        (path / "manifest.json").unlink()
        message = "has no readable manifest.json"
    else:
        (path / "state.json").unlink()
        message = "is missing state.json"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_rotation_keeps_last_k_and_best(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    for step in (10, 20, 30, 40, 50):
        best = {"metric": "mse", "value": 1.0 / step} if step == 20 else None
        manager.save(step, {"w": torch.full((2,), float(step))}, {"step": step}, best=best)
    assert manager.steps() == [20, 40, 50]
    assert manager.best() == {"step": 20, "metric": "mse", "value": 0.05}
    assert manager.best_path() == manager.path(20)
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        CheckpointManager(tmp_path, keep_last=0)


def test_latest_valid_skips_and_reports_a_corrupt_newest(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=3)
    for step in (1, 2):
        manager.save(step, {"w": torch.full((3,), float(step))}, {"step": step})
    (manager.path(2) / "state.json").write_text("{}")  # changed after writing
    reports = []
    assert manager.latest_valid(report=reports.append) == manager.path(1)
    assert len(reports) == 1 and "step-00000002" in reports[0] and "truncated or changed" in reports[0]
    verify_checkpoint(manager.path(1))


def test_interrupted_write_leaves_previous_intact_and_is_cleaned(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    manager.save(1, {"w": torch.ones(2)}, {"step": 1})
    # A writer killed mid-way leaves only a temporary folder, which is never taken for a checkpoint.
    stale = manager.directory / ".tmp-step-00000002-999"
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"partial")
    assert manager.steps() == [1] and manager.latest_valid() == manager.path(1)
    manager.save(2, {"w": torch.ones(2)}, {"step": 2})
    assert not stale.exists()
    # Saving the same step again replaces it atomically.
    manager.save(2, {"w": torch.zeros(2)}, {"step": 2})
    assert torch.equal(load_checkpoint(manager.path(2))[0]["w"], torch.zeros(2))
