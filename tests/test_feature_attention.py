"""Feature attention: FiLM gating of backbone blocks, the set-attention task encoder, adaptation modes."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from attnmeta.learners.attention_maml import AttentionMAML
from attnmeta.nn.backbones import MLP, Conv4
from attnmeta.nn.film import FeatureAttention, FiLMBackbone, TaskEncoder, find_blocks
from attnmeta.tasks.regression import Multimodal


def test_untrained_film_is_the_plain_backbone():
    torch.manual_seed(0)
    for backbone, x in ((MLP(1, (8, 8), 1), torch.randn(6, 1)),
                        (Conv4((1, 16, 16), hidden=4, out_features=3), torch.randn(6, 1, 16, 16))):
        expected = backbone(x)
        wrapped = FiLMBackbone(backbone, 8, spatial=True)
        torch.testing.assert_close(wrapped(x, torch.randn(8)), expected)
        torch.testing.assert_close(wrapped(x), expected)


def test_channel_gates_match_hand_computed_film():
    torch.manual_seed(0)
    backbone = MLP(1, (5, 5), 1).double()
    wrapped = FiLMBackbone(backbone, 3).double()
    assert find_blocks(backbone) == ["layers.0", "layers.1"]
    with torch.no_grad():
        for gate in wrapped.gates:
            gate.channel.weight.normal_()
            gate.channel.bias.normal_()
    x, z = torch.randn(4, 1, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    h = x
    for layer, gate in zip(backbone.layers, wrapped.gates):
        scale, shift = (gate.channel.weight @ z + gate.channel.bias).chunk(2)
        h = torch.relu(2 * torch.sigmoid(scale) * layer(h) + shift)
    torch.testing.assert_close(wrapped(x, z), backbone.head(h))
    wrapped.record = True
    wrapped(x, z)
    assert set(wrapped.last_gates) == {"layers.0", "layers.1"}
    assert wrapped.last_gates["layers.0"].shape == (5,)
    assert torch.all((wrapped.last_gates["layers.0"] > 0) & (wrapped.last_gates["layers.0"] < 2))


def test_spatial_gate_changes_conv_features_and_keeps_shapes():
    torch.manual_seed(0)
    backbone = Conv4((1, 16, 16), hidden=4, out_features=3)
    wrapped = FiLMBackbone(backbone, 6, spatial=True)
    with torch.no_grad():
        for gate in wrapped.gates:
            gate.spatial.weight.normal_()
    x = torch.randn(5, 1, 16, 16)
    out = wrapped(x, torch.randn(6))
    assert out.shape == (5, 3)
    assert not torch.allclose(out, backbone(x))


def test_deepcopy_retargets_the_gates():
    torch.manual_seed(0)
    wrapped = FiLMBackbone(MLP(1, (4,), 1), 2)
    clone = copy.deepcopy(wrapped)
    with torch.no_grad():
        clone.gates[0].channel.bias.fill_(3.0)
    x, z = torch.randn(3, 1), torch.randn(2)
    torch.testing.assert_close(wrapped(x, z), wrapped.backbone(x))
    assert not torch.allclose(clone(x, z), wrapped(x, z))


def test_functional_call_under_vmap_matches_a_loop():
    torch.manual_seed(0)
    wrapped = FiLMBackbone(MLP(1, (6,), 1), 4)
    with torch.no_grad():
        for gate in wrapped.gates:
            gate.channel.weight.normal_()
    params = dict(wrapped.named_parameters())
    xs, zs = torch.randn(3, 5, 1), torch.randn(3, 4)
    batched = torch.func.vmap(lambda x, z: functional_call(wrapped, params, (x, z)))(xs, zs)
    looped = torch.stack([wrapped(x, z) for x, z in zip(xs, zs)])
    torch.testing.assert_close(batched, looped)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(2, 12))
def test_task_encoder_is_permutation_invariant(seed, n):
    torch.manual_seed(seed)
    encoder = TaskEncoder(1, 1, 8).double()
    x, y = torch.randn(n, 1, dtype=torch.float64), torch.randn(n, 1, dtype=torch.float64)
    perm = torch.randperm(n)
    z = encoder(x, y)
    assert z.shape == (8,)
    torch.testing.assert_close(encoder(x[perm], y[perm]), z)


def test_task_encoder_classification_one_hot_and_errors():
    torch.manual_seed(0)
    encoder = TaskEncoder(4, 3, 8, classification=True)
    z = encoder(torch.randn(6, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert z.shape == (8,) and torch.isfinite(z).all()
    with pytest.raises(TypeError, match="int64"):
        encoder(torch.randn(6, 4), torch.randn(6))
    with pytest.raises(ValueError, match="x_features=5"):
        encoder(torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match="multiple of heads"):
        TaskEncoder(1, 1, 5, heads=2)


def test_backbone_without_blocks_needs_block_names():
    model = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="block_names"):
        FiLMBackbone(model, 4, in_shape=(1,))
    wrapped = FiLMBackbone(model, 4, block_names=["0"], in_shape=(1,))
    assert wrapped(torch.randn(2, 1), torch.zeros(4)).shape == (2, 1)
    with pytest.raises(ValueError, match="not submodules"):
        FiLMBackbone(model, 4, block_names=["body"], in_shape=(1,))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        wrapped(torch.randn(2, 1), torch.zeros(3))


def test_context_mode_adapts_only_the_context_vector():
    torch.manual_seed(0)
    learner = AttentionMAML(MLP(1, (8, 8), 1), "regression", feature_attention=FeatureAttention("context", 8),
                            inner_lr=1.0, inner_steps=2)
    assert learner.adapt_names == ["context"]
    with torch.no_grad():  # zero-initialised gates give the context no gradient yet
        for gate in learner.model.gates:
            gate.channel.weight.normal_()
    task = Multimodal(shots=5, queries=5, seed=0).sample()
    adapted, _ = learner.adapt_task(task)
    params = learner.model_params()
    for name, value in adapted.items():
        if name == "context":
            assert not torch.equal(value, params[name])
        else:
            assert torch.equal(value, params[name])


def test_feature_attention_learns_multimodal_regression():
    """30 meta-steps of feature attention (context mode) lower the test MSE on the multimodal family."""
    torch.manual_seed(0)
    family = Multimodal(shots=10, queries=10, seed=1)
    test = Multimodal(shots=10, queries=10, seed=2).fixed_tasks(40, seed=3)
    learner = AttentionMAML(MLP(1, (32, 32), 1), "regression", inner_lr=1.0, inner_steps=1, strategy="vmap",
                            feature_attention=FeatureAttention("context", 16))
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)

    def test_mse() -> float:
        errors = [torch.nn.functional.mse_loss(learner.predict(t), t.query_y).item() for t in test]
        return sum(errors) / len(errors)

    before = test_mse()
    for _ in range(30):
        out = learner.meta_loss(family.sample_batch(8))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = test_mse()
    assert after < 0.6 * before, (before, after)
