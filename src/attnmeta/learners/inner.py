"""The inner loop of gradient-based meta-learning as a pure function, with pluggable step rules.

Parameters are explicit values: a ``dict[str, Tensor]`` keyed by the model's parameter names
(``model.named_parameters()``), evaluated with ``torch.func.functional_call``. ``adapt`` takes such a dict
and a task's support set and returns the adapted dict and a per-step trace; nothing is stored on the model,
so the same function runs in a Python loop over tasks or under ``torch.func.vmap``.

A *step rule* turns ``(step, params, grads, state)`` into new params. Its own learnable tensors (learning
rates) are meta-parameters: the rule is an ``nn.Module`` owned by the learner. Rules here: ``SGDRule``
(scalar LR, MAML), ``LSLRRule`` (learnable per-layer per-step LRs, MAML++), ``MetaSGDRule`` (learnable
per-parameter LRs, Meta-SGD), and the differentiable optimisers ``MomentumRule`` and ``AdamRule``
(``StatefulRule``: per-task optimiser state carried through the inner steps, as ``higher``'s differentiable
optimisers; second-order gradients flow through the state). A new rule (e.g. attention over per-layer
gradient statistics) subclasses ``StepRule`` and implements ``forward``; the loop, masks, first/second
order and strategies come for free. Learnable per-parameter state is keyed by parameter name
(``param_key(name)`` inside ``nn.ParameterDict``), never by position.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]
Forward = Callable[[Mapping[str, Tensor], Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def param_key(name: str) -> str:
    """Key of parameter ``name`` inside an ``nn.ParameterDict`` (which forbids ``"."``)."""
    return name.replace(".", ":")


class StepRule(nn.Module):
    """One inner-loop update: ``rule(step, params, grads, state) -> new params``.

    Args of ``forward``:
        step: inner step index, ``0 .. steps-1`` (a Python int).
        params: the adapted parameters, ``{name: tensor}`` (only the names being adapted).
        grads: gradient of the support loss w.r.t. each of ``params``, same keys and shapes.
        state: per-task values: ``"loss"`` (scalar support loss at ``params``), ``"step"``, and whatever the
            caller passed as ``task_state`` (e.g. a task embedding). Read-only.

    Returns the new parameters (same keys and shapes). Must be differentiable (no in-place updates).
    ``bind(names, steps)`` is called once by the learner with the adapted parameter names and shapes and the
    largest number of steps it will run, so rules with per-parameter state can create it.
    """

    def bind(self, shapes: Mapping[str, torch.Size], steps: int) -> None:  # noqa: B027 (optional hook)
        """Create per-parameter / per-step state for parameters of ``shapes`` and up to ``steps`` steps."""

    def forward(self, step: int, params: Params, grads: Params, state: Mapping[str, Any]) -> Params:
        raise NotImplementedError


def _check_lr(lr: float) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"inner learning rate must be a float, got {type(lr).__name__}")
    if lr < 0:
        raise ValueError(f"inner learning rate must be >= 0, got {lr}")
    return float(lr)


class SGDRule(StepRule):
    """``p - lr * g`` with one scalar learning rate (MAML).

    ``learnable=True`` makes ``lr`` a meta-parameter."""

    def __init__(self, lr: float = 0.01, learnable: bool = False) -> None:
        super().__init__()
        lr = _check_lr(lr)
        if learnable:
            self.lr = nn.Parameter(torch.tensor(lr, dtype=torch.float64))
        else:
            self.register_buffer("lr", torch.tensor(lr, dtype=torch.float64), persistent=False)

    def forward(self, step: int, params: Params, grads: Params, state: Mapping[str, Any]) -> Params:
        return {name: p - self.lr.to(p.dtype) * grads[name] for name, p in params.items()}

    def extra_repr(self) -> str:
        return f"lr={self.lr.item():.4g}, learnable={isinstance(self.lr, nn.Parameter)}"


class LSLRRule(StepRule):
    """MAML++ "learning per-layer per-step learning rates": ``p - lr[name][step] * g``.

    ``lrs[param_key(name)]`` is a learnable ``[steps]`` vector for each adapted parameter, initialised to
    ``lr``. Created by ``bind``; a run with more steps than bound reuses the last step's rate.
    """

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.init_lr = _check_lr(lr)
        self.lrs = nn.ParameterDict()

    def bind(self, shapes: Mapping[str, torch.Size], steps: int) -> None:
        for name in shapes:
            if param_key(name) not in self.lrs:
                rates = torch.full((steps,), self.init_lr, dtype=torch.float64)
                self.lrs[param_key(name)] = nn.Parameter(rates)

    def forward(self, step: int, params: Params, grads: Params, state: Mapping[str, Any]) -> Params:
        new = {}
        for name, p in params.items():
            rates = self.lrs[param_key(name)]
            new[name] = p - rates[min(step, rates.numel() - 1)].to(p.dtype) * grads[name]
        return new


class MetaSGDRule(StepRule):
    """Meta-SGD: ``p - lr[name] * g`` with a learnable learning-rate tensor of the shape of each parameter.

    ``lrs[param_key(name)]`` is initialised to ``lr`` (Li et al. 2017 sample it in [0.005, 0.1]; a constant is
    the common reproduction). The same rates are used at every step.
    """

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.init_lr = _check_lr(lr)
        self.lrs = nn.ParameterDict()

    def bind(self, shapes: Mapping[str, torch.Size], steps: int) -> None:
        for name, shape in shapes.items():
            if param_key(name) not in self.lrs:
                rates = torch.full(tuple(shape), self.init_lr, dtype=torch.float64)
                self.lrs[param_key(name)] = nn.Parameter(rates)

    def forward(self, step: int, params: Params, grads: Params, state: Mapping[str, Any]) -> Params:
        return {name: p - self.lrs[param_key(name)].to(p.dtype) * grads[name] for name, p in params.items()}


class StatefulRule(StepRule):
    """A step rule with per-task optimiser state carried across the inner steps (``adapt`` threads it):
    ``init(params) -> opt_state`` and ``update(step, params, grads, opt_state, state) -> (params,
    opt_state)``; ``opt_state`` is a dict of tensor dicts keyed like ``params`` (works under ``vmap``)."""

    def init(self, params: Params) -> dict[str, Params]:
        raise NotImplementedError

    def update(self, step: int, params: Params, grads: Params, opt_state: dict[str, Params],
               state: Mapping[str, Any]) -> tuple[Params, dict[str, Params]]:
        raise NotImplementedError

    def forward(self, step: int, params: Params, grads: Params, state: Mapping[str, Any]) -> Params:
        """One step from a fresh state (a single-step rule); ``adapt`` calls ``update`` instead."""
        return self.update(step, params, grads, self.init(params), state)[0]


class MomentumRule(StatefulRule):
    """SGD with (Nesterov) momentum as ``torch.optim.SGD``: ``v = mu v + g``, ``p - lr v`` (Nesterov:
    ``p - lr (g + mu v)``); ``v`` starts at zero, so the first step is plain SGD."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, nesterov: bool = False) -> None:
        super().__init__()
        self.lr, self.momentum, self.nesterov = _check_lr(lr), float(momentum), bool(nesterov)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")

    def init(self, params: Params) -> dict[str, Params]:
        return {"velocity": {n: torch.zeros_like(p) for n, p in params.items()}}

    def update(self, step: int, params: Params, grads: Params, opt_state: dict[str, Params],
               state: Mapping[str, Any]) -> tuple[Params, dict[str, Params]]:
        velocity = {n: self.momentum * opt_state["velocity"][n] + grads[n] for n in params}
        direction = {n: grads[n] + self.momentum * velocity[n] for n in params} if self.nesterov else velocity
        return {n: p - self.lr * direction[n] for n, p in params.items()}, {"velocity": velocity}

    def extra_repr(self) -> str:
        return f"lr={self.lr:g}, momentum={self.momentum:g}, nesterov={self.nesterov}"


