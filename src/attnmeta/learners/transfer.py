"""Transfer-learning baselines (Chen et al. 2019, "A closer look at few-shot classification").

``transfer`` (Baseline): pre-train the embedding network with a linear classifier over **all** training
classes; at test time freeze the embedding and fine-tune a new linear head on the support set.
``baseline++``: the same with a cosine classifier (``scale * cos(w_c, f(x))``) for pre-training and
fine-tuning.

Standard (non-episodic) batches are derived from the episodes the trainer already samples: every support
and query example of a ``TaskBatch`` is labelled with its original class id, ``batch.classes[t, y]``
(the sampler's augmented class id, e.g. character x rotation for Omniglot). So ``meta_loss`` is plain
cross-entropy over ``num_classes`` classes on ``T * (n_support + n_query)`` images, and the same trainer,
checkpoints and budgets work for it. ``num_classes`` must be at least the number of training classes.

Fine-tuning (``predict``): ``finetune_steps`` full-batch steps of SGD (momentum 0.9, weight decay 1e-3,
as in Chen et al.) on the detached support features, from a head initialised with a fixed seed, so
predictions are deterministic.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.learners.matching import check_classification_batch, infer_feature_dim
from attnmeta.learners.registry import register
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["TransferBaseline", "CosineClassifier"]

HEADS = ("linear", "cosine")


class CosineClassifier(nn.Module):
    """``logits = scale * cos(x, w_c)``: ``[B, D] -> [B, classes]`` (Baseline++)."""

    def __init__(self, in_features: int, classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, in_features) / in_features ** 0.5)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


def _make_head(kind: str, in_features: int, classes: int, scale: float) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, classes)
    return CosineClassifier(in_features, classes, scale)


class TransferBaseline(Learner):
    """Pre-train on all training classes, fine-tune a new head on each support set.

    Args:
        model: embedding network ``[B, *input_shape] -> [B, D]``.
        num_classes: number of training classes (labels are ``batch.classes[t, y] < num_classes``).
        head: ``"linear"`` (Baseline) or ``"cosine"`` (Baseline++).
        feature_dim / input_shape: embedding size, or an input shape to infer it.
        finetune_steps / finetune_lr: support-set fine-tuning of the new head at predict time.
        scale: cosine-classifier scale. seed: seed of the fine-tuned head's initialisation.
    """

    name = "transfer"

    def __init__(self, model: nn.Module, num_classes: int, *, head: str = "linear",
                 task_type: str = "classification", feature_dim: int | None = None,
                 input_shape: tuple[int, ...] | None = None, finetune_steps: int = 100,
                 finetune_lr: float = 0.01, scale: float = 10.0, seed: int = 0) -> None:
        super().__init__(task_type)
        if task_type != "classification":
            raise ValueError("the transfer baselines are classification learners; "
                             "use task_type='classification'")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS} ('cosine' is Baseline++), got {head!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be the number of training classes (an int >= 2), got "
                             f"{num_classes!r}")
        if finetune_steps < 1 or finetune_lr <= 0:
            raise ValueError(f"finetune_steps must be >= 1 and finetune_lr > 0, got {finetune_steps}, "
                             f"{finetune_lr}")
        self.model, self.head_kind, self.num_classes = model, head, num_classes
        self.feature_dim = feature_dim or infer_feature_dim(model, input_shape)
        self.classifier = _make_head(head, self.feature_dim, num_classes, scale)
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr
        self.scale, self.seed = scale, seed
        self.name = "baseline++" if head == "cosine" else "transfer"

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Cross-entropy over all training classes on every image of the meta-batch (see module docstring)."""
        check_classification_batch(batch, self.name)
        if int(batch.classes.max()) >= self.num_classes or int(batch.classes.min()) < 0:
            raise ValueError(f"episode class ids must be in 0..{self.num_classes - 1} (num_classes="
                             f"{self.num_classes}), got ids up to {int(batch.classes.max())}; build the "
                             "learner with num_classes = the number of training classes of the sampler")
        inputs = torch.cat([batch.support_x, batch.query_x], dim=1)
        original = batch.classes.to(batch.support_y.device)  # class ids are metadata: kept on the CPU
        labels = torch.gather(original, 1, torch.cat([batch.support_y, batch.query_y], dim=1))
        logits = self.classifier(self.model(inputs.flatten(0, 1)).flatten(1))
        losses = F.cross_entropy(logits, labels.flatten(), reduction="none").view(len(batch), -1)
        task_losses = losses.mean(1)
        accuracy = (logits.argmax(-1) == labels.flatten()).float().mean().item()
        return MetaOutput(task_losses.mean(), task_losses.detach(),
                          {"loss": task_losses.mean().item(), "accuracy": accuracy})

    def finetune_head(self, support_features: Tensor, support_y: Tensor, ways: int) -> nn.Module:
        """Fit a new ``ways``-class head on detached support features ``[ns, D]`` (deterministic)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            head = _make_head(self.head_kind, support_features.shape[1], ways, self.scale)
        head = head.to(support_features.device, support_features.dtype)
        optimizer = torch.optim.SGD(head.parameters(), lr=self.finetune_lr, momentum=0.9, weight_decay=1e-3)
        with torch.enable_grad():
            for _ in range(self.finetune_steps):
                loss = F.cross_entropy(head(support_features), support_y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return head

    def predict(self, task: Task) -> Tensor:
        check_classification_batch(task, self.name)
        with torch.no_grad():
            features = self.model(torch.cat([task.support_x, task.query_x])).flatten(1)
        support, query = features[:task.support_x.shape[0]], features[task.support_x.shape[0]:]
        head = self.finetune_head(support, task.support_y, task.ways)
        with torch.no_grad():
            return head(query)


def _num_classes(options: dict, task_type: str) -> int:
    if task_type != "classification":
        raise ValueError("the transfer baselines are for classification only; for regression use a gradient "
                         "learner such as maml")
    if "num_classes" not in options:
        raise ValueError("the transfer baselines need num_classes=<number of training classes> "
                         "(the pre-training classifier's size), e.g. len(sampler.classes)")
    return options.pop("num_classes")


@register("transfer", head=False, description="Baseline (Chen et al. 2019): pre-train on all classes, "
                                               "fine-tune a linear head on the support set")
def build_transfer(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                   **options: Any) -> TransferBaseline:
    classes = _num_classes(options, task_type)
    return TransferBaseline(model, classes, task_type=task_type, head="linear", **options)


@register("baseline++", head=False, description="Baseline++ (Chen et al. 2019): cosine classifier for "
                                                 "pre-training and support-set fine-tuning")
def build_baseline_pp(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                      **options: Any) -> TransferBaseline:
    classes = _num_classes(options, task_type)
    return TransferBaseline(model, classes, task_type=task_type, head="cosine", **options)
