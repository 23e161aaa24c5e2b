"""MAML and its family as one learner: MAML, FOMAML, Meta-SGD, ANIL, MAML++ options.

All variants are the same inner loop (``attnmeta.learners.inner.adapt``) with different pieces:

============  =====================================================================
``maml``      ``rule="sgd"``, all parameters, second order
``fomaml``    ``first_order=True``
``meta-sgd``  ``rule="meta-sgd"`` (learnable per-parameter learning rates)
``anil``      ``adapt="head"`` (only the last layer adapts)
``maml++``    ``rule="lslr"``, multi-step loss, first-to-second-order annealing
============  =====================================================================

Any of them can start each task's output layer from zero (``head_init="zero"``, Kao et al. 2022), from one
meta-learned row shared by every class (``head_init="shared"``, UnicornMAML, Ye & Chao 2022) or from the
support set's class prototypes (``head_init="prototypes"``, Proto-MAML, Triantafillou et al. 2020).

Four execution strategies compute the same meta-gradient: ``"loop"`` (a Python loop over the tasks of a
meta-batch keeping the whole meta-batch's graph; the reference, whose outer loss can be differentiated again),
``"accumulate"`` (the same loop, but each task's meta-gradient is taken as soon as its loss exists and its
graph freed: peak memory of one task; first derivatives of the outer loss only), ``"vmap"``
(``torch.func.vmap`` over tasks, for GPUs) and ``"threads"`` (CPU: the tasks split over
``torch.get_num_threads()`` Python threads, each with its own copy of the model's module structure and one
intra-op thread, each task's meta-gradient computed in its thread). ``"auto"`` picks vmap on CUDA and
accumulate elsewhere (loop where a learner's outer loss needs the graphs of all tasks at once);
``benchmarks/bench_meta_step.py`` measures them against learn2learn.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.learners.heads import ROW_SYMMETRIC, check_head_init, initialise_head, prototype_head
from attnmeta.learners.inner import Forward, SGDRule, StepRule, adapt, make_rule, select_names
from attnmeta.learners.task_gradients import accumulated_outer_losses, threaded_outer_losses
from attnmeta.nn.norm import convert_batch_norm
from attnmeta.tasks.episode import Task, TaskBatch

STRATEGIES = ("auto", "loop", "accumulate", "vmap", "threads")
PRECISIONS = ("fp32", "bf16")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class MAML(Learner):
    """Gradient-based meta-learner over any ``nn.Module`` (Finn et al. 2017 and variants).

    Args:
        model: the network; called as ``model(x)``; for classification it must output at least ``ways``
            logits (extra outputs are ignored: a task with ``N`` ways uses the first ``N``).
        task_type: ``"classification"`` or ``"regression"``.
        ways: ways used in meta-training (metadata; any ``N <= `` the model's outputs works at test time).
        inner_lr: inner learning rate (initial value for learnable rules).
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps in ``predict`` (default ``inner_steps``).
        first_order: FOMAML (inner gradients are constants in the outer gradient).
        rule: ``"sgd"``, ``"lslr"`` (MAML++ per-layer per-step LRs), ``"meta-sgd"`` or a ``StepRule``.
        learn_inner_lr: with ``rule="sgd"``, make the scalar LR a meta-parameter.
        adapt: which parameters adapt: ``"all"``, ``"head"`` (ANIL) or parameter names/module prefixes.
        multi_step_loss: MAML++ multi-step loss: weighted query loss after every inner step.
        msl_anneal_steps: meta-steps over which the multi-step weights anneal to the last step only.
        first_order_until: use first order for the first this many meta-steps, then second order (MAML++).
        strategy: ``"auto"``, ``"loop"``, ``"accumulate"``, ``"vmap"`` or ``"threads"`` (see the module
            docstring; the outer loss of accumulate and threads carries each task's precomputed
            meta-gradient, so it supports first derivatives w.r.t. the learner's parameters, not
            ``create_graph=True``; accumulate runs as the loop when the batch's tensors require grad).
        convert_bn: replace ``nn.BatchNorm1d/2d`` in ``model`` by batch-statistics batch norm
            (``attnmeta.nn.norm``), whose second-order gradients are correct under vmap.
        head_init: where each task's inner loop starts for the output layer (the last module with
            parameters): ``"learned"`` (MAML: a meta-learned head), ``"zero"`` (a zero head, not meta-learned:
            the zeroing trick of Kao et al. 2022), ``"shared"`` (one meta-learned row copied to every class:
            UnicornMAML, Ye & Chao 2022) or ``"prototypes"`` (rows ``2 c_k`` and biases ``-|c_k|^2`` from each
            task's support features: Proto-MAML, Triantafillou et al. 2020); see ``heads``. The head must
            adapt.
        precision: ``"fp32"`` (default) or ``"bf16"``: opt-in mixed precision for the outer pass: the query
            forward (and its derivatives) runs under ``torch.autocast(dtype=torch.bfloat16)`` (matmuls and
            convolutions in bf16), while the inner loop, parameters, updates and losses stay in the model's
            dtype (the inner loop's second-order terms are what rounding hurts: a bf16 inner loop moved the
            meta-gradient's cosine to float64 from 0.99995 to 0.983 on Omniglot Conv-4, and was no faster).
            Pays off on GPUs and on CPUs with native bf16 (AVX512-BF16 / AMX); on other CPUs bf16 is
            emulated and much slower (a warning says so).
    """

    name = "maml"
    any_ways = True
    supports_threads = True  # subclasses whose ``_task_outer`` reads ``self.model`` directly set False
    meta_steps: Tensor  # buffer: meta-steps taken in training mode

    def __init__(self, model: nn.Module, task_type: str = "classification", *, ways: int | None = None,
                 inner_lr: float = 0.01, inner_steps: int = 1, eval_inner_steps: int | None = None,
                 first_order: bool = False, rule: str | StepRule = "sgd", learn_inner_lr: bool = False,
                 adapt: str | Collection[str] = "all", multi_step_loss: bool = False,
                 msl_anneal_steps: int = 0, first_order_until: int = 0, strategy: str = "auto",
                 convert_bn: bool = True, precision: str = "fp32", head_init: str = "learned") -> None:
        super().__init__(task_type)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.inner_steps = _check_int("inner_steps", inner_steps, 0)
        self.eval_inner_steps = (self.inner_steps if eval_inner_steps is None
                                 else _check_int("eval_inner_steps", eval_inner_steps, 0))
        self.msl_anneal_steps = _check_int("msl_anneal_steps", msl_anneal_steps, 0)
        self.first_order_until = _check_int("first_order_until", first_order_until, 0)
        if ways is not None:
            _check_int("ways", ways, 1)
        self.ways, self.first_order, self.strategy = ways, first_order, strategy
        self.multi_step_loss = multi_step_loss
        self.model = convert_batch_norm(model) if convert_bn else model
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if not names:
            raise ValueError("model has no trainable parameters to meta-learn")
        self.adapt_names = select_names(names, adapt)
        self.head_init = head_init
        self.head_names = check_head_init(head_init, names, self.adapt_names, task_type,
                                          {n: p.shape for n, p in self.model.named_parameters()})
        if isinstance(rule, str) and rule == "sgd":
            self.rule: StepRule = SGDRule(inner_lr, learnable=learn_inner_lr)
        else:
            self.rule = make_rule(rule, inner_lr)
        shapes = dict(self.model.named_parameters())
        self.rule.bind({n: shapes[n].shape for n in self.adapt_names},
                       max(self.inner_steps, self.eval_inner_steps, 1))
        self.rule.to(next(self.model.parameters()))
        self.register_buffer("meta_steps", torch.zeros((), dtype=torch.long))
        if precision == "bf16":
            _warn_if_bf16_is_emulated(next(self.model.parameters()).device)
        self.last_trace: dict[str, Tensor] = {}
        self._inner_grad = "func"

    # --- pieces ---------------------------------------------------------------------------------
    def model_params(self) -> dict[str, Tensor]:
        """The model's trainable parameters by name (the meta-learned initialisation)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def initial_params(self) -> dict[str, Tensor]:
        """Where every task's inner loop starts: ``model_params`` with the head set by ``head_init``."""
        return initialise_head(self.model_params(), self.head_names, self.head_init)

    def task_start(self, params: dict[str, Tensor], forward: Forward, support_x: Tensor, support_y: Tensor,
                   ways: int, model: nn.Module | None = None) -> dict[str, Tensor]:
        """One task's starting point from ``initial_params``: the head from its support set's prototypes
        under ``head_init="prototypes"`` (``heads.prototype_head``), else ``params`` unchanged."""
        if self.head_init != "prototypes":
            return params
        return prototype_head(model if model is not None else self.model, forward, params, self.head_names,
                              support_x, support_y, ways)

    @property
    def head_rows_shared(self) -> bool:
        """Does every class start the same way (``head_init`` zero, shared or prototypes)? Then any number
        of ways up to the model's outputs trains and tests the same head (``train_ways`` may differ)."""
        return self.head_init in ROW_SYMMETRIC

    def resolved_strategy(self) -> str:
        """The strategy in use (``"auto"``: vmap on CUDA, else accumulate where ``accumulates()``, else
        loop)."""
        if self.strategy != "auto":
            return self.strategy
        if next(self.model.parameters()).is_cuda:
            return "vmap"
        return "accumulate" if self.accumulates() else "loop"

    def accumulates(self) -> bool:
        """Can each task's meta-gradient be taken alone (``strategy="accumulate"``)? False in subclasses whose
        outer loss needs more of a task than its loss (e.g. a differentiable trace)."""
        return True

    def current_first_order(self) -> bool:
        """First order now? (``first_order``, or annealing still within ``first_order_until`` meta-steps)."""
        return self.first_order or (self.training and int(self.meta_steps) < self.first_order_until)

    def step_loss_weights(self, steps: int) -> Tensor:
        """MAML++ multi-step loss weights ``[steps]`` at the current meta-step (sum to 1)."""
        if steps < 1:
            raise ValueError("the multi-step loss needs at least one inner step")
        weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
        if self.msl_anneal_steps > 0 and steps > 1:
            t = int(self.meta_steps)
            if t >= self.msl_anneal_steps:
                weights = torch.zeros(steps, dtype=torch.float64)
                weights[-1] = 1.0
            else:
                decay, floor = 1.0 / steps / self.msl_anneal_steps, 0.03 / steps
                weights[:-1] = (weights[:-1] - t * decay).clamp(min=floor)
                weights[-1] = min(1.0 / steps + t * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
        return weights

    def _forward_fn(self, buffers: Mapping[str, Tensor], ways: int, model: nn.Module | None = None, *,
                    outer: bool = False) -> Forward:
        """``forward(params, x)`` of the model; ``outer=True`` for the query pass (bf16 by ``precision``)."""
        model, classify = model if model is not None else self.model, self.task_type == "classification"
        bf16 = outer and self.precision == "bf16"

        def forward(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
            if bf16:
                with torch.autocast(x.device.type, dtype=torch.bfloat16):
                    out = functional_call(model, ({**params, **buffers},), (x,))
                out = out.to(next(iter(params.values())).dtype) if out.is_floating_point() else out
            else:
                out = functional_call(model, ({**params, **buffers},), (x,))
            if classify:
                if out.shape[-1] < ways:
                    raise ValueError(f"the model outputs {out.shape[-1]} logits but the task has {ways} "
                                     f"ways; build the model with at least {ways} outputs")
                out = out[..., :ways]
            return out

        return forward

    def _ways_of(self, task: Task | TaskBatch) -> int:
        if self.task_type != "classification":
            return 0
        if task.ways > 0:
            return task.ways
        return int(task.support_y.max()) + 1

    def _check_batch(self, batch: Any) -> None:
        if isinstance(batch, Task):
            raise TypeError("meta_loss expects a TaskBatch; wrap a single task with TaskBatch.stack([task])")
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"meta_loss expects a TaskBatch, got {type(batch).__name__}")
        self._check_targets(batch.support_y, batch.query_y, batch.support_x)

    def _check_targets(self, support_y: Tensor, query_y: Tensor, support_x: Tensor) -> None:
        if self.task_type == "classification" and support_y.dtype != torch.long:
            raise TypeError(f"classification targets must be int64 labels, got {support_y.dtype}; "
                            "build the learner with task_type='regression' for float targets")
        if self.task_type == "regression" and not support_y.is_floating_point():
            raise TypeError(f"regression targets must be float, got {support_y.dtype}; "
                            "build the learner with task_type='classification' for labels")
        param = next(self.model.parameters())
        if support_x.is_floating_point() and support_x.dtype != param.dtype:
            raise TypeError(f"inputs are {support_x.dtype} but the model is {param.dtype}; convert one, "
                            f"e.g. batch.to(device, dtype={param.dtype})")
        if support_x.device != param.device:
            raise ValueError(f"inputs are on {support_x.device} but the model is on {param.device}; "
                             f"move the batch with batch.to({str(param.device)!r})")

    def _check_no_running_stats(self, where: str) -> None:
        for name, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                raise ValueError(f"model layer {name!r} is a torch BatchNorm with running statistics, which "
                                 f"it updates in place; that cannot run {where}. Build the learner with "
                                 "convert_bn=True (batch-statistics BN) or strategy='loop'")

    # --- one task -------------------------------------------------------------------------------
    def _task_outer(self, params: dict[str, Tensor], buffers: dict[str, Tensor], support_x: Tensor,
                    support_y: Tensor, query_x: Tensor, query_y: Tensor, *, ways: int, steps: int,
                    first_order: bool, msl_weights: Tensor | None,
                    model: nn.Module | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        forward = self._forward_fn(buffers, ways, model)
        query = (query_x, query_y) if msl_weights is not None else None
        params = self.task_start(params, forward, support_x, support_y, ways, model)
        adapted, trace = adapt(forward, params, support_x, support_y, loss_fn=self.task_loss,
                               rule=self.rule, steps=steps, adapt_names=self.adapt_names,
                               first_order=first_order, query=query, inner_grad=self._inner_grad)
        outputs = self._forward_fn(buffers, ways, model, outer=True)(adapted, query_x)
        loss = self.task_loss(outputs, query_y)
        if msl_weights is not None:
            loss = (msl_weights.to(loss.dtype) * trace["query_loss"]).sum()
        return loss, outputs, trace

    def adapt_task(self, task: Task,
                   inner_steps: int | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Adapt to ``task``'s support set: ``(adapted params by name, trace)`` (see ``inner.adapt``).

        Differentiable w.r.t. the meta-parameters (second order unless ``first_order``)."""
        steps = self.eval_inner_steps if inner_steps is None else _check_int("inner_steps", inner_steps, 0)
        self._check_targets(task.support_y, task.query_y, task.support_x)
        buffers = dict(self.model.named_buffers())
        ways = self._ways_of(task)
        forward = self._forward_fn(buffers, ways)
        params = self.task_start(self.initial_params(), forward, task.support_x, task.support_y, ways)
        return adapt(forward, params, task.support_x, task.support_y, loss_fn=self.task_loss,
                     rule=self.rule, steps=steps, adapt_names=self.adapt_names,
                     first_order=self.current_first_order(), inner_grad="autograd")

    # --- meta-batch -----------------------------------------------------------------------------
    def task_outer_losses(self, batch: TaskBatch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Per-task outer losses ``[T]`` (differentiable, un-reduced), query outputs ``[T, n_query, ...]``
        (detached) and the inner-loop trace (``{key: [T, steps]}``)."""
        self._check_batch(batch)
        steps, ways = self.inner_steps, self._ways_of(batch)
        first_order = self.current_first_order()
        msl = self.step_loss_weights(steps) if (self.multi_step_loss and steps > 0) else None
        params, buffers = self.initial_params(), dict(self.model.named_buffers())
        kwargs: dict[str, Any] = dict(ways=ways, steps=steps, first_order=first_order, msl_weights=msl)
        if self.resolved_strategy() == "threads":
            return self._threaded_outer_losses(batch, params, buffers, kwargs)
        if self.resolved_strategy() == "accumulate":
            if not self.accumulates():
                raise ValueError(f"strategy='accumulate' is not available for {type(self).__name__} with "
                                 "these options; use strategy='loop'")
            differentiable_inputs = any(t.requires_grad for t in (batch.support_x, batch.query_x))
            if torch.is_grad_enabled() and not differentiable_inputs:  # else the loop: gradients reach them
                self._inner_grad = "autograd"
                return accumulated_outer_losses(self, batch, buffers, kwargs)
        vectorized = self.resolved_strategy() == "vmap"
        if vectorized and self.training:
            self._check_no_running_stats("under vmap")
        # torch.autograd.grad in a Python loop (less overhead), torch.func.grad under vmap
        self._inner_grad = "func" if vectorized else "autograd"
        if vectorized:
            def one(sx: Tensor, sy: Tensor, qx: Tensor,
                    qy: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
                return self._task_outer(params, buffers, sx, sy, qx, qy, **kwargs)

            losses, outputs, trace = torch.func.vmap(one, randomness="different")(
                batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        else:
            results = [self._task_outer(params, buffers, *parts, **kwargs)
                       for parts in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y)]
            losses = torch.stack([r[0] for r in results])
            outputs = torch.stack([r[1] for r in results])
            trace = {k: torch.stack([r[2][k] for r in results]) for k in results[0][2]}
        return losses, outputs.detach(), trace

    def _threaded_outer_losses(self, batch: TaskBatch, params: dict[str, Tensor], buffers: dict[str, Tensor],
                               kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``task_outer_losses`` for ``strategy="threads"`` (``attnmeta.learners.threads``)."""
        if not type(self).supports_threads:
            raise ValueError(f"strategy='threads' is not available for {type(self).__name__}; "
                             "use strategy='loop' (or 'vmap')")
        if next(self.model.parameters()).device.type != "cpu":
            raise ValueError("strategy='threads' is for CPU tensors; use strategy='vmap' on a GPU")
        if self.training:
            self._check_no_running_stats("in parallel threads")
        if torch.is_grad_enabled() and any(t.requires_grad for t in (batch.support_x, batch.query_x)):
            raise ValueError("strategy='threads' takes gradients for the learner's parameters only, but the "
                             "batch's tensors require grad; use strategy='loop' or 'accumulate'")
        self._inner_grad = "autograd"
        return threaded_outer_losses(self, batch, params, buffers, kwargs)

    def meta_loss(self, batch: TaskBatch, task_weights: Tensor | None = None) -> MetaOutput:
        """Outer loss of a meta-batch: mean of the per-task query losses after adaptation, or
        ``(task_weights * task_losses).sum()`` with ``task_weights [T]`` (e.g. from task attention).

        Counts one meta-step (for annealing) when the learner is in training mode."""
        losses, outputs, trace = self.task_outer_losses(batch)
        if task_weights is None:
            loss = losses.mean()
        else:
            if not isinstance(task_weights, Tensor) or task_weights.shape != losses.shape:
                raise ValueError(f"task_weights must be a tensor of shape {tuple(losses.shape)} (one "
                                 f"weight per task), got "
                                 f"{getattr(task_weights, 'shape', type(task_weights).__name__)}")
            loss = (task_weights.to(losses.dtype) * losses).sum()
        self.last_trace = {k: v.detach() for k, v in trace.items()}
        metrics = {"loss": loss.item()}
        with torch.no_grad():
            if self.task_type == "classification":
                metrics["accuracy"] = (outputs.argmax(-1) == batch.query_y).float().mean().item()
            else:
                metrics["mse"] = (outputs - batch.query_y).pow(2).mean().item()
            if "support_loss" in trace:
                metrics["support_loss_before"] = trace["support_loss"][:, 0].mean().item()
        if self.training:
            self.meta_steps += 1
        return MetaOutput(loss, losses, metrics)

    def meta_gradient(self, batch: TaskBatch) -> tuple[MetaOutput, dict[str, Tensor]]:
        """Meta-loss and its gradient w.r.t. every meta-parameter (``named_parameters`` of the learner)."""
        out = self.meta_loss(batch)
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(out.loss, [p for _, p in named], allow_unused=True)
        return out, {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads)}

    def predict(self, task: Task, inner_steps: int | None = None) -> Tensor:
        """Adapt (``inner_steps``, default ``eval_inner_steps``) and return outputs for ``task.query_x``."""
        if not isinstance(task, Task):
            raise TypeError(f"predict expects a Task, got {type(task).__name__}; "
                            "index a TaskBatch for one task")
        steps = self.eval_inner_steps if inner_steps is None else _check_int("inner_steps", inner_steps, 0)
        self._check_targets(task.support_y, task.query_y, task.support_x)
        ways = self._ways_of(task)
        buffers = dict(self.model.named_buffers())
        forward = self._forward_fn(buffers, ways)
        with torch.no_grad():
            params = {n: p.detach() for n, p in self.initial_params().items()}
            params = self.task_start(params, forward, task.support_x, task.support_y, ways)
            adapted, trace = adapt(forward, params, task.support_x, task.support_y, loss_fn=self.task_loss,
                                   rule=self.rule, steps=steps, adapt_names=self.adapt_names,
                                   first_order=True, inner_grad="autograd")
            out = self._forward_fn(buffers, ways, outer=True)(adapted, task.query_x)
        if not bool(torch.isfinite(out).all()):
            losses = trace.get("support_loss", torch.zeros(0)).tolist()
            warnings.warn(f"the inner loop diverged: non-finite predictions after {steps} inner steps "
                          f"(meta-trained with {self.inner_steps}; support loss before each step: "
                          f"{', '.join(f'{v:.3g}' for v in losses)}). Learned inner rates (Meta-SGD, LSLR) "
                          f"are tuned for the number of steps they were meta-trained with; evaluate with "
                          f"inner_steps={self.inner_steps}", RuntimeWarning, stacklevel=2)
        return out


def _warn_if_bf16_is_emulated(device: torch.device) -> None:
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn("precision='bf16' on a CPU without native bf16 instructions (AVX512-BF16 / AMX): "
                      "bf16 convolutions and matrix products are emulated and several times slower than "
                      "fp32 here; use it on a GPU or a bf16-capable CPU", RuntimeWarning, stacklevel=3)