class AdamRule(StatefulRule):
    """Adam as ``torch.optim.Adam`` (bias-corrected moments, ``p - lr m_hat / (sqrt(v_hat) + eps)``).

    ``sqrt`` is taken of ``max(v_hat, 1e-30)``: the same values, and a finite second-order gradient where a
    gradient entry is exactly zero (``d sqrt(x) / dx`` is infinite at 0)."""

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__()
        self.lr, self.eps = _check_lr(lr), float(eps)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {tuple(betas)}")

    def init(self, params: Params) -> dict[str, Params]:
        zeros = {n: torch.zeros_like(p) for n, p in params.items()}
        return {"m": zeros, "v": dict(zeros)}

    def update(self, step: int, params: Params, grads: Params, opt_state: dict[str, Params],
               state: Mapping[str, Any]) -> tuple[Params, dict[str, Params]]:
        t = step + 1
        m = {n: self.beta1 * opt_state["m"][n] + (1 - self.beta1) * grads[n] for n in params}
        v = {n: self.beta2 * opt_state["v"][n] + (1 - self.beta2) * grads[n] ** 2 for n in params}
        new = {}
        for n, p in params.items():
            m_hat, v_hat = m[n] / (1 - self.beta1 ** t), v[n] / (1 - self.beta2 ** t)
            new[n] = p - self.lr * m_hat / (v_hat.clamp_min(1e-30).sqrt() + self.eps)
        return new, {"m": m, "v": v}

    def extra_repr(self) -> str:
        return f"lr={self.lr:g}, betas=({self.beta1:g}, {self.beta2:g}), eps={self.eps:g}"


