"""MAML and Reptile for sequence-to-sequence tasks, through the library's one inner loop (``adapt``).

``Seq2SeqMAML``: per task, ``inner_steps`` steps of the step rule on the support pairs' token
cross-entropy, from the meta-parameters; the outer loss is the query pairs' cross-entropy with the adapted
parameters (second order unless ``first_order``). ``Seq2SeqReptile``: the same inner loop (Adam, the
paper's inner optimiser), and the outer gradient ``theta - mean_t phi_t`` (``attnmeta.learners.reptile``).
At test time MAML takes ``eval_inner_steps`` steps of its rule on the new task's support pairs, or, with
``eval_inner_steps=None``, the fine-tuning every sequence learner shares (``Seq2SeqLearner.adapt``: Adam on
batches of the support pairs); Reptile fine-tunes by default.

Task attention over the meta-batch of languages (``task_weighting``): the library's ``TaskWeighting``
gives each task a weight from its descriptor statistics (support loss and gradient norm before and after
adaptation, the query loss, the cosine of its query gradient with the rest of the meta-batch's); the outer
loss is ``mean_t(w_t L_t)`` with the weights as constants, and the weighting module learns from the one-step
look-ahead objective (``attnmeta.learners.task_attention``), so a language whose gradient disagrees with the
others' (noisy data, an outlier) counts less.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnmeta.learners.base import MetaOutput
from attnmeta.learners.inner import StepRule, adapt, make_rule
from attnmeta.learners.seq2seq.base import EncodedTask, Params, Seq2SeqLearner, batch_output
from attnmeta.learners.task_attention import (
    MetaBatchWeighting,
    TaskWeighting,
    cosine_alignment,
    descriptor_stats,
)
from attnmeta.tasks.seq2seq import Seq2SeqBatch, Vocabulary


class Seq2SeqMAML(Seq2SeqLearner):
    """MAML (Finn et al. 2017) on a character Transformer; tasks are languages (or domains).

    Args:
        vocabulary: see ``Seq2SeqLearner`` (and its model options, passed through ``model_options``).
        rule: the inner step rule, ``"sgd"`` (MAML), ``"meta-sgd"``, ``"lslr"`` (MAML++), ``"adam"``, or a
            ``StepRule``.
        inner_lr / inner_steps / eval_inner_steps: the rule's rate, and its steps in meta-training and at
            test time (``None``: the shared fine-tuning, ``finetune_*`` options, at test time).
        first_order: ignore second derivatives (FOMAML).
        task_weighting: attention over the meta-batch's tasks: ``True`` (``MetaBatchWeighting``'s defaults),
            a mapping of its ``temperature`` / ``entropy`` / ``mode`` / ``standardize``, or one; ``False``:
            every task counts the same.
    """

    name = "maml"

    def __init__(self, vocabulary: Vocabulary, *, rule: str | StepRule = "sgd", inner_lr: float = 0.1,
                 inner_steps: int = 3, eval_inner_steps: int | None = 20, first_order: bool = True,
                 task_weighting: bool | dict[str, Any] | MetaBatchWeighting = False,
                 **model_options: Any) -> None:
        super().__init__(vocabulary, **model_options)
        if inner_steps < 0 or (eval_inner_steps is not None and eval_inner_steps < 0):
            raise ValueError("inner_steps and eval_inner_steps must be >= 0")
        self.rule = make_rule(rule, inner_lr)
        self.inner_steps, self.eval_inner_steps, self.first_order = inner_steps, eval_inner_steps, first_order
        shapes = {n: p.shape for n, p in self.model.named_parameters()}
        self.rule.bind(shapes, max(inner_steps, eval_inner_steps or 0, 1))
        self.weighting = weighting_module(task_weighting)

    def inner(self, params: Params, encoded: EncodedTask, steps: int, first_order: bool) -> Params:
        """``steps`` steps of the rule on the support pairs (the library's ``adapt``)."""
        source, target = encoded.support_source, encoded.support_target
        packed = torch.cat([source, target], dim=1)
        adapted, _ = adapt(self.packed_forward(source.shape[1]), params, packed, target,
                           loss_fn=self.task_loss, rule=self.rule, steps=steps, first_order=first_order,
                           inner_grad="autograd")
        return adapted

    def meta_loss(self, batch: Seq2SeqBatch) -> MetaOutput:
        if self.weighting is not None:
            return self.weighted_meta_loss(batch, self.weighting)
        params = self.params()
        losses, support = [], []
        for task in batch:
            encoded = self.encode_task(task)
            adapted = self.inner(params, encoded, self.inner_steps, self.first_order)
            losses.append(self.outer_loss(params, adapted, encoded))
            with torch.no_grad():
                support.append(self.pair_loss(params, encoded.support_source, encoded.support_target).item())
        return batch_output(losses, {"support_loss_before": sum(support) / len(support)})

    def weighted_meta_loss(self, batch: Seq2SeqBatch, weighting: TaskWeighting) -> MetaOutput:
        """``mean_t(w_t L_t)`` with task-attention weights ``w`` (constants) plus the weighting module's
        look-ahead objective (which trains only that module)."""
        params = self.params()
        losses, stats, grads = [], [], []
        for task in batch:
            encoded = self.encode_task(task)
            adapted = self.inner(params, encoded, self.inner_steps, self.first_order)
            query = self.outer_loss(params, adapted, encoded)
            used = [p for p in adapted.values() if p.requires_grad]
            task_grads = torch.autograd.grad(query, used, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([g.flatten() for g in task_grads if g is not None]).detach())
            before, after = self._support_fit(params, encoded), self._support_fit(adapted, encoded)
            stats.append(torch.stack([before[0], after[0], before[1], after[1], query.detach()]))
            losses.append(query)
        s = torch.stack(stats)  # [T, 5]
        alignment = cosine_alignment(torch.stack(grads)) if len(losses) > 1 else None
        descriptor = descriptor_stats(s[:, 0], s[:, 1], s[:, 2], s[:, 3], s[:, 4],
                                      torch.zeros(len(losses)) if alignment is None else alignment)
        probs, objective = weighting.weigh(descriptor.detach(), None, alignment)
        weights = len(losses) * probs.detach()
        task_losses = torch.stack(losses)
        outer = (weights * task_losses).mean()
        return MetaOutput(outer + objective, task_losses.detach(), {
            "loss": outer.item(), "weighting_objective": objective.item(),
            "task_weight_min": weights.min().item(), "task_weight_max": weights.max().item(),
            "support_loss_before": s[:, 0].mean().item()})

    def _support_fit(self, params: Params, encoded: EncodedTask) -> tuple[Tensor, Tensor]:
        """The support loss under ``params`` and the norm of its gradient (detached)."""
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        with torch.enable_grad():
            loss = self.pair_loss(leaves, encoded.support_source, encoded.support_target)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        norm = torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.zeros(())))
        return loss.detach(), norm

    def outer_loss(self, params: Params, adapted: Params, encoded: EncodedTask) -> Tensor:
        return self.pair_loss(adapted, encoded.query_source, encoded.query_target)

    def adapt(self, encoded: EncodedTask, member: int = 0) -> Params:
        if self.eval_inner_steps is None:
            return super().adapt(encoded, member)
        params = {n: p.detach().requires_grad_() for n, p in self.params().items()}
        with torch.enable_grad():
            adapted = self.inner(params, encoded, self.eval_inner_steps, first_order=True)
        return {n: p.detach() for n, p in adapted.items()}


