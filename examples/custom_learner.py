"""A custom learner in 60 lines: closed-form ridge regression on meta-learned features (R2-D2 style).

Register it and train it like any built-in learner::

    attnmeta train sinusoid --import examples/custom_learner.py --algo ridge --steps 300
    attnmeta train omniglot --import examples/custom_learner.py --algo ridge --root ../shared/data/omniglot

The model is an embedding network (``head=False``): per task, a ridge regression from support features to
targets (one-hot labels for classification) is solved in closed form (dual form, ``n_support`` unknowns), so
the outer gradient flows through the solve into the features, the ridge penalty and the logit scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnmeta.learners import Learner, MetaOutput, register
from attnmeta.tasks.episode import Task, TaskBatch


class RidgeLearner(Learner):
    """Features ``phi = model(x)`` ``[n, d]``; per task ``W = phi_s^T (phi_s phi_s^T + l2 I)^-1 Y_s``."""

    name = "ridge"

    def __init__(
        self, model: nn.Module, task_type: str = "classification", ways: int | None = None, l2: float = 1.0
    ) -> None:
        super().__init__(task_type)
        if l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        self.model = model
        self.log_l2 = nn.Parameter(torch.tensor(math.log(l2)))
        self.log_scale = nn.Parameter(torch.tensor(0.0))

    def _outputs(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int) -> Tensor:
        features_s, features_q = self.model(support_x), self.model(query_x)
        ones_s = torch.ones(len(features_s), 1, dtype=features_s.dtype, device=features_s.device)
        ones_q = torch.ones(len(features_q), 1, dtype=features_q.dtype, device=features_q.device)
        features_s, features_q = torch.cat([features_s, ones_s], 1), torch.cat([features_q, ones_q], 1)
        if self.task_type == "classification":
            targets = nn.functional.one_hot(support_y, ways).to(features_s.dtype)
        else:
            targets = support_y
        gram = features_s @ features_s.T + self.log_l2.exp() * torch.eye(
            len(features_s), dtype=features_s.dtype, device=features_s.device
        )
        outputs = features_q @ features_s.T @ torch.linalg.solve(gram, targets)
        return outputs * self.log_scale.exp() if self.task_type == "classification" else outputs

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        ways = batch.ways
        losses, metrics = [], []
        for task in batch:
            outputs = self._outputs(task.support_x, task.support_y, task.query_x, ways)
            losses.append(self.task_loss(outputs, task.query_y))
            metrics.append(self.task_metrics(outputs, task.query_y))
        task_losses = torch.stack(losses)
        mean = {k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]}
        return MetaOutput(
            task_losses.mean(), task_losses.detach(), {"loss": task_losses.mean().item(), **mean}
        )

    def predict(self, task: Task) -> Tensor:
        with torch.no_grad():
            return self._outputs(task.support_x, task.support_y, task.query_x, task.ways)


@register(
    "ridge", head=False, description="closed-form ridge regression head on meta-learned features (example)"
)
def build_ridge(
    model: nn.Module, task_type: str = "classification", ways: int | None = None, **options
) -> RidgeLearner:
    return RidgeLearner(model, task_type, ways, **options)


if __name__ == "__main__":
    from attnmeta.train import RunConfig, train

    result = train(RunConfig(benchmark="sinusoid", algo="ridge", steps=300, run_dir="runs/example-ridge"))
    print(result.test)