def make_rule(rule: str | StepRule, lr: float) -> StepRule:
    """``"sgd"`` / ``"lslr"`` / ``"meta-sgd"`` / ``"momentum"`` / ``"adam"`` (torch's defaults for the
    optimisers' other settings), or a ``StepRule`` instance, returned as is."""
    if isinstance(rule, StepRule):
        return rule
    rules = {"sgd": SGDRule, "lslr": LSLRRule, "meta-sgd": MetaSGDRule, "momentum": MomentumRule,
             "adam": AdamRule}
    if rule not in rules:
        raise ValueError(f"unknown step rule {rule!r}; choose one of {sorted(rules)} "
                         "or pass a StepRule instance")
    return rules[rule](lr)


def head_names(names: Collection[str]) -> list[str]:
    """Names of the parameters of the last module that owns parameters (the output layer / head).

    ``["body.0.weight", "body.0.bias", "head.weight", "head.bias"] -> ["head.weight", "head.bias"]``.
    """
    names = list(names)
    if not names:
        raise ValueError("the model has no parameters; cannot pick a head")
    prefix = names[-1].rpartition(".")[0]
    return [n for n in names if n.rpartition(".")[0] == prefix]


def select_names(all_names: Collection[str], which: str | Collection[str]) -> list[str]:
    """Resolve a parameter mask to a list of names, in model order.

    ``which``: ``"all"``; ``"head"`` (the last parameterised module, as in ANIL); or a collection of
    parameter names or module prefixes (``["head"]`` selects ``head.weight`` and ``head.bias``).
    """
    all_names = list(all_names)
    if isinstance(which, str):
        if which == "all":
            return all_names
        if which == "head":
            return head_names(all_names)
        raise ValueError(f"parameter mask must be 'all', 'head' or a list of parameter names/prefixes, "
                         f"got {which!r}")
    chosen: list[str] = []
    for item in which:
        if not isinstance(item, str):
            raise TypeError(f"parameter mask entries must be strings (names or prefixes), got {item!r}")
        matches = [n for n in all_names if n == item or n.startswith(item + ".")]
        if not matches:
            raise ValueError(f"parameter mask entry {item!r} matches no parameter; available: "
                             f"{', '.join(all_names)}")
        chosen += [m for m in matches if m not in chosen]
    if not chosen:
        raise ValueError("parameter mask selects no parameters; pass 'all', 'head' or some names")
    return [n for n in all_names if n in chosen]


def _autograd_grad(loss_fn: Callable[[Params, Params], tuple[Tensor, Tensor]], fast: Params, fixed: Params,
                   create_graph: bool) -> tuple[Params, Tensor]:
    """``torch.func.grad(loss_fn, has_aux=True)(fast, fixed)`` computed with ``torch.autograd.grad``."""
    with torch.enable_grad():
        inputs = {n: t if t.requires_grad else t.detach().requires_grad_(True) for n, t in fast.items()}
        loss, aux = loss_fn(inputs, fixed)
        grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=create_graph, allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(inputs.items(), grads)}, aux


