"""Attention-MAML: none is MAML, strategies agree with all three mechanisms, it learns, plots, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from attnmeta.attention_plots import plot_feature_gates, plot_param_weights, plot_task_weights
from attnmeta.learners import build, spec
from attnmeta.learners.attention_maml import AttentionMAML
from attnmeta.learners.maml import MAML
from attnmeta.learners.task_attention import MetaBatchWeighting
from attnmeta.nn.backbones import MLP, Conv4
from attnmeta.nn.film import FeatureAttention
from attnmeta.tasks.episode import Task, TaskBatch
from attnmeta.tasks.regression import Sinusoid

ALL = dict(task_attention=True, feature_attention=True, param_attention=True)


def all_three(task_dim: int, mode: str = "all", spatial: bool = False) -> dict:
    """The three mechanisms, both task encoders of size ``task_dim``."""
    return dict(task_attention=MetaBatchWeighting(task_dim=task_dim),
                feature_attention=FeatureAttention(mode=mode, task_dim=task_dim, spatial=spatial),
                param_attention=True)


def batch64(tasks=4, corrupt=0.0):
    family = Sinusoid(shots=5, queries=5, corrupt_fraction=corrupt, seed=0)
    return family.sample_batch(tasks).to("cpu", torch.float64)


def test_no_flags_is_exactly_maml():
    torch.manual_seed(0)
    model = MLP(1, (8, 8), 1).double()
    batch = batch64()
    maml = MAML(copy.deepcopy(model), "regression", inner_lr=0.05, inner_steps=2)
    attention = AttentionMAML(copy.deepcopy(model), "regression", inner_lr=0.05, inner_steps=2)
    out_a, grads_a = maml.meta_gradient(batch)
    out_b, grads_b = attention.meta_gradient(batch)
    assert torch.equal(out_a.loss, out_b.loss)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        assert torch.equal(grads_b[name], grad)


def test_registered_by_name():
    assert spec("attention-maml").head is True
    learner = build("attention-maml", model=MLP(1, (8,), 1), task_type="regression",
                    task_attention={"task_dim": 8})
    assert isinstance(learner, AttentionMAML) and learner.task_weighting is not None


@pytest.mark.parametrize("feature_mode", ["all", "context"])
def test_all_three_loop_and_vmap_give_the_same_meta_gradient(feature_mode):
    torch.manual_seed(0)
    learner = AttentionMAML(MLP(1, (8,), 1).double(), "regression", inner_lr=0.05, inner_steps=2,
                            **all_three(8, feature_mode))
    with torch.no_grad():  # leave the zero-initialised attention outputs
        for gate in learner.model.gates:
            gate.channel.weight.normal_(0, 0.3)
        learner.rule.query_net[-1].weight.normal_(0, 0.3)
        learner.task_weighting.score.weight.normal_(0, 0.3)
    batch = batch64(corrupt=0.5)
    learner.strategy = "loop"
    out_loop, grads_loop = learner.meta_gradient(batch)
    learner.strategy = "vmap"
    out_vmap, grads_vmap = learner.meta_gradient(batch)
    torch.testing.assert_close(out_vmap.loss, out_loop.loss, rtol=1e-10, atol=1e-12)
    for name, grad in grads_loop.items():
        torch.testing.assert_close(grads_vmap[name], grad, rtol=1e-8, atol=1e-10, msg=name)
    assert any(grads_loop[n].abs().sum() > 0 for n in grads_loop if n.startswith("task_encoder."))
    assert any(grads_loop[n].abs().sum() > 0 for n in grads_loop if n.startswith("task_weighting."))
    if feature_mode == "all":  # with one adapted tensor (the context) the attention weight is always 1
        assert any(grads_loop[n].abs().sum() > 0 for n in grads_loop if n.startswith("rule."))


@pytest.mark.slow
def test_all_three_learns_sinusoid():
    """40 meta-steps with all three mechanisms lower the 5-shot sinusoid test MSE (measured: 4.10 -> 3.28)."""
    torch.manual_seed(0)
    family = Sinusoid(shots=5, queries=10, seed=1)
    test = Sinusoid(shots=5, queries=10, seed=2).fixed_tasks(30, seed=3)
    learner = AttentionMAML(MLP(1, (32, 32), 1), "regression", inner_lr=0.01, strategy="vmap",
                            **all_three(16))
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)

    def test_mse() -> float:
        errors = [torch.nn.functional.mse_loss(learner.predict(t), t.query_y).item() for t in test]
        return sum(errors) / len(errors)

    before = test_mse()
    for _ in range(40):
        out = learner.meta_loss(family.sample_batch(8))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = test_mse()
    assert after < 0.9 * before, (before, after)


def test_classification_with_conv4_and_all_three():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tasks = [Task(torch.randn(6, 1, 16, 16, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]),
                  torch.randn(3, 1, 16, 16, generator=g), torch.tensor([0, 1, 2]), torch.arange(3))
             for _ in range(2)]
    learner = AttentionMAML(Conv4((1, 16, 16), hidden=4, out_features=3), "classification", ways=3,
                            **all_three(8, spatial=True))
    out = learner.meta_loss(TaskBatch.stack(tasks))
    out.loss.backward()
    assert torch.isfinite(out.loss) and 0.0 <= out.metrics["accuracy"] <= 1.0
    assert learner.predict(tasks[0]).shape == (3, 3)


def _conv_tasks(count=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = dict(generator=g, dtype=torch.float64)
    return [Task(torch.randn(6, 1, 16, 16, **images), torch.tensor([0, 1, 2, 0, 1, 2]),
                 torch.randn(3, 1, 16, 16, **images), torch.tensor([0, 1, 2]), torch.arange(3))
            for _ in range(count)]


@pytest.mark.parametrize("head_init", ["zero", "shared", "prototypes"])
def test_head_init_without_flags_is_exactly_maml(head_init):
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), hidden=4, out_features=3).double()
    batch = TaskBatch.stack(_conv_tasks())
    options = dict(ways=3, inner_lr=0.4, head_init=head_init)
    maml = MAML(copy.deepcopy(model), "classification", **options)
    attention = AttentionMAML(copy.deepcopy(model), "classification", **options)
    out_a, grads_a = maml.meta_gradient(batch)
    out_b, grads_b = attention.meta_gradient(batch)
    torch.testing.assert_close(out_b.loss, out_a.loss, rtol=0, atol=0)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=0)


@pytest.mark.parametrize("head_init", ["zero", "shared"])
def test_head_init_with_all_three_mechanisms(head_init):
    """The inner loop starts from the zero / shared head under feature, task and parameter attention too."""
    torch.manual_seed(0)
    tasks = _conv_tasks(3)
    learner = AttentionMAML(Conv4((1, 16, 16), hidden=4, out_features=3).double(), "classification", ways=3,
                            inner_lr=0.4, head_init=head_init, **all_three(8))
    assert learner.head_names == ["backbone.head.weight", "backbone.head.bias"]
    out = learner.meta_loss(TaskBatch.stack(tasks))
    out.loss.backward()
    head = dict(learner.model.named_parameters())
    weight, bias = head["backbone.head.weight"], head["backbone.head.bias"]
    if head_init == "zero":  # not meta-learned, and no prediction before adapting
        assert weight.grad is None or torch.count_nonzero(weight.grad) == 0
        assert torch.count_nonzero(learner.predict(tasks[0], inner_steps=0)) == 0
    else:  # one meta-learned row: every class starts from it
        assert torch.count_nonzero(weight.grad[1:]) == 0 and torch.count_nonzero(bias.grad[1:]) == 0
        assert weight.grad[0].abs().sum() > 0
        before = learner.predict(tasks[0], inner_steps=0)
        torch.testing.assert_close(before, before[:, :1].expand_as(before))
    assert learner.predict(tasks[0]).abs().sum() > 0
    params, _ = learner.adapt_task(tasks[0], inner_steps=0)
    start = learner.initial_params()["backbone.head.weight"]
    torch.testing.assert_close(params["backbone.head.weight"], start)
    assert learner.heldout_gradient(TaskBatch.stack(tasks[:2])).isfinite().all()


def test_head_init_needs_the_head_to_adapt_under_context_adaptation():
    with pytest.raises(ValueError, match="needs the head .* to adapt"):
        AttentionMAML(MLP(1, (4,), 1), "regression", head_init="zero",
                      feature_attention=FeatureAttention("context", task_dim=4))


def test_plots_are_written(tmp_path):
    paths = [
        plot_task_weights([0.5, 1.2, 1.3, 0.4], [True, False, False, True], tmp_path / "weights.png"),
        plot_feature_gates([[1.0, 0.5], [1.5, 1.0]], ["sinusoid", "linear"], tmp_path / "gates.png"),
        plot_param_weights([[1.0, 2.0], [0.5, 0.5]], ["layers.0.weight", "head.weight"],
                           tmp_path / "param.png", steps=2),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="ending in .png"):
        plot_task_weights([1.0], [False], tmp_path / "weights.jpg")
    with pytest.raises(ValueError, match="one corrupted flag per weight"):
        plot_task_weights([1.0, 2.0], [False], tmp_path / "w.png")


def test_bad_configuration_errors_are_clear():
    model = MLP(1, (4,), 1)
    with pytest.raises(ValueError, match="mode must be one of"):
        AttentionMAML(model, "regression", feature_attention=FeatureAttention(mode="head"))
    with pytest.raises(TypeError, match="feature_attention must be a FeatureAttention"):
        AttentionMAML(model, "regression", feature_attention={"mode": "context"})
    with pytest.raises(ValueError, match="pass ways=N"):
        AttentionMAML(Conv4((1, 16, 16), out_features=3), "classification", feature_attention=True)
    with pytest.raises(ValueError, match="do not pass rule="):
        AttentionMAML(model, "regression", param_attention=True, rule="lslr")
    with pytest.raises(ValueError, match="in_shape"):
        AttentionMAML(torch.nn.Sequential(torch.nn.Linear(1, 1)), "regression", feature_attention=True)
    with pytest.raises(ValueError, match="block_names"):
        AttentionMAML(torch.nn.Linear(1, 1), "regression", feature_attention=True)
    with pytest.raises(TypeError, match="nn.Module"):
        AttentionMAML("mlp", "regression")