class Seq2SeqReptile(Seq2SeqMAML):
    """Reptile (Nichol et al. 2018): Adam in the inner loop (``beta1 = 0`` as in the paper) and the outer
    gradient ``theta - phi`` from the surrogate ``0.5 ||theta - sg(phi)||^2`` (the trainer's optimiser then
    moves ``theta`` towards ``phi``); the query pairs only report the loss after adaptation."""

    name = "reptile"

    def __init__(self, vocabulary: Vocabulary, *, inner_lr: float = 1e-3, inner_steps: int = 5,
                 eval_inner_steps: int | None = None, inner_betas: tuple[float, float] = (0.0, 0.999),
                 **model_options: Any) -> None:
        from attnmeta.learners.inner import AdamRule

        rule = AdamRule(inner_lr, betas=(float(inner_betas[0]), float(inner_betas[1])))
        super().__init__(vocabulary, rule=rule, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, first_order=True, **model_options)

    def outer_loss(self, params: Params, adapted: Params, encoded: EncodedTask) -> Tensor:
        return 0.5 * torch.stack([((params[n] - adapted[n].detach()) ** 2).sum() for n in params]).sum()


def weighting_module(option: bool | dict[str, Any] | MetaBatchWeighting | None) -> TaskWeighting | None:
    """The task-attention module of ``task_weighting`` (``None`` when off)."""
    if option is None or option is False:
        return None
    if option is True:
        option = MetaBatchWeighting()
    elif isinstance(option, dict):
        allowed = ("temperature", "entropy", "mode", "standardize")
        unknown = sorted(set(option) - set(allowed))
        if unknown:
            raise ValueError(f"task_weighting takes no option {unknown[0]!r}; valid: {', '.join(allowed)}")
        option = MetaBatchWeighting(**option)
    if not isinstance(option, MetaBatchWeighting):
        raise ValueError(f"task_weighting must be true, false or a mapping of options, got {option!r}")
    if option.heldout is not None or option.scale_free or option.x_encoder is not None:
        raise ValueError("sequence tasks take the task_weighting options temperature, entropy, mode and "
                         "standardize only (no held-out tasks, scale_free or x_encoder)")
    return option.module(None)