def adapt(forward: Forward, params: Mapping[str, Tensor], support_x: Tensor, support_y: Tensor, *,
          loss_fn: LossFn, rule: StepRule, steps: int, adapt_names: Collection[str] | None = None,
          first_order: bool = False, query: tuple[Tensor, Tensor] | None = None,
          task_state: Mapping[str, Any] | None = None,
          inner_grad: str = "func") -> tuple[Params, dict[str, Tensor]]:
    """Adapt ``params`` to one task's support set with ``steps`` gradient steps of ``rule``.

    Pure: works in a Python loop and under ``torch.func.vmap``.

    Args:
        forward: ``forward(params, x) -> outputs`` (e.g. ``functional_call(model, (params, buffers), x)``).
        params: all parameters ``{name: tensor}``; meta-parameters, differentiable by the caller.
        support_x, support_y: one task's support inputs ``[n, ...]`` and targets.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (mean over the support set).
        rule: the ``StepRule``.
        steps: number of inner steps (>= 0).
        adapt_names: names to adapt (``None``: all); the others stay fixed (but still carry gradient).
        first_order: treat inner gradients as constants (FOMAML); second order otherwise.
        query: optional ``(query_x, query_y)``: the query loss after every step goes into the trace
            (MAML++ multi-step loss).
        task_state: extra read-only values passed to the rule as ``state``.
        inner_grad: ``"func"`` (``torch.func.grad``; works under vmap) or ``"autograd"``
            (``torch.autograd.grad``; same values, less overhead in a Python loop, not usable under vmap).

    Returns:
        ``(adapted, trace)``: ``adapted`` has every key of ``params``; ``trace`` holds ``"support_loss"``
        ``[steps]`` (the loss before each step), ``"grad_norm"`` ``[steps]`` (global L2 norm of each step's
        gradient) and, with ``query``, ``"query_loss"`` ``[steps]`` (loss after each step).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"inner steps must be an int >= 0, got {steps!r}")
    names = list(params) if adapt_names is None else list(adapt_names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"adapt_names {unknown} are not parameters; available: {', '.join(params)}")
    fast = {n: params[n] for n in names}
    fixed = {n: t for n, t in params.items() if n not in fast}

    def support_loss(adapted: Params, frozen: Params) -> tuple[Tensor, Tensor]:
        loss = loss_fn(forward({**frozen, **adapted}, support_x), support_y)
        return loss, loss.detach()

    if inner_grad not in ("func", "autograd"):
        raise ValueError(f"inner_grad must be 'func' or 'autograd', got {inner_grad!r}")
    func_grad = torch.func.grad(support_loss, has_aux=True)
    stateful = rule if isinstance(rule, StatefulRule) else None
    opt_state = stateful.init(fast) if stateful is not None else None
    support_losses, grad_norms, query_losses = [], [], []
    for step in range(steps):
        if first_order:
            grad_args = ({n: t.detach() for n, t in fast.items()}, {n: t.detach() for n, t in fixed.items()})
        else:
            grad_args = (fast, fixed)
        if inner_grad == "func":
            grads, loss = func_grad(*grad_args)
        else:
            grads, loss = _autograd_grad(support_loss, *grad_args, create_graph=not first_order)
        state = {"loss": loss, "step": step, **(task_state or {})}
        if stateful is not None and opt_state is not None:
            fast, opt_state = stateful.update(step, fast, grads, opt_state, state)
        else:
            fast = rule(step, fast, grads, state)
        support_losses.append(loss)
        grad_norms.append(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads.values())))
        if query is not None:
            query_losses.append(loss_fn(forward({**fixed, **fast}, query[0]), query[1]))
    adapted = {n: fast[n] if n in fast else params[n] for n in params}
    trace: dict[str, Tensor] = {}
    if steps:
        trace["support_loss"] = torch.stack(support_losses)
        trace["grad_norm"] = torch.stack(grad_norms)
        if query is not None:
            trace["query_loss"] = torch.stack(query_losses)
    return adapted, trace
