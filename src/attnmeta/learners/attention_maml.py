"""Attention-MAML: MAML plus any combination of task, feature and parameter attention, by flags.

* ``task_attention``: the meta-batch is weighted by ``TaskWeighting`` (attention over per-task descriptors,
  trained by a first-order one-step look-ahead; see ``attnmeta.learners.task_attention``). The look-ahead's
  held-out batch is ``weighting_heldout`` (a small trusted list of tasks) or, without it, leave-one-out.
* ``feature_attention``: the model is wrapped in ``FiLMBackbone``; a ``TaskEncoder`` embeds each task's
  support set and every block is gated by it. ``feature_mode="all"`` adapts every model parameter in the inner
  loop; ``"context"`` adapts only the ``task_dim`` context vector (CAVIA-like, cheaper).
* ``param_attention``: the inner step rule is ``ParamAttentionRule`` (per-task, per-step attention weights
  over parameter tensors; ``param_mode="soft"`` or ``"topk"``).

With no flag it is exactly ``MAML``. Registered as ``"attention-maml"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from attnmeta.learners.base import MetaOutput
from attnmeta.learners.inner import adapt
from attnmeta.learners.maml import MAML, _check_int
from attnmeta.learners.param_attention import ParamAttentionRule
from attnmeta.learners.registry import register
from attnmeta.learners.task_attention import TaskWeighting, cosine_alignment, descriptor_stats
from attnmeta.nn.film import FiLMBackbone, TaskEncoder
from attnmeta.tasks.episode import Task, TaskBatch

FEATURE_MODES = ("all", "context")


def _input_shape(model: nn.Module) -> tuple[int, ...] | None:
    if hasattr(model, "in_shape"):
        return tuple(model.in_shape)
    if hasattr(model, "in_features") and isinstance(model.in_features, int):
        return (model.in_features,)
    return None


class AttentionMAML(MAML):
    """MAML with task, feature and/or parameter attention (see the module docstring).

    Args (beyond ``MAML``'s, which are passed through; ``head_init="zero"`` / ``"shared"`` start every task's
    inner loop from a zero or shared output layer under any combination of mechanisms, as in ``MAML``):
        task_attention / feature_attention / param_attention: switch each mechanism on.
        feature_mode: ``"all"`` or ``"context"`` (only the FiLM context vector adapts in the inner loop).
        task_dim: size of task embeddings (feature attention and task weighting).
        spatial: feature attention also gates spatial positions (image backbones).
        in_shape: shape of one input, if the model has no ``in_shape`` / ``in_features`` attribute.
        x_encoder: feature extractor of the task encoder (default: flatten for vectors, a 32-filter Conv-4
            for images). y_features: target size for regression (default the model's ``out_features``).
        param_mode / param_top_k / param_lr_mode: ``ParamAttentionRule`` options.
        weighting_entropy / weighting_temperature / weighting_standardize / weighting_mode: ``TaskWeighting``
            options (``weighting_mode="gate"``, the default: an independent sigmoid gate per task;
            ``"softmax"``: one distribution over the meta-batch).
        weighting_scale_free: divide the descriptor losses by a per-task reference loss (regression: variance
            of the support targets; classification: ``log(ways)``), see ``descriptor_stats``.
        weighting_heldout: trusted held-out tasks (a list of ``Task``) for the weighting module's look-ahead;
            each meta-step uses ``weighting_heldout_batch`` of them (a rotating window, deterministic).
            Default: leave-one-out alignment within the meta-batch.
    """

    name = "attention-maml"

    supports_threads = False  # its _task_outer evaluates self.model directly

    def __init__(self, model: nn.Module, task_type: str = "classification", *, ways: int | None = None,
                 task_attention: bool = False, feature_attention: bool = False, param_attention: bool = False,
                 feature_mode: str = "all", task_dim: int = 32, spatial: bool = False,
                 in_shape: tuple[int, ...] | None = None, x_encoder: nn.Module | None = None,
                 y_features: int | None = None, param_mode: str = "soft", param_top_k: int = 1,
                 param_lr_mode: str = "scalar", weighting_entropy: float | None = None,
                 weighting_temperature: float = 0.1, weighting_heldout: Sequence[Task] | None = None,
                 weighting_heldout_batch: int = 10, weighting_standardize: bool = True,
                 weighting_scale_free: bool = False, weighting_mode: str = "gate", inner_lr: float = 0.01,
                 **maml_options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if feature_mode not in FEATURE_MODES:
            raise ValueError(f"feature_mode must be one of {FEATURE_MODES}, got {feature_mode!r}")
        if feature_mode == "context" and not feature_attention:
            raise ValueError("feature_mode='context' needs feature_attention=True")
        classification = task_type == "classification"
        if (feature_attention or task_attention) and classification and ways is None:
            raise ValueError("task and feature attention encode labels one-hot: pass ways=N")
        if weighting_heldout is not None and not task_attention:
            raise ValueError("weighting_heldout is the look-ahead set of task attention: "
                             "set task_attention=True")
        heldout = _stack_heldout(weighting_heldout) if weighting_heldout is not None else None
        _check_int("weighting_heldout_batch", weighting_heldout_batch, 1)
        in_shape = tuple(in_shape) if in_shape is not None else _input_shape(model)
        if (feature_attention or task_attention) and in_shape is None:
            raise ValueError(f"cannot infer the input shape of {type(model).__name__}; pass in_shape=(...)")
        if y_features is None:
            y_features = ways if classification else int(getattr(model, "out_features", None) or 1)
        encoder_args = (in_shape, x_encoder, y_features, task_dim, classification)
        if feature_attention:
            model = FiLMBackbone(model, task_dim, spatial=spatial, in_shape=in_shape)
            if feature_mode == "context":
                maml_options.setdefault("adapt", ["context"])
        if param_attention:
            if "rule" in maml_options:
                raise ValueError("param_attention=True sets the step rule; do not pass rule=")
            maml_options["rule"] = ParamAttentionRule(
                inner_lr, mode=param_mode, top_k=param_top_k, lr_mode=param_lr_mode,
                learn_lr=bool(maml_options.pop("learn_inner_lr", False)))
        super().__init__(model, task_type, ways=ways, inner_lr=inner_lr, **maml_options)
        self.task_attention, self.feature_attention = task_attention, feature_attention
        self.param_attention, self.feature_mode = param_attention, feature_mode
        self.task_encoder = _make_encoder(*encoder_args) if feature_attention else None
        self.task_weighting = (TaskWeighting(encoder=_make_encoder(*encoder_args), entropy=weighting_entropy,
                                             temperature=weighting_temperature,
                                             standardize=weighting_standardize, mode=weighting_mode)
                               if task_attention else None)
        reference = next(self.model.parameters())
        self.to(device=reference.device, dtype=reference.dtype)
        self.last_task_weights: Tensor | None = None
        self.weighting_heldout, self.weighting_heldout_batch = heldout, weighting_heldout_batch
        self.weighting_scale_free = weighting_scale_free

    # --- forward with the task embedding ----------------------------------------------------------
    def _embedding(self, support_x: Tensor, support_y: Tensor) -> Tensor | None:
        return self.task_encoder(support_x, support_y) if self.task_encoder is not None else None

    def _conditioned_forward(self, buffers: Mapping[str, Tensor], ways: int, embedding: Tensor | None):
        if not self.feature_attention:
            return self._forward_fn(buffers, ways)
        model, classify = self.model, self.task_type == "classification"

        def forward(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
            out = functional_call(model, ({**params, **buffers},), (x, embedding))
            return out[..., :ways] if classify else out

        return forward

    def _task_outer(self, params: dict[str, Tensor], buffers: dict[str, Tensor], support_x: Tensor,
                    support_y: Tensor, query_x: Tensor, query_y: Tensor, *, ways: int, steps: int,
                    first_order: bool, msl_weights: Tensor | None):
        embedding = self._embedding(support_x, support_y)
        forward = self._conditioned_forward(buffers, ways, embedding)
        query = (query_x, query_y) if msl_weights is not None else None
        adapted, trace = adapt(forward, params, support_x, support_y, loss_fn=self.task_loss,
                               rule=self.rule, steps=steps, adapt_names=self.adapt_names,
                               first_order=first_order, query=query,
                               inner_grad=getattr(self, "_inner_grad", "func"))
        outputs = forward(adapted, query_x)
        loss = self.task_loss(outputs, query_y)
        if msl_weights is not None:
            loss = (msl_weights.to(loss.dtype) * trace["query_loss"]).sum()
        if self.task_weighting is not None:
            trace = {**trace, **self._task_descriptor(adapted, buffers, ways, embedding, support_x, support_y,
                                                      query_x, query_y)}
        return loss, outputs, trace

    def _task_descriptor(self, adapted: dict[str, Tensor], buffers: Mapping[str, Tensor], ways: int,
                         embedding: Tensor | None, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                         query_y: Tensor) -> dict[str, Tensor]:
        """Post-adaptation support loss and gradient norm, first-order task gradient, support embedding."""
        forward = self._conditioned_forward(buffers, ways, None if embedding is None else embedding.detach())
        point = {n: t.detach() for n, t in adapted.items()}
        fast = {n: point[n] for n in self.adapt_names}
        fixed = {n: t for n, t in point.items() if n not in fast}

        def support_loss(f: dict[str, Tensor]) -> Tensor:
            return self.task_loss(forward({**fixed, **f}, support_x), support_y)

        def query_loss(p: dict[str, Tensor]) -> Tensor:
            return self.task_loss(forward(p, query_x), query_y)

        grads_after, loss_after = torch.func.grad_and_value(support_loss)(fast)
        task_grad = torch.func.grad(query_loss)(point)  # first-order meta-gradient of this task
        assert self.task_weighting is not None and self.task_weighting.encoder is not None
        if self.task_type == "classification":
            reference = torch.log(torch.tensor(float(max(ways, 2)), dtype=loss_after.dtype,
                                               device=loss_after.device))
        else:
            reference = (support_y - support_y.mean(0, keepdim=True)).pow(2).mean()
        return {"loss_after": loss_after.detach(), "loss_reference": reference.detach(),
                "grad_norm_after": torch.sqrt(sum((g ** 2).sum() for g in grads_after.values())).detach(),
                "task_grad": torch.cat([g.reshape(-1) for g in task_grad.values()]).detach(),
                "weighting_embedding": self.task_weighting.encoder(support_x, support_y)}

    # --- meta-batch --------------------------------------------------------------------------------
    def meta_loss(self, batch: TaskBatch, task_weights: Tensor | None = None) -> MetaOutput:
        """Outer loss. With task attention: ``mean_t(w_t L_t)`` (weights detached) plus the weighting
        module's look-ahead objective ``J`` (which only trains the weighting module). ``metrics["loss"]``
        is the outer loss alone; ``metrics["weight_corrupted"/"weight_clean"]`` are mean weights by
        ``info["corrupted"]`` when present."""
        if self.task_weighting is None:
            return super().meta_loss(batch, task_weights)
        if task_weights is not None:
            raise ValueError("task_attention=True computes the task weights; do not pass task_weights")
        losses, outputs, trace = self.task_outer_losses(batch)
        tasks = losses.shape[0]
        steps = trace["support_loss"].shape[1] if "support_loss" in trace else 0
        loss_before = trace["support_loss"][:, 0] if steps else trace["loss_after"]
        grad_before = trace["grad_norm"][:, 0] if steps else trace["grad_norm_after"]
        loo = (cosine_alignment(trace["task_grad"]) if tasks > 1
               else torch.zeros_like(trace["loss_after"]))
        stats = descriptor_stats(loss_before, trace["loss_after"], grad_before, trace["grad_norm_after"],
                                 losses.detach(), loo,
                                 trace["loss_reference"] if self.weighting_scale_free else None)
        if self.weighting_heldout is not None:
            alignment = cosine_alignment(trace["task_grad"], self.heldout_gradient(self._heldout_window()))
        else:
            alignment = loo if tasks > 1 else None
        probs, objective = self.task_weighting.weigh(stats.detach(), trace["weighting_embedding"], alignment)
        weights = tasks * probs
        outer = (weights.detach().to(losses.dtype) * losses).mean()
        self.last_task_weights = weights.detach()
        self.last_trace = {k: v.detach() for k, v in trace.items() if k != "task_grad"}
        metrics = {"loss": outer.item(), "weighting_objective": objective.item()}
        with torch.no_grad():
            if self.task_type == "classification":
                metrics["accuracy"] = (outputs.argmax(-1) == batch.query_y).float().mean().item()
            else:
                metrics["mse"] = (outputs - batch.query_y).pow(2).mean().item()
        corrupted = [bool(info.get("corrupted", False)) for info in batch.infos] if batch.infos else []
        if corrupted and any(corrupted):
            mask = torch.tensor(corrupted)
            metrics["weight_corrupted"] = weights[mask].mean().item()
            if not all(corrupted):
                metrics["weight_clean"] = weights[~mask].mean().item()
        if self.training:
            self.meta_steps += 1
        return MetaOutput(outer + objective, losses, metrics)

    def _heldout_window(self) -> TaskBatch:
        """This meta-step's held-out tasks: a window of ``weighting_heldout_batch`` rotating with the step."""
        assert self.weighting_heldout is not None
        total = len(self.weighting_heldout)
        size = min(self.weighting_heldout_batch, total)
        index = (int(self.meta_steps) * size + torch.arange(size)) % total
        ref = next(self.model.parameters())
        held = self.weighting_heldout
        batch = TaskBatch(held.support_x[index], held.support_y[index], held.query_x[index],
                          held.query_y[index], held.classes[index],
                          tuple(held.infos[i] for i in index.tolist()) if held.infos else ())
        return batch.to(ref.device, ref.dtype)

    def heldout_gradient(self, batch: TaskBatch) -> Tensor:
        """Mean unit first-order meta-gradient ``mean_s g_s / ||g_s||`` ``[P]`` (all model parameters,
        flattened in ``model_params`` order) of the tasks of ``batch``: the held-out direction of the
        weighting look-ahead (each held-out task counts equally). Detached."""
        self._check_batch(batch)
        steps, ways = self.inner_steps, self._ways_of(batch)
        params = {n: p.detach() for n, p in self.initial_params().items()}
        buffers = dict(self.model.named_buffers())
        names = list(params)

        def one(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
            embedding = self._embedding(sx, sy)
            embedding = None if embedding is None else embedding.detach()
            forward = self._conditioned_forward(buffers, ways, embedding)
            adapted, _ = adapt(forward, params, sx, sy, loss_fn=self.task_loss, rule=self.rule, steps=steps,
                               adapt_names=self.adapt_names, first_order=True, inner_grad="func")
            point = {n: t.detach() for n, t in adapted.items()}
            grads = torch.func.grad(lambda p: self.task_loss(forward(p, qx), qy))(point)
            return torch.cat([grads[n].reshape(-1) for n in names])

        parts = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        with torch.no_grad():  # torch.func.grad inside still differentiates; nothing outside is recorded
            if self.resolved_strategy() == "vmap":
                grads = torch.func.vmap(one, randomness="different")(*parts)
            else:
                grads = torch.stack([one(*task) for task in zip(*parts)])
        # each held-out task counts equally (unit steps), as in the leave-one-out alignment
        return (grads / grads.norm(dim=-1, keepdim=True).clamp_min(1e-12)).mean(0)

    # --- one task ------------------------------------------------------------------------------------
    def adapt_task(self, task: Task,
                   inner_steps: int | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if not self.feature_attention:
            return super().adapt_task(task, inner_steps)
        steps = self.eval_inner_steps if inner_steps is None else _check_int("inner_steps", inner_steps, 0)
        self._check_targets(task.support_y, task.query_y, task.support_x)
        forward = self._conditioned_forward(dict(self.model.named_buffers()), self._ways_of(task),
                                            self._embedding(task.support_x, task.support_y))
        return adapt(forward, self.initial_params(), task.support_x, task.support_y, loss_fn=self.task_loss,
                     rule=self.rule, steps=steps, adapt_names=self.adapt_names,
                     first_order=self.current_first_order(), inner_grad="autograd")

    def predict(self, task: Task, inner_steps: int | None = None) -> Tensor:
        if not self.feature_attention:
            return super().predict(task, inner_steps)
        if not isinstance(task, Task):
            raise TypeError(f"predict expects a Task, got {type(task).__name__}; "
                            "index a TaskBatch for one task")
        steps = self.eval_inner_steps if inner_steps is None else _check_int("inner_steps", inner_steps, 0)
        self._check_targets(task.support_y, task.query_y, task.support_x)
        with torch.no_grad():
            embedding = self._embedding(task.support_x, task.support_y)
            forward = self._conditioned_forward(dict(self.model.named_buffers()), self._ways_of(task),
                                                embedding)
            params = {n: p.detach() for n, p in self.initial_params().items()}
            adapted, _ = adapt(forward, params, task.support_x, task.support_y, loss_fn=self.task_loss,
                               rule=self.rule, steps=steps, adapt_names=self.adapt_names, first_order=True,
                               inner_grad="autograd")
            return forward(adapted, task.query_x)


def _stack_heldout(tasks: Sequence[Task] | TaskBatch) -> TaskBatch:
    if isinstance(tasks, TaskBatch):
        return tasks
    if isinstance(tasks, Task) or not isinstance(tasks, Sequence) or not tasks:
        raise TypeError("weighting_heldout must be a non-empty list of Task "
                        "(e.g. family.fixed_tasks(20, seed))")
    if not all(isinstance(t, Task) for t in tasks):
        raise TypeError("weighting_heldout must contain only Task values")
    try:
        return TaskBatch.stack(list(tasks))
    except Exception as error:  # shapes differ
        raise ValueError(f"weighting_heldout tasks must all have the same shapes: {error}") from None


def _make_encoder(in_shape: tuple[int, ...], x_encoder: nn.Module | None, y_features: int, task_dim: int,
                  classification: bool) -> TaskEncoder:
    if x_encoder is None and len(in_shape) == 3:
        from attnmeta.nn.backbones import Conv4

        x_encoder = Conv4(in_shape, hidden=32)
        x_features = x_encoder.feature_dim
    elif x_encoder is not None:
        with torch.no_grad():
            x_features = int(x_encoder(torch.zeros(2, *in_shape)).shape[-1])
    else:
        x_features = int(math.prod(in_shape))
    return TaskEncoder(x_features, y_features, task_dim, x_encoder=x_encoder, classification=classification)


@register("attention-maml", head=True,
          description="MAML + task / feature / parameter attention (flags task_attention, feature_attention, "
                      "param_attention)")
def build_attention_maml(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                         **options: Any) -> AttentionMAML:
    return AttentionMAML(model, task_type, ways=ways, **options)
