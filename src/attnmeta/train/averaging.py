"""Exponential moving average (EMA) of a module's trained parameters, for evaluation.

Training keeps updating the module's own parameters; ``ParameterAverage`` keeps a second copy that follows
them slowly and can be swapped in to evaluate::

    average = ParameterAverage(learner, decay=0.995)
    for step in range(steps):
        ...; optimizer.step()
        average.update(learner)
    with average.applied(learner):       # the averaged parameters, restored on exit
        evaluate(learner, episodes)

The decay warms up as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: update ``n`` (from 1)
uses ``min(decay, (1 + n) / (10 + n))``, so the random initialisation does not linger in the average of a
short run (with a fixed decay of 0.998, 3.7% of the average after 1,650 updates would still be the initial
weights). Only floating-point parameters with ``requires_grad`` are averaged; buffers (e.g. batch-norm
running statistics) are used as they are in the module. Unlike ``torch.optim.swa_utils.AveragedModel`` it
keeps no second copy of the module (the averages are swapped into the trained module itself, so checkpoints,
``state_dict`` and functional learners see one module) and it warms up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class ParameterAverage:
    """Exponential moving average of ``module``'s trained parameters.

    Args:
        module: the module being trained; its parameters with ``requires_grad`` at construction are the
            ones averaged (by name).
        decay: the average's decay per update, in ``[0, 1)``; ``1 / (1 - decay)`` updates is its horizon.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be a number in [0, 1) (e.g. 0.995: a horizon of 200 updates), "
                             f"got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.averages = {name: p.detach().clone() for name, p in module.named_parameters()
                         if p.requires_grad and p.is_floating_point()}
        if not self.averages:
            raise ValueError("the module has no trained floating-point parameters to average")

    @property
    def names(self) -> list[str]:
        """Names of the averaged parameters, in the module's order."""
        return list(self.averages)

    def _parameters(self, module: nn.Module) -> list[Tensor]:
        params = dict(module.named_parameters())
        missing = [name for name in self.names if name not in params]
        if missing:
            raise ValueError(f"the module lacks the averaged parameters {missing[:3]}: pass the module the "
                             f"ParameterAverage was built from")
        return [params[name] for name in self.names]

    def current_decay(self) -> float:
        """The decay the next ``update`` uses (warm-up included)."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """``average <- decay * average + (1 - decay) * parameter`` for every averaged parameter."""
        weight = 1.0 - self.current_decay()
        for average, p in zip(self.averages.values(), self._parameters(module)):
            average.lerp_(p.detach(), weight)
        self.updates += 1

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily copy the averages into ``module``'s parameters; the trained values come back on
        exit (also after an exception)."""
        params = self._parameters(module)
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, average in zip(params, self.averages.values()):
                p.copy_(average)
        try:
            yield module
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved):
                    p.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "averages": dict(self.averages)}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state["averages"]) != sorted(self.names):
            raise ValueError("the saved average is of other parameters than this module's")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for name in self.names:
            self.averages[name].copy_(state["averages"][name])
