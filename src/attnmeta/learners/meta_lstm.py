"""Meta-LSTM: optimization as a model for few-shot learning (Ravi & Larochelle 2017).

A coordinate-wise LSTM meta-learner trains the learner network. Its **cell state is the learner's
parameters** ``theta`` (one flat vector ``[P]``, the learned initial value ``c_0`` being the model's own
parameters); every update step ``t`` reads the support loss ``L_t`` and gradient ``g_t`` and writes

    theta_t = f_t * theta_{t-1} - i_t * g_t,
    i_t = sigmoid(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I)     (learned step size),
    f_t = sigmoid(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F)     (learned decay / shrinkage),

where ``h_t`` is the output of a first coordinate-wise LSTM (``hidden`` units, shared over coordinates) whose
input is the preprocessed ``(g_t, L_t)`` (Andrychowicz et al. 2016: ``x -> (log|x| / p, sign x)`` if
``|x| >= e^-p`` else ``(-1, e^p x)``, ``p = 10``). The learner is evaluated on explicit parameters with
``torch.func.functional_call``. As in the paper, ``g_t`` and ``L_t`` are inputs (no gradient flows through
them, ``second_order=False``); the meta-gradient flows through the unrolled updates of ``theta``, into the
gates' weights and ``c_0``. ``b_F`` starts large (``f ~ 1``) and ``b_I`` small (``i ~ e^-5``), as in the
paper.

Attention variant (``attention=True``, registered as ``"meta-lstm-attention"``): at step ``t`` each
coordinate's ``h_t`` attends (scaled dot product over learned ``hidden``-size projections) over its own
``h_1 .. h_{t-1}``; the read is concatenated to ``h_t`` before the gates. It costs ``O(steps^2)`` per
coordinate and adds ``3 hidden^2`` parameters.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from attnmeta.learners.base import Learner, MetaOutput, episode_classification_output
from attnmeta.learners.matching import check_classification_batch
from attnmeta.learners.registry import register
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["MetaLSTM", "preprocess"]


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Gradient/loss preprocessing of Andrychowicz et al. (2016): ``[...] -> [..., 2]``."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, x.abs().clamp_min(1e-38).log() / p, torch.full_like(x, -1.0))
    second = torch.where(big, x.sign(), x * math.exp(p))
    return torch.stack([first, second], dim=-1)


class _Gate(nn.Module):
    """``sigmoid(W [h, theta, previous] + b)`` per coordinate: ``h [T, P, H]`` -> ``[T, P]``."""

    def __init__(self, hidden: int, bias_range: tuple[float, float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.bias = nn.Parameter(torch.empty(()).uniform_(*bias_range))

    def forward(self, h: Tensor, theta: Tensor, previous: Tensor) -> Tensor:
        inputs = torch.cat([h, theta[..., None], previous[..., None]], dim=-1)
        return torch.sigmoid(inputs @ self.weight + self.bias)


class MetaLSTM(Learner):
    """The LSTM meta-learner of Ravi & Larochelle, training any classifier ``model`` (with a ``ways`` head).

    Args:
        model: learner network ``[B, *input_shape] -> [B, ways]``; its parameters are ``c_0``.
        steps: update steps on the support set (meta-training and prediction).
        hidden: units of the first coordinate-wise LSTM.
        attention: the attention variant (see the module docstring).
        second_order: let the meta-gradient flow through ``g_t`` and ``L_t`` too (the paper: no).
        p: preprocessing constant.
    """

    name = "meta-lstm"
    any_ways = False

    def __init__(self, model: nn.Module, *, task_type: str = "classification", steps: int = 5,
                 hidden: int = 20, attention: bool = False, second_order: bool = False, p: float = 10.0,
                 ways: int | None = None) -> None:
        super().__init__(task_type)
        if task_type != "classification":
            raise ValueError("this Meta-LSTM is a classification learner; use task_type='classification'")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module classifier, got {type(model).__name__}")
        if not isinstance(steps, int) or steps < 1 or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"steps and hidden must be positive ints, got steps={steps!r}, "
                             f"hidden={hidden!r}")
        self.model, self.steps, self.hidden, self.second_order, self.p = model, steps, hidden, second_order, p
        self.trained_ways = ways
        self.names = [name for name, _ in model.named_parameters()]
        if not self.names:
            raise ValueError("the model has no parameters to learn; pass a network with parameters")
        self.shapes = [param.shape for _, param in model.named_parameters()]
        self.sizes = [param.numel() for _, param in model.named_parameters()]
        self.input_lstm = nn.LSTMCell(4, hidden)
        self.attention = attention
        gate_inputs = hidden
        if attention:
            self.attn_query = nn.Linear(hidden, hidden, bias=False)
            self.attn_key = nn.Linear(hidden, hidden, bias=False)
            self.attn_value = nn.Linear(hidden, hidden, bias=False)
            gate_inputs = 2 * hidden
        self.input_gate = _Gate(gate_inputs, (-5.0, -4.0))
        self.forget_gate = _Gate(gate_inputs, (4.0, 6.0))
        if attention:
            self.name = "meta-lstm-attention"

    # Flat parameter vector <-> named parameters -------------------------------------------------------
    def initial_parameters(self) -> Tensor:
        """``c_0``: the model's parameters as one flat vector ``[P]`` (differentiable)."""
        return torch.cat([param.reshape(-1) for _, param in self.model.named_parameters()])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Flat ``[P]`` -> ``{name: tensor}`` for ``functional_call``."""
        return {name: chunk.view(shape)
                for name, chunk, shape in zip(self.names, theta.split(self.sizes), self.shapes)}

    def _task_logits(self, theta: Tensor, inputs: Tensor) -> Tensor:
        return functional_call(self.model, self.unflatten(theta), (inputs,))

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        """Run the meta-learner on ``T`` support sets ``[T, ns, ...]``; return adapted parameters ``[T, P]``.
        """
        tasks = support_x.shape[0]
        theta = self.initial_parameters().expand(tasks, -1)
        coords = theta.shape[1]
        h = theta.new_zeros(tasks * coords, self.hidden)
        c = theta.new_zeros(tasks * coords, self.hidden)
        input_gate = theta.new_zeros(tasks, coords)
        forget_gate = theta.new_ones(tasks, coords)
        history: list[Tensor] = []
        for _ in range(self.steps):
            if not theta.requires_grad:  # frozen model in predict(): the support gradient needs a graph
                theta = theta.detach().requires_grad_(True)
            losses = torch.stack([F.cross_entropy(self._task_logits(theta[k], support_x[k]), support_y[k])
                                  for k in range(tasks)])
            (grads,) = torch.autograd.grad(losses.sum(), theta, create_graph=self.second_order)
            if not self.second_order:
                grads, losses = grads.detach(), losses.detach()
            features = torch.cat([preprocess(grads, self.p),
                                  preprocess(losses, self.p)[:, None, :].expand(-1, coords, -1)], dim=-1)
            h, c = self.input_lstm(features.reshape(tasks * coords, 4), (h, c))
            gate_in = h
            if self.attention:
                gate_in = torch.cat([h, self._attend(h, history)], dim=-1)
                history.append(h)
            gate_in = gate_in.view(tasks, coords, -1)
            forget_gate = self.forget_gate(gate_in, theta, forget_gate)
            input_gate = self.input_gate(gate_in, theta, input_gate)
            theta = forget_gate * theta - input_gate * grads
        return theta

    def _attend(self, h: Tensor, history: list[Tensor]) -> Tensor:
        """Each coordinate's ``h [n, H]`` attends over its previous hidden states; zeros at the first step."""
        if not history:
            return torch.zeros_like(h)
        previous = torch.stack(history, dim=1)  # [n, t, H]
        scores = (self.attn_key(previous) @ self.attn_query(h)[..., None]).squeeze(-1)
        scores = scores / math.sqrt(self.hidden)
        return (torch.softmax(scores, dim=-1)[..., None] * self.attn_value(previous)).sum(1)

    def _check(self, batch: Task | TaskBatch) -> None:
        check_classification_batch(batch, self.name)
        self.check_ways(batch, self.trained_ways)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        self._check(batch)
        theta = self.adapt(batch.support_x, batch.support_y)
        logits = torch.stack([self._task_logits(theta[k], batch.query_x[k]) for k in range(len(batch))])
        return episode_classification_output(logits, batch.query_y)

    def predict(self, task: Task) -> Tensor:
        self._check(task)
        with torch.enable_grad():
            theta = self.adapt(task.support_x[None], task.support_y[None]).detach()
        with torch.no_grad():
            return self._task_logits(theta[0], task.query_x)


@register("meta-lstm", head=True, description="Meta-LSTM (Ravi & Larochelle 2017): LSTM meta-learner whose "
                                               "cell state is the learner's parameters")
def build_meta_lstm(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                    **options: Any) -> MetaLSTM:
    return MetaLSTM(model, task_type=task_type, ways=ways, **options)


@register("meta-lstm-attention", head=True, description="Meta-LSTM whose gates also read attention over "
                                                         "the meta-learner's previous steps")
def build_meta_lstm_attention(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                              **options: Any) -> MetaLSTM:
    return MetaLSTM(model, task_type=task_type, ways=ways, attention=True, **options)
