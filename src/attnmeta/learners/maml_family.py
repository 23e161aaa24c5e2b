"""The MAML family's registered names: one ``MAML`` with each variant's defaults (``attnmeta.learners.maml``).

``maml`` (second order), ``fomaml`` (``first_order=True``), ``meta-sgd`` (``rule="meta-sgd"``), ``anil``
(``adapt="head"``), ``maml++`` (``rule="lslr"``, multi-step loss, first-to-second-order annealing).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from attnmeta.learners.maml import MAML
from attnmeta.learners.registry import register


def _build(model: nn.Module, task_type: str, ways: int | None, defaults: dict[str, Any],
           options: dict[str, Any], name: str) -> MAML:
    learner = MAML(model, task_type, ways=ways, **{**defaults, **options})
    learner.name = name
    return learner


@register("maml", head=True, description="MAML (Finn et al. 2017), second order")
def build_maml(model: nn.Module, task_type: str = "classification", ways: int | None = None,
               **options: Any) -> MAML:
    return _build(model, task_type, ways, {}, options, "maml")


@register("fomaml", head=True, description="first-order MAML")
def build_fomaml(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                 **options: Any) -> MAML:
    return _build(model, task_type, ways, {"first_order": True}, options, "fomaml")


@register("meta-sgd", head=True, description="Meta-SGD (Li et al. 2017): learnable per-parameter inner LRs")
def build_meta_sgd(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                   **options: Any) -> MAML:
    return _build(model, task_type, ways, {"rule": "meta-sgd"}, options, "meta-sgd")


@register("anil", head=True, description="ANIL (Raghu et al. 2020): only the head adapts")
def build_anil(model: nn.Module, task_type: str = "classification", ways: int | None = None,
               **options: Any) -> MAML:
    return _build(model, task_type, ways, {"adapt": "head"}, options, "anil")


@register("maml++", head=True, description="MAML++ (Antoniou et al. 2019): LSLR, multi-step loss, annealing")
def build_maml_plus_plus(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                         **options: Any) -> MAML:
    defaults = {"rule": "lslr", "multi_step_loss": True, "msl_anneal_steps": 10000, "first_order_until": 5000}
    return _build(model, task_type, ways, defaults, options, "maml++")
