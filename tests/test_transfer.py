"""Transfer baselines: pre-training labels from episodes, cosine classifier, deterministic fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnmeta.eval import evaluate
from attnmeta.learners import build
from attnmeta.learners.transfer import CosineClassifier, TransferBaseline
from attnmeta.tasks.episode import Task, TaskBatch
from test_matching import gaussian_task, omniglot, small_conv


def test_pretraining_uses_global_class_ids():
    torch.manual_seed(0)
    learner = TransferBaseline(nn.Linear(8, 6), num_classes=10)
    task = gaussian_task(3, 1, 2)
    task = Task(task.support_x, task.support_y, task.query_x, task.query_y, torch.tensor([7, 2, 9]))
    batch = TaskBatch.stack([task])
    out = learner.meta_loss(batch)
    features = learner.model(torch.cat([task.support_x, task.query_x]))
    labels = torch.tensor([7, 2, 9, 7, 7, 2, 2, 9, 9])
    expected = F.cross_entropy(learner.classifier(features), labels)
    torch.testing.assert_close(out.loss, expected)
    assert out.task_losses.shape == (1,)


def test_cosine_classifier_is_scaled_cosine():
    head = CosineClassifier(4, 3, scale=10.0)
    x = torch.randn(5, 4)
    expected = 10 * F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(head(3 * x), head(x))


@pytest.mark.parametrize("algo", ["transfer", "baseline++"])
def test_finetuning_fits_the_support_set_deterministically(algo):
    torch.manual_seed(0)
    learner = build(algo, model=nn.Identity(), task_type="classification", ways=5, num_classes=20,
                    feature_dim=8)
    task = gaussian_task(5, 3, 4)
    first, second = learner.predict(task), learner.predict(task)
    assert first.shape == (20, 5)
    torch.testing.assert_close(first, second)
    support_accuracy = (learner.predict(Task(task.support_x, task.support_y, task.support_x, task.support_y,
                                             task.classes)).argmax(1) == task.support_y).float().mean()
    assert support_accuracy == 1.0


def test_errors():
    with pytest.raises(ValueError, match="num_classes=<number of training classes>"):
        build("transfer", model=nn.Identity(), task_type="classification", ways=5, feature_dim=8)
    with pytest.raises(ValueError, match="head must be one of"):
        TransferBaseline(nn.Identity(), 10, head="mlp", feature_dim=8)
    learner = TransferBaseline(nn.Identity(), 5, feature_dim=8)
    task = gaussian_task(3, 1, 1)
    task = Task(task.support_x, task.support_y, task.query_x, task.query_y, torch.tensor([1, 2, 30]))
    with pytest.raises(ValueError, match="class ids must be in 0..4"):
        learner.meta_loss(TaskBatch.stack([task]))


def test_pretraining_on_omniglot_transfers(shared_data: Path):
    """Pre-train on 64 background characters (16-way batches), fine-tune on evaluation-alphabet episodes."""
    from attnmeta.data.omniglot import Omniglot
    from attnmeta.tasks.sampler import EpisodeSampler

    torch.manual_seed(0)
    root = shared_data / "omniglot"
    background = Omniglot(root, background=True)
    train = EpisodeSampler(background.float_images(), background.labels, 16, 1, 4, classes=torch.arange(64),
                           seed=0)
    bench = omniglot(str(root))
    torch.manual_seed(0)
    learner = TransferBaseline(small_conv(), 64, finetune_steps=30)
    episodes = bench.test.fixed_tasks(30, seed=0)
    before = evaluate(learner, episodes).mean
    optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss = learner.meta_loss(train.sample_batch(1, generator)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    batches = [train.sample_batch(1, generator) for _ in range(5)]  # fresh batches of the 64 classes
    seen_classes = sum(learner.meta_loss(batch).metrics["accuracy"] for batch in batches) / 5
    after = evaluate(learner, episodes).mean
    # measured: 64-way accuracy on fresh batches 0.1125 (chance 0.016); 5-way 0.408 -> 0.476
    assert seen_classes > 0.07, seen_classes
    assert after > before + 0.04, (before, after)


@pytest.mark.parametrize("name", ["transfer", "baseline++"])
def test_regression_is_refused_as_classification_only_before_asking_for_num_classes(name):
    from attnmeta import learners

    with pytest.raises(ValueError, match=r"^the transfer baselines are for classification only; for "
                                         r"regression use a gradient learner such as maml$"):
        learners.build(name, model=torch.nn.Linear(1, 4), task_type="regression")
