"""Parameter attention: a step rule that decides, per task and per inner step, how much each parameter
tensor is updated.

At inner step ``s`` of a task, the rule builds a *query* from the task's state: for every adapted tensor
``i`` the statistics ``log ||g_i||``, ``log mean|g_i|`` and ``log ||p_i|| / sqrt(numel)``, plus the support
loss ``log L`` and a one-hot of the step. A small network maps them to ``q [key_dim]``. Every parameter
tensor has a learned key ``k_i [key_dim]`` (``keys[param_key(name)]``, keyed by name). The weights are

    soft:  w = n * softmax(q . k / (sqrt(key_dim) * temperature))     (n tensors; mean weight 1)
    hard:  w_i = 1 for the ``top_k`` highest scores, else 0; straight-through gradient of the soft weights

and the update is ``p_i <- p_i - lr_i * w_i * g_i``. ``lr_i`` is a scalar (optionally learnable), or a
learnable tensor of the shape of ``p_i`` (``lr_mode="per-parameter"``, Meta-SGD). The query network's last
layer starts at zero, so an untrained rule gives uniform weights ``w = 1``: plain MAML (or Meta-SGD).

``fixed_weights={name: w}`` bypasses the attention (e.g. ``{head: 1, body: 0}`` is ANIL; all ones with
per-parameter rates is Meta-SGD); the tests check both reproduce those learners exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from attnmeta.learners.inner import Params, StepRule, _check_lr, param_key

LR_MODES = ("scalar", "per-parameter")
WEIGHT_MODES = ("soft", "topk")
_STATS_PER_TENSOR = 3


class ParamAttentionRule(StepRule):
    """Inner-loop step ``p_i - lr_i * w_i * g_i`` with attention weights ``w_i`` per parameter tensor.

    Args:
        lr: inner learning rate (initial value when learnable).
        lr_mode: ``"scalar"`` (one rate) or ``"per-parameter"`` (Meta-SGD rate tensors, always learnable).
        learn_lr: make the scalar rate a meta-parameter.
        mode: ``"soft"`` or ``"topk"`` (hard, straight-through).
        top_k: tensors updated per step in ``"topk"`` mode.
        key_dim: size of queries and keys; hidden: width of the query network.
        temperature: softmax temperature of the scores.
        fixed_weights: ``{parameter name: weight}`` for every adapted tensor: no attention, constant weights.
        use_loss: include ``log L`` in the query. The core passes the support loss detached, so this one
            feature is a constant in the meta-gradient (all other statistics are differentiated through).
    """

    def __init__(self, lr: float = 0.01, *, lr_mode: str = "scalar", learn_lr: bool = False,
                 mode: str = "soft", top_k: int = 1, key_dim: int = 16, hidden: int = 32,
                 temperature: float = 1.0, fixed_weights: Mapping[str, float] | None = None,
                 use_loss: bool = True) -> None:
        super().__init__()
        if lr_mode not in LR_MODES:
            raise ValueError(f"lr_mode must be one of {LR_MODES}, got {lr_mode!r}")
        if mode not in WEIGHT_MODES:
            raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.init_lr, self.lr_mode, self.mode, self.top_k = _check_lr(lr), lr_mode, mode, top_k
        self.key_dim, self.hidden, self.temperature = key_dim, hidden, temperature
        self.use_loss = use_loss
        self.fixed_weights = dict(fixed_weights) if fixed_weights is not None else None
        if lr_mode == "scalar":
            if learn_lr:
                self.lr = nn.Parameter(torch.tensor(self.init_lr, dtype=torch.float64))
            else:
                self.register_buffer("lr", torch.tensor(self.init_lr, dtype=torch.float64), persistent=False)
        self.lrs = nn.ParameterDict()
        self.keys = nn.ParameterDict()
        self.names: list[str] = []
        self.steps = 0
        self.query_net: nn.Module | None = None
        #: when True (Python-loop strategy only), every step appends ``{name: weight}`` (detached) here
        self.record = False
        self.history: list[dict[str, Tensor]] = []

    def bind(self, shapes: Mapping[str, torch.Size], steps: int) -> None:
        names = list(shapes)
        if self.fixed_weights is not None:
            missing = [n for n in names if n not in self.fixed_weights]
            extra = [n for n in self.fixed_weights if n not in shapes]
            if missing or extra:
                raise ValueError(f"fixed_weights must give one weight per adapted parameter; missing "
                                 f"{missing}, unknown {extra}; adapted parameters: {names}")
        if self.names and self.names != names:
            raise ValueError(f"this rule is already bound to parameters {self.names}; build a new rule for "
                             f"{names}")
        self.names, self.steps = names, max(self.steps, steps)
        for name, shape in shapes.items():
            key = param_key(name)
            if self.lr_mode == "per-parameter" and key not in self.lrs:
                self.lrs[key] = nn.Parameter(torch.full(tuple(shape), self.init_lr))
            if key not in self.keys:
                self.keys[key] = nn.Parameter(torch.randn(self.key_dim) / math.sqrt(self.key_dim))
        if self.query_net is None:
            in_dim = _STATS_PER_TENSOR * len(names) + 1 + self.steps
            last = nn.Linear(self.hidden, self.key_dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.query_net = nn.Sequential(nn.Linear(in_dim, self.hidden), nn.Tanh(), last)

    # ---------------------------------------------------------------------------------------------
    def task_features(self, step: int, params: Params, grads: Params, loss: Tensor) -> Tensor:
        """Query input: per-tensor gradient/parameter statistics, log loss, one-hot step.

        Not detached: the meta-gradient includes how earlier weights change later statistics (second
        order); with ``first_order`` the core passes constant gradients anyway."""
        eps = 1e-8
        stats = []
        for name in self.names:
            g, p = grads[name], params[name]
            stats += [0.5 * torch.log((g * g).sum() + eps), torch.log(g.abs().mean() + eps),
                      0.5 * torch.log((p * p).mean() + eps)]
        step_code = [torch.zeros_like(stats[0]) for _ in range(self.steps)]
        step_code[min(step, self.steps - 1)] = torch.ones_like(stats[0])
        log_loss = torch.log(loss.to(stats[0].dtype) + eps) if self.use_loss else torch.zeros_like(stats[0])
        return torch.stack([*stats, log_loss, *step_code])

    def weights(self, step: int, params: Params, grads: Params, loss: Tensor) -> dict[str, Tensor]:
        """``{name: scalar weight}`` for this step (see the module docstring)."""
        if not self.names or self.query_net is None:
            raise RuntimeError("ParamAttentionRule.bind(shapes, steps) must be called before use "
                               "(MAML does it when the rule is passed as rule=...)")
        if self.fixed_weights is not None:
            ref = grads[self.names[0]]
            return {n: torch.tensor(float(self.fixed_weights[n]), dtype=ref.dtype, device=ref.device)
                    for n in self.names}
        features = self.task_features(step, params, grads, loss)
        first = next(iter(self.query_net.parameters()))
        query = self.query_net(features.to(first.dtype))
        keys = torch.stack([self.keys[param_key(n)] for n in self.names])
        scores = keys @ query / (math.sqrt(self.key_dim) * self.temperature)
        n = len(self.names)
        soft = n * torch.softmax(scores, dim=-1)
        if self.mode == "topk":
            kept = scores.topk(min(self.top_k, n)).indices
            hard = torch.zeros_like(soft).scatter(-1, kept, 1.0)
            weight_vec = hard.detach() + soft - soft.detach()
        else:
            weight_vec = soft
        return {name: weight_vec[i] for i, name in enumerate(self.names)}

    def forward(self, step: int, params: Params, grads: Params, state: Mapping[str, Any]) -> Params:
        weights = self.weights(step, params, grads, state["loss"])
        if self.record:
            self.history.append({n: w.detach().clone() for n, w in weights.items()})
        new = {}
        for name, p in params.items():
            lr = self.lrs[param_key(name)] if self.lr_mode == "per-parameter" else self.lr
            new[name] = p - lr.to(p.dtype) * weights[name].to(p.dtype) * grads[name]
        return new

    def extra_repr(self) -> str:
        fixed = "fixed" if self.fixed_weights is not None else f"{self.mode}, top_k={self.top_k}"
        return f"lr_mode={self.lr_mode}, weights={fixed}, key_dim={self.key_dim}"
