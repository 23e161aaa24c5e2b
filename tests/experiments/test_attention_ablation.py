"""experiments/attention/attention_ablation.py trains through attnmeta.train (fast smoke checks)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ablation(experiment):
    return experiment("attention", "attention_ablation")


def test_methods_map_to_attention_maml_or_the_plugin(ablation):
    assert ablation.method_options("maml", "sinusoid5")[0] == "attention-maml"
    assert ablation.method_options("+param", "sinusoid5")[0] == "attention-maml"
    algo, options = ablation.method_options("+task(loo)", "corrupted")
    assert algo == ablation.PLUGIN and options["heldout"] is False
    algo, options = ablation.method_options("attentive", "selection", meta_batch=4)
    assert algo == ablation.PLUGIN and options["task_attention"]["keep"] == 4


def test_oracle_and_task_attention_record_through_the_trainer(ablation):
    oracle = ablation.run_one("corrupted", "oracle", steps=2, time_budget=60, meta_batch=4, test_count=5)
    assert oracle["steps"] == 2 and len(oracle["per_task"]) == 5 and "weights_log" not in oracle
    task = ablation.run_one("corrupted", "+task", steps=2, time_budget=60, meta_batch=4, test_count=5)
    assert len(task["weights_log"]) == 2 * 4 and "weight_clean" in task


def test_attentive_selection_keeps_meta_batch_tasks(ablation):
    record = ablation.run_one("selection", "attentive", steps=2, time_budget=60, meta_batch=3, test_count=5)
    assert sum(record["selected_kinds"].values()) == 2 * 3
