"""Attention-MAML from plain configs: mappings -> objects, one-line errors, task selection, nn.Sequential."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnmeta.learners import build
from attnmeta.learners.attention_config import (
    feature_attention_from_config,
    param_attention_from_config,
    task_attention_from_config,
)
from attnmeta.learners.attention_maml import AttentionMAML
from attnmeta.learners.maml import MAML
from attnmeta.learners.param_attention import ParamAttentionRule
from attnmeta.learners.registry import check_options
from attnmeta.learners.task_attention import MetaBatchWeighting, TaskSelector
from attnmeta.nn.backbones import MLP
from attnmeta.nn.film import FeatureAttention, FiLMBackbone
from attnmeta.tasks.episode import TaskBatch
from attnmeta.tasks.regression import Multimodal, Sinusoid
from attnmeta.train.config import RunConfig


def test_mappings_become_objects_with_their_options():
    weighting = task_attention_from_config({"temperature": 0.2, "mode": "softmax", "heldout_batch": 3})
    assert weighting == MetaBatchWeighting(temperature=0.2, mode="softmax", heldout_batch=3)
    assert task_attention_from_config(True) == MetaBatchWeighting()
    assert task_attention_from_config(False) is None and task_attention_from_config(None) is None
    selector = task_attention_from_config({"kind": "selector", "temperature": 0.02, "keep": 4})
    assert isinstance(selector, TaskSelector) and (selector.temperature, selector.keep) == (0.02, 4)
    feature = feature_attention_from_config({"mode": "context", "block_names": ["1", "3"]})
    assert feature == FeatureAttention(mode="context", block_names=("1", "3"))
    rule = param_attention_from_config({"mode": "topk", "top_k": 2, "lr_mode": "per-parameter"}, 0.3)
    assert isinstance(rule, ParamAttentionRule)
    assert (rule.mode, rule.top_k, rule.lr_mode, rule.init_lr) == ("topk", 2, "per-parameter", 0.3)
    assert param_attention_from_config(True) is True


def test_built_from_config_equals_built_from_objects():
    torch.manual_seed(0)
    options = {"task_attention": {"task_dim": 8, "mode": "softmax"},
               "feature_attention": {"mode": "all", "task_dim": 8},
               "param_attention": {"mode": "soft", "top_k": 1, "lr_mode": "scalar"}, "inner_lr": 0.05}
    from_config = build("attention-maml", model=MLP(1, (8,), 1), task_type="regression", **options)
    torch.manual_seed(0)
    from_objects = AttentionMAML(MLP(1, (8,), 1), "regression", inner_lr=0.05,
                                 task_attention=MetaBatchWeighting(task_dim=8, mode="softmax"),
                                 feature_attention=FeatureAttention(task_dim=8), param_attention=True)
    assert from_config.state_dict().keys() == from_objects.state_dict().keys()
    for name, value in from_objects.state_dict().items():
        torch.testing.assert_close(from_config.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert from_config.task_weighting.mode == "softmax" and from_config.param_attention


def _message(options: dict, algo: str = "attention-maml") -> str:
    with pytest.raises(ValueError) as error:
        check_options(algo, options)
    return str(error.value)


@pytest.mark.parametrize(("options", "message"), [
    ({"task_attention": {"temprature": 0.1}},
     "unknown key 'temprature' in algo_options.task_attention (did you mean 'temperature'?); valid keys: "
     "entropy, heldout, heldout_batch, kind, mode, scale_free, standardize, task_dim, temperature, "
     "x_encoder"),
    ({"task_attention": {"kind": "selector", "mode": "gate"}},
     "unknown key 'mode' in algo_options.task_attention; valid keys: embed_fn, keep, kind, targets, "
     "temperature, uniform_share"),
    ({"task_attention": {"kind": "selector"}},
     "algo_options.task_attention with kind: selector needs keep: N (the tasks of each meta-batch to train "
     "on)"),
    ({"task_attention": {"kind": "ranking"}},
     "algo_options.task_attention.kind must be one of weighting, selector, got 'ranking'"),
    ({"feature_attention": {"blocks": ["0"]}},
     "unknown key 'blocks' in algo_options.feature_attention (did you mean 'block_names'?); valid keys: "
     "block_names, mode, spatial, task_dim, x_encoder"),
    ({"param_attention": {"topk": 2}},
     "unknown key 'topk' in algo_options.param_attention (did you mean 'top_k'?); valid keys: fixed_weights, "
     "hidden, key_dim, lr_mode, mode, temperature, top_k, use_loss"),
    ({"param_attention": "soft"}, "algo_options.param_attention must be true, false or a mapping of its "
                                  "options, got str 'soft'"),
    ({"feature_attention": {"mode": "head"}},
     "feature attention mode must be one of ('all', 'context'), got 'head'"),
    ({"task_attention": {"temperature": "hot"}}, "task weighting temperature must be a number, got 'hot'"),
])
def test_bad_nested_options_are_one_line_errors_up_front(options, message):
    assert _message(options) == message
    assert "\n" not in message
    config = RunConfig(benchmark="sinusoid", algo="attention-maml", algo_options=options)
    with pytest.raises(ValueError) as error:
        config.resolved()
    assert str(error.value) == message


def test_dotted_keys_set_one_nested_option():
    """``--set algo_options.task_attention.temperature=0.2`` arrives as a dotted key."""
    learner = build("attention-maml", model=MLP(1, (8,), 1), task_type="regression",
                    **{"task_attention": True, "task_attention.temperature": 0.2,
                       "task_attention.task_dim": 8})
    assert learner.task_weighting.temperature == 0.2
    assert learner.task_weighting.encoder.task_dim == 8
    assert "temprature" in _message({"task_attention.temprature": 0.2})
    assert "unknown option 'inner_lr.x'" in _message({"inner_lr.x": 1}, "maml")


def test_task_selector_trains_on_the_tasks_like_its_targets():
    torch.manual_seed(0)
    targets = Multimodal(shots=10, queries=5, kinds=("sinusoid",), seed=0).fixed_tasks(5, seed=2)
    batch = Multimodal(shots=10, queries=5, seed=0).sample_batch(40)
    learner = build("attention-maml", model=MLP(1, (8,), 1), task_type="regression", inner_lr=0.05,
                    task_attention={"kind": "selector", "keep": 8, "uniform_share": 0.0, "temperature": 0.02})
    learner.task_attention.targets = targets  # a config cannot hold tasks: set them on the selector
    out = learner.meta_loss(batch)
    chosen = learner.last_selected
    assert out.task_losses.shape == (8,) and len(set(chosen.tolist())) == 8
    kinds = [batch.infos[i]["kind"] for i in chosen.tolist()]
    assert kinds.count("sinusoid") >= 6, kinds  # base rate about 1 in 5
    maml = MAML(copy.deepcopy(learner.model), "regression", inner_lr=0.05)
    subset = TaskBatch.stack([batch[i] for i in chosen.tolist()])
    torch.testing.assert_close(out.loss, maml.meta_loss(subset).loss, rtol=0, atol=0)
    learner.eval()  # evaluation uses the whole batch
    assert learner.meta_loss(batch).task_losses.shape == (40,)


def test_task_selector_errors():
    model = MLP(1, (4,), 1)
    with pytest.raises(ValueError, match="needs keep=N"):
        AttentionMAML(model, "regression", task_attention=TaskSelector())
    with pytest.raises(ValueError, match="for 1-d regression"):
        AttentionMAML(model, "classification", ways=2, task_attention=TaskSelector(keep=2))
    learner = AttentionMAML(model, "regression", task_attention=TaskSelector(keep=2))
    with pytest.raises(ValueError, match="needs targets"):
        learner.meta_loss(Sinusoid(shots=3, queries=3).sample_batch(4))
    with pytest.raises(ValueError, match="keep must be a positive int"):
        TaskSelector(keep=0)


def test_feature_attention_on_a_custom_sequential_through_block_names():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 1)).double()
    learner = build("attention-maml", model=net, task_type="regression", in_shape=[1], inner_lr=0.05,
                    inner_steps=2, feature_attention={"task_dim": 8, "block_names": ["1", "3"]},
                    task_attention={"task_dim": 8}, param_attention=True)
    assert isinstance(learner.model, FiLMBackbone) and learner.model.block_names == ["1", "3"]
    assert [gate.channels for gate in learner.model.gates] == [16, 12]
    with torch.no_grad():
        for gate in learner.model.gates:
            gate.channel.weight.normal_(0, 0.3)
    batch = Sinusoid(shots=5, queries=5, seed=0).sample_batch(3).to("cpu", torch.float64)
    learner.strategy = "loop"
    out_loop, grads_loop = learner.meta_gradient(batch)
    learner.strategy = "vmap"
    out_vmap, grads_vmap = learner.meta_gradient(batch)
    torch.testing.assert_close(out_vmap.loss, out_loop.loss, rtol=1e-10, atol=1e-12)
    for name, grad in grads_loop.items():
        torch.testing.assert_close(grads_vmap[name], grad, rtol=1e-8, atol=1e-10, msg=name)
    assert any(grads_loop[n].abs().sum() > 0 for n in grads_loop if n.startswith("model.gates."))
    assert learner.predict(batch[0]).shape == (5, 1)
    with pytest.raises(ValueError, match="not submodules"):
        AttentionMAML(net, "regression", in_shape=(1,), feature_attention=FeatureAttention(block_names=["9"]))


def test_param_attention_object_is_the_step_rule():
    rule = ParamAttentionRule(0.1, mode="topk", top_k=1)
    learner = AttentionMAML(MLP(1, (4,), 1), "regression", param_attention=rule)
    assert learner.rule is rule and learner.param_attention
    with pytest.raises(ValueError, match="learn_inner_lr does not apply"):
        AttentionMAML(MLP(1, (4,), 1), "regression", param_attention=ParamAttentionRule(),
                      learn_inner_lr=True)
    with pytest.raises(TypeError, match="param_attention must be a ParamAttentionRule"):
        AttentionMAML(MLP(1, (4,), 1), "regression", param_attention={"mode": "soft"})


def test_a_selector_from_a_config_trains_with_validation_targets(tmp_path):
    """``task_attention: {kind: selector}`` in a run config: the trainer gives the selector fixed tasks of
    the validation source as targets, and each step trains on ``keep`` tasks of the meta-batch."""
    from attnmeta.train import RunConfig, train

    config = RunConfig(benchmark="sinusoid", algo="attention-maml", steps=3, meta_batch=6, eval_every=3,
                       eval_episodes=2, test_episodes=2, checkpoint_every=3, plot=False, threads=1,
                       algo_options={"task_attention": {"kind": "selector", "keep": 2}},
                       run_dir=str(tmp_path / "run"))
    result = train(config, quiet=True, print_fn=lambda _: None)
    assert result.steps == 3 and result.summary["test"]["metric"] == "mse"
