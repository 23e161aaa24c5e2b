"""``experiments/omniglot/omniglot_embedding_protonet.py``: a saved Conv-4 as a nearest-prototype
classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnmeta.eval import evaluate
from attnmeta.learners.protonet import PrototypicalNetworks
from attnmeta.nn.backbones import build_backbone


@pytest.fixture(scope="module")
def script(experiment):
    return experiment("omniglot", "omniglot_embedding_protonet")


def _fake_omniglot(path: Path) -> None:
    """Decoded tensors in ``--export-data``'s layout: 30 background, 24 evaluation characters x 16 images."""
    g = torch.Generator().manual_seed(0)
    stored = {}
    for key, characters in (("background", 30), ("evaluation", 24)):
        stored[f"{key}_images"] = torch.randint(0, 256, (characters * 16, 1, 28, 28), generator=g,
                                                dtype=torch.uint8)
        stored[f"{key}_labels"] = torch.arange(characters).repeat_interleave(16)
        stored[f"{key}_characters"] = [f"{key}_{i}" for i in range(characters)]
    torch.save(stored, path)


def test_evaluates_the_saved_backbone_on_the_fixed_test_episodes(script, tmp_path):
    _fake_omniglot(tmp_path / "data.pt")
    torch.manual_seed(0)
    conv4 = build_backbone("conv4", in_shape=(1, 28, 28), hidden=8, norm="fused", pool_last=False)
    torch.save(conv4.state_dict(), tmp_path / "backbone.pt")
    report = script.main([str(tmp_path / "backbone.pt"), "--data-pt", str(tmp_path / "data.pt"),
                          "--hidden", "8", "--no-pool-last", "--episodes", "3", "--name", "check",
                          "--out-dir", str(tmp_path)])
    assert json.loads((tmp_path / "check.json").read_text())["final"] == report["final"]
    # the same figure as ProtoNets on that network over the benchmark's own fixed episodes
    from attnmeta.data.benchmarks import make_benchmark

    data = script.load_data(script.parse_args(["x", "--data-pt", str(tmp_path / "data.pt")]))
    episodes = make_benchmark("omniglot", data=data, ways=20, shots=1, queries=15).test.fixed_tasks(3, seed=0)
    expected = evaluate(PrototypicalNetworks(conv4, distance="l2"), episodes)
    assert report["final"]["20w1s"]["accuracy"] == pytest.approx(expected.mean)
    assert report["final"]["5w1s"]["n"] == 3


def test_a_backbone_of_another_width_gets_a_clear_error(script, tmp_path):
    _fake_omniglot(tmp_path / "data.pt")
    conv4 = build_backbone("conv4", in_shape=(1, 28, 28), hidden=8, norm="fused")
    torch.save(conv4.state_dict(), tmp_path / "backbone.pt")
    with pytest.raises(SystemExit, match="does not fit a Conv-4 with hidden=64"):
        script.main([str(tmp_path / "backbone.pt"), "--data-pt", str(tmp_path / "data.pt"),
                     "--out-dir", str(tmp_path)])
