"""Attention-MAML: MAML plus any combination of task, feature and parameter attention, given as objects.

* ``task_attention``: a ``MetaBatchWeighting`` (the meta-batch is weighted by a ``TaskWeighting``: attention
  over per-task descriptors, trained by a first-order one-step look-ahead on its ``heldout`` tasks or, without
  them, leave-one-out; see ``attnmeta.learners.task_attention``) or a ``TaskSelector`` (attentive task
  selection: in training, each meta-batch is a pool from which ``keep`` tasks like its ``targets`` are drawn).
* ``feature_attention``: a ``FeatureAttention``: the model is wrapped in ``FiLMBackbone`` (any backbone made
  of blocks, or ``block_names``); a ``TaskEncoder`` embeds each task's support set and every block is gated by
  it. ``mode="all"`` adapts every model parameter in the inner loop; ``"context"`` adapts only the
  ``task_dim`` context vector (CAVIA-like, cheaper).
* ``param_attention``: a ``ParamAttentionRule``, the inner step rule (per-task, per-step attention weights
  over parameter tensors; ``mode="soft"`` or ``"topk"``).

``True`` stands for each mechanism's default object (the paper's options). With none it is exactly ``MAML``.
Registered as ``"attention-maml"``, buildable from a plain config (``attnmeta.learners.attention_config``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from attnmeta.learners.attention_config import INNER_LR, attention_options
from attnmeta.learners.base import MetaOutput
from attnmeta.learners.inner import Forward, adapt
from attnmeta.learners.maml import MAML, _check_int
from attnmeta.learners.param_attention import ParamAttentionRule
from attnmeta.learners.registry import register
from attnmeta.learners.task_attention import (
    MetaBatchWeighting,
    TaskSelector,
    cosine_alignment,
    descriptor_stats,
    function_signature,
)
from attnmeta.nn.film import FeatureAttention, make_task_encoder
from attnmeta.tasks.episode import Task, TaskBatch

TaskAttention = MetaBatchWeighting | TaskSelector


def _input_shape(model: nn.Module) -> tuple[int, ...] | None:
    if hasattr(model, "in_shape"):
        return tuple(model.in_shape)  # type: ignore[arg-type]  # a plain attribute, typed by Module.__getattr__
    if hasattr(model, "in_features") and isinstance(model.in_features, int):
        return (model.in_features,)
    return None


class AttentionMAML(MAML):
    """MAML with task, feature and/or parameter attention (see the module docstring).

    Args (beyond ``MAML``'s, which are passed through; ``head_init="zero"`` / ``"shared"`` / ``"prototypes"``
    start every task's inner loop from a zero, shared or prototype output layer under any combination of
    mechanisms, as in ``MAML``):
        task_attention: ``MetaBatchWeighting``, ``TaskSelector``, ``True`` (``MetaBatchWeighting()``) or None.
        feature_attention: ``FeatureAttention``, ``True`` (``FeatureAttention()``) or None.
        param_attention: ``ParamAttentionRule`` (the step rule; its own ``lr`` is used), ``True``
            (``ParamAttentionRule(inner_lr, learn_lr=learn_inner_lr)``) or None.
        in_shape: shape of one input, if the model has no ``in_shape`` / ``in_features`` attribute.
        y_features: target size of the task encoders for regression (default the model's ``out_features``).
    """

    name = "attention-maml"

    supports_threads = False  # its _task_outer evaluates self.model directly

    def __init__(self, model: nn.Module, task_type: str = "classification", *, ways: int | None = None,
                 task_attention: TaskAttention | bool | None = None,
                 feature_attention: FeatureAttention | bool | None = None,
                 param_attention: ParamAttentionRule | bool | None = None,
                 in_shape: Sequence[int] | None = None, y_features: int | None = None,
                 inner_lr: float = INNER_LR, **maml_options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        tasks, feature = _task_attention(task_attention, task_type), _feature_attention(feature_attention)
        weighting = tasks if isinstance(tasks, MetaBatchWeighting) else None
        classification = task_type == "classification"
        if (feature or weighting) and classification and ways is None:
            raise ValueError("task and feature attention encode labels one-hot: pass ways=N")
        in_shape = tuple(in_shape) if in_shape is not None else _input_shape(model)
        if (feature or weighting) and in_shape is None:
            raise ValueError(f"cannot infer the input shape of {type(model).__name__}; pass in_shape=(...)")
        if y_features is None:
            y_features = ways if classification else int(getattr(model, "out_features", None) or 1)
        if feature is not None:
            model = feature.wrap(model, in_shape)
            if feature.mode == "context":
                maml_options.setdefault("adapt", ["context"])
        rule = _step_rule(param_attention, inner_lr, maml_options)
        if rule is not None:
            maml_options["rule"] = rule
        super().__init__(model, task_type, ways=ways, inner_lr=inner_lr, **maml_options)
        self.task_attention, self.feature_attention = tasks, feature

        def encoder(options: FeatureAttention | MetaBatchWeighting) -> nn.Module:
            assert in_shape is not None and y_features is not None  # checked above when attention is on
            return make_task_encoder(in_shape, y_features, options.task_dim, x_encoder=options.x_encoder,
                                     classification=classification)

        self.task_encoder = encoder(feature) if feature is not None else None
        self.task_weighting = weighting.module(encoder(weighting)) if weighting is not None else None
        reference = next(self.model.parameters())
        self.to(device=reference.device, dtype=reference.dtype)
        self.last_task_weights: Tensor | None = None
        self.last_selected: Tensor | None = None
        self.heldout = weighting.heldout_tasks() if weighting is not None else None

    def accumulates(self) -> bool:
        """Task weighting (``MetaBatchWeighting``) needs every task's differentiable trace at once."""
        return self.task_weighting is None

    @property
    def param_attention(self) -> bool:
        """Whether the step rule is parameter attention."""
        return isinstance(self.rule, ParamAttentionRule)

    # --- forward with the task embedding ----------------------------------------------------------
    def _embedding(self, support_x: Tensor, support_y: Tensor) -> Tensor | None:
        return self.task_encoder(support_x, support_y) if self.task_encoder is not None else None

    def _conditioned_forward(self, buffers: Mapping[str, Tensor], ways: int,
                             embedding: Tensor | None, *, outer: bool = False) -> Forward:
        if not self.feature_attention:
            return self._forward_fn(buffers, ways, outer=outer)
        model, classify = self.model, self.task_type == "classification"

        def forward(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
            out = functional_call(model, ({**params, **buffers},), (x, embedding))
            return out[..., :ways] if classify else out

        return forward

    def _task_outer(self, params: dict[str, Tensor], buffers: dict[str, Tensor], support_x: Tensor,
                    support_y: Tensor, query_x: Tensor, query_y: Tensor, *, ways: int, steps: int,
                    first_order: bool, msl_weights: Tensor | None,
                    model: nn.Module | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        assert model is None  # only the "threads" strategy passes a model, and supports_threads is False
        embedding = self._embedding(support_x, support_y)
        forward = self._conditioned_forward(buffers, ways, embedding)
        query = (query_x, query_y) if msl_weights is not None else None
        params = self.task_start(params, forward, support_x, support_y, ways)
        adapted, trace = adapt(forward, params, support_x, support_y, loss_fn=self.task_loss,
                               rule=self.rule, steps=steps, adapt_names=self.adapt_names,
                               first_order=first_order, query=query,
                               inner_grad=getattr(self, "_inner_grad", "func"))
        outputs = self._conditioned_forward(buffers, ways, embedding, outer=True)(adapted, query_x)
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
        """Outer loss. With ``MetaBatchWeighting``: ``mean_t(w_t L_t)`` (weights detached) plus the weighting
        module's look-ahead objective ``J`` (which only trains the weighting module). ``metrics["loss"]``
        is the outer loss alone; ``metrics["weight_corrupted"/"weight_clean"]`` are mean weights by
        ``info["corrupted"]`` when present. With a ``TaskSelector`` (training mode): MAML's loss on the
        ``keep`` tasks it selects from ``batch`` (indices in ``last_selected``)."""
        if isinstance(self.task_attention, TaskSelector) and self.training:
            batch = self._select(batch)
        if self.task_weighting is None:
            return super().meta_loss(batch, task_weights)
        assert isinstance(self.task_attention, MetaBatchWeighting)  # the one with a task_weighting module
        if task_weights is not None:
            raise ValueError("task attention (MetaBatchWeighting) computes the task weights; "
                             "do not pass task_weights")
        losses, outputs, trace = self.task_outer_losses(batch)
        tasks = losses.shape[0]
        steps = trace["support_loss"].shape[1] if "support_loss" in trace else 0
        loss_before = trace["support_loss"][:, 0] if steps else trace["loss_after"]
        grad_before = trace["grad_norm"][:, 0] if steps else trace["grad_norm_after"]
        loo = (cosine_alignment(trace["task_grad"]) if tasks > 1
               else torch.zeros_like(trace["loss_after"]))
        stats = descriptor_stats(loss_before, trace["loss_after"], grad_before, trace["grad_norm_after"],
                                 losses.detach(), loo,
                                 trace["loss_reference"] if self.task_attention.scale_free else None)
        if self.heldout is not None:
            alignment: Tensor | None = cosine_alignment(trace["task_grad"],
                                                        self.heldout_gradient(self._heldout_window()))
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
        """This meta-step's held-out tasks: a window of ``heldout_batch`` rotating with the step."""
        assert self.heldout is not None and isinstance(self.task_attention, MetaBatchWeighting)
        total = len(self.heldout)
        size = min(self.task_attention.heldout_batch, total)
        index = (int(self.meta_steps) * size + torch.arange(size)) % total
        ref = next(self.model.parameters())
        return _subset(self.heldout, index).to(ref.device, ref.dtype)

    def _select(self, batch: TaskBatch) -> TaskBatch:
        """The tasks of ``batch`` the ``TaskSelector`` draws (``keep`` of them)."""
        assert isinstance(self.task_attention, TaskSelector)
        self._check_batch(batch)
        index = self.task_attention.select(list(batch))
        self.last_selected = index
        return _subset(batch, index)

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
            start = self.task_start(params, forward, sx, sy, ways)
            adapted, _ = adapt(forward, start, sx, sy, loss_fn=self.task_loss, rule=self.rule, steps=steps,
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
        ways = self._ways_of(task)
        forward = self._conditioned_forward(dict(self.model.named_buffers()), ways,
                                            self._embedding(task.support_x, task.support_y))
        params = self.task_start(self.initial_params(), forward, task.support_x, task.support_y, ways)
        return adapt(forward, params, task.support_x, task.support_y, loss_fn=self.task_loss,
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
            params = self.task_start(params, forward, task.support_x, task.support_y, self._ways_of(task))
            adapted, _ = adapt(forward, params, task.support_x, task.support_y, loss_fn=self.task_loss,
                               rule=self.rule, steps=steps, adapt_names=self.adapt_names, first_order=True,
                               inner_grad="autograd")
            return self._conditioned_forward(dict(self.model.named_buffers()), self._ways_of(task), embedding,
                                             outer=True)(adapted, task.query_x)


def _subset(batch: TaskBatch, index: Tensor) -> TaskBatch:
    """Tasks ``index [k]`` of ``batch``."""
    infos = tuple(batch.infos[i] for i in index.tolist()) if batch.infos else ()
    return TaskBatch(batch.support_x[index], batch.support_y[index], batch.query_x[index],
                     batch.query_y[index], batch.classes[index], infos)


def _task_attention(value: TaskAttention | bool | None, task_type: str) -> TaskAttention | None:
    if value is True:
        return MetaBatchWeighting()
    if value is None or value is False:
        return None
    if not isinstance(value, (MetaBatchWeighting, TaskSelector)):
        raise TypeError(f"task_attention must be a MetaBatchWeighting, a TaskSelector, True or None, got "
                        f"{type(value).__name__} (configs: build('attention-maml', ...) reads mappings)")
    if isinstance(value, TaskSelector):
        if value.keep is None:
            raise ValueError("task_attention=TaskSelector(...) needs keep=N: the tasks of each meta-batch to "
                             "train on")
        if value.embed_fn is function_signature and task_type != "regression":
            raise ValueError("TaskSelector's default embedding (function_signature) is for 1-d regression; "
                             "pass TaskSelector(embed_fn=...) for classification tasks")
    return value


def _feature_attention(value: FeatureAttention | bool | None) -> FeatureAttention | None:
    if value is True:
        return FeatureAttention()
    if value is None or value is False:
        return None
    if not isinstance(value, FeatureAttention):
        raise TypeError(f"feature_attention must be a FeatureAttention, True or None, got "
                        f"{type(value).__name__} (configs: build('attention-maml', ...) reads mappings)")
    return value


def _step_rule(value: ParamAttentionRule | bool | None, inner_lr: float,
               maml_options: dict[str, Any]) -> ParamAttentionRule | None:
    """The parameter-attention step rule (``True``: the default one), checked against ``maml_options``."""
    if value is None or value is False:
        return None
    if value is not True and not isinstance(value, ParamAttentionRule):
        raise TypeError(f"param_attention must be a ParamAttentionRule, True or None, got "
                        f"{type(value).__name__} (configs: build('attention-maml', ...) reads mappings)")
    if "rule" in maml_options:
        raise ValueError("param_attention sets the step rule; do not pass rule=")
    if value is True:
        return ParamAttentionRule(inner_lr, learn_lr=bool(maml_options.pop("learn_inner_lr", False)))
    if maml_options.get("learn_inner_lr"):
        raise ValueError("learn_inner_lr does not apply to a ParamAttentionRule object; "
                         "pass ParamAttentionRule(lr, learn_lr=True)")
    maml_options.pop("learn_inner_lr", None)
    return value


def _check_config(options: dict[str, Any]) -> None:
    attention_options(options)


@register("attention-maml", head=True, check=_check_config,
          nested=("task_attention", "feature_attention", "param_attention"),
          description="MAML + task / feature / parameter attention (options task_attention, "
                      "feature_attention, param_attention: true or a mapping of their options)")
def build_attention_maml(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                         **options: Any) -> AttentionMAML:
    """``AttentionMAML`` from plain options: nested mappings become objects (``attention_config``)."""
    return AttentionMAML(model, task_type, ways=ways, **attention_options(options))
