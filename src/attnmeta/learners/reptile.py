"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

For each task of a meta-batch, ``inner_steps`` steps of the inner optimiser (the paper: Adam with
``beta1 = 0``) on the task's support set, from the meta-parameters ``theta``, give ``phi_t``; the outer
update moves ``theta`` towards their mean: ``theta <- theta + eps (mean_t phi_t - theta)``. Here that
update is the gradient of the surrogate loss ``0.5 mean_t ||theta - sg(phi_t)||^2`` (its gradient is
``theta - mean_t phi_t``), so the one trainer applies it with its outer optimiser: ``optimizer: sgd,
momentum: 0, lr: eps`` is the paper's update; Adam on the same direction is a common variant. The query set
is not used for the update, only for the reported training metrics (after adaptation). Evaluation is
MAML's: ``eval_inner_steps`` steps on the support set, then predict the queries.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnmeta.learners.inner import AdamRule, StepRule, adapt
from attnmeta.learners.maml import MAML
from attnmeta.learners.registry import register


class Reptile(MAML):
    """Reptile on any ``nn.Module`` (the options of ``MAML`` apply, always first order).

    Args:
        inner_lr / inner_steps / eval_inner_steps: the inner optimiser's rate and steps in meta-training
            and in ``predict`` (the paper, Omniglot: Adam 1e-3, 5 steps in training, 50 at test).
        rule: ``"adam"`` (the paper's inner optimiser, with ``inner_betas``), ``"sgd"``, ``"momentum"`` or
            a ``StepRule``.
        inner_betas: Adam's ``(beta1, beta2)`` for ``rule="adam"`` (the paper: ``beta1 = 0``).
    """

    name = "reptile"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_lr: float = 1e-3,
                 inner_steps: int = 5, eval_inner_steps: int | None = 50, rule: str | StepRule = "adam",
                 inner_betas: tuple[float, float] = (0.0, 0.999), **options: Any) -> None:
        if options.get("first_order") is False or options.get("multi_step_loss"):
            raise ValueError("Reptile is first order and has no query loss: drop first_order / "
                             "multi_step_loss")
        options.pop("first_order", None)
        if rule == "adam":
            rule = AdamRule(inner_lr, betas=(float(inner_betas[0]), float(inner_betas[1])))
        super().__init__(model, task_type, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, rule=rule, first_order=True, **options)

    def _task_outer(self, params: dict[str, Tensor], buffers: dict[str, Tensor], support_x: Tensor,
                    support_y: Tensor, query_x: Tensor, query_y: Tensor, *, ways: int, steps: int,
                    first_order: bool, msl_weights: Tensor | None,
                    model: nn.Module | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(0.5 ||theta - sg(phi)||^2, query outputs after adaptation, trace)`` for one task."""
        forward = self._forward_fn(buffers, ways, model)
        adapted, trace = adapt(forward, params, support_x, support_y, loss_fn=self.task_loss, rule=self.rule,
                               steps=steps, adapt_names=self.adapt_names, first_order=True,
                               inner_grad=self._inner_grad)
        phi = {n: adapted[n].detach() for n in self.adapt_names}
        loss = 0.5 * torch.stack([((params[n] - phi[n]) ** 2).sum() for n in self.adapt_names]).sum()
        with torch.no_grad():
            outputs = forward({**params, **phi}, query_x)
        return loss, outputs, trace


@register("reptile", head=True, description="Reptile: first-order meta-learning towards adapted weights")
def build_reptile(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                  **options: Any) -> Reptile:
    return Reptile(model, task_type, ways=ways, **options)
