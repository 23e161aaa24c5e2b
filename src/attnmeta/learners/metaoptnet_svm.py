"""MetaOptNet-SVM (Lee et al., CVPR 2019): a meta-learned embedding, a differentiable multi-class SVM head.

Per episode the Crammer-Singer SVM dual is solved on the support embeddings ``X [n, D]`` (labels ``y``), as in
MetaOptNet's reference head: minimise over ``alpha [n, ways]``

    1/2 sum_k ||sum_i alpha_ik x_i||^2 + 1/2 ||alpha||^2 - sum_i alpha_{i, y_i}
    s.t.  alpha_ik <= C [k = y_i],  sum_k alpha_ik = 0   (every i),

(the ``1/2 ||alpha||^2`` is the reference code's ``+ I`` on the block kernel, which makes the problem strictly
convex), and a query ``q`` gets the logits ``scale * sum_i alpha_ik <x_i, q>``, ``scale`` meta-learned.

No QP library: with ``beta_i = C e_{y_i} - alpha_i`` the constraints say ``beta_i >= 0, sum_k beta_ik = C``,
so the feasible set is a product of scaled simplices. ``solve_cs_dual`` runs ``iterations`` steps of
accelerated projected gradient (FISTA, step ``1 / L`` with ``L`` the largest eigenvalue of the Hessian)
without building a graph, then *polishes* on the identified face: the KKT system of the QP restricted to the
coordinates with ``beta > 0`` is one linear solve, done with autograd, so its value is the exact optimum
once the face is right, and its gradient is the exact implicit gradient of the optimum with respect to the
embeddings (what a KKT-differentiating solver such as qpth, MetaOptNet's, returns).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.r2d2 import DifferentiableHeadLearner
from attnmeta.learners.registry import register

__all__ = ["MetaOptNetSVM", "project_scaled_simplex", "solve_cs_dual", "svm_dual_objective"]


def project_scaled_simplex(v: Tensor, total: float) -> Tensor:
    """Euclidean projection of each row ``v [..., K]`` onto ``{b >= 0, sum_k b_k = total}`` (sort-based)."""
    sorted_v = v.sort(-1, descending=True).values
    cumulative = sorted_v.cumsum(-1) - total
    ranks = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    support = sorted_v - cumulative / ranks > 0
    count = support.to(v.dtype).sum(-1, keepdim=True)  # >= 1 always
    threshold = cumulative.gather(-1, count.long() - 1) / count
    return (v - threshold).clamp_min(0)


def svm_dual_objective(alpha: Tensor, gram: Tensor, one_hot: Tensor) -> Tensor:
    """The minimised dual ``[...]`` of alpha ``[..., n, K]``; gram ``[..., n, n]``, one_hot ``[..., n, K]``"""
    quadratic = (alpha * (gram @ alpha)).sum((-1, -2)) + alpha.pow(2).sum((-1, -2))
    return 0.5 * quadratic - (alpha * one_hot).sum((-1, -2))


def _fista(gram: Tensor, one_hot: Tensor, C: float, iterations: int) -> Tensor:
    """Approximate dual solution ``alpha [..., n, K]`` by accelerated projected gradient (no graph)."""
    step = 1.0 / (torch.linalg.eigvalsh(gram)[..., -1:] + 1.0).unsqueeze(-1)  # 1 / L, [..., 1, 1]
    beta = torch.full_like(one_hot, C / one_hot.shape[-1])
    momentum, previous = beta, beta
    t = 1.0
    for _ in range(iterations):
        alpha = C * one_hot - momentum
        gradient_alpha = gram @ alpha + alpha - one_hot
        beta = project_scaled_simplex(momentum + step * gradient_alpha, C)  # d/d beta = -d/d alpha
        # gradient restart (O'Donoghue & Candes 2015): drop the momentum of tasks where it points uphill
        uphill = ((momentum - beta) * (beta - previous)).sum((-1, -2), keepdim=True) > 0
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        extrapolated = beta + ((t - 1) / t_next) * (beta - previous)
        momentum, previous, t = torch.where(uphill, beta, extrapolated), beta, t_next
    return C * one_hot - beta


def solve_cs_dual(gram: Tensor, one_hot: Tensor, C: float = 0.1, iterations: int = 100,
                  tolerance: float = 1e-6) -> Tensor:
    """The Crammer-Singer dual optimum ``alpha [..., n, K]``, differentiable with respect to ``gram``.

    Args:
        gram: ``[..., n, n]`` support Gram matrix ``X X^T``. one_hot: ``[..., n, K]`` one-hot support labels.
        C: the box bound ``alpha_ik <= C [k = y_i]``. iterations: FISTA steps before the polishing solve.
        tolerance: ``beta_ik > tolerance * C`` counts as a free coordinate of the face.
    """
    n, ways = one_hot.shape[-2:]
    with torch.no_grad():
        approximate = _fista(gram.detach(), one_hot, C, iterations)
    free = (C * one_hot - approximate > tolerance * C).flatten(-2).to(gram.dtype)  # [..., m], m = n * K
    m = n * ways
    eye_k = torch.eye(ways, dtype=gram.dtype, device=gram.device)
    hessian = torch.kron(gram, eye_k) + torch.eye(m, dtype=gram.dtype, device=gram.device)  # [..., m, m]
    sums = torch.kron(torch.eye(n, dtype=gram.dtype, device=gram.device),
                      torch.ones(1, ways, dtype=gram.dtype, device=gram.device))  # [n, m]: sum_k alpha_ik
    target = one_hot.flatten(-2)
    # rows of free coordinates: stationarity (H alpha - y + A^T nu = 0); of fixed ones: alpha_i = C y_i
    rows = free.unsqueeze(-1)
    top = torch.cat([rows * hessian + (1 - rows) * torch.eye(m, dtype=gram.dtype, device=gram.device),
                     rows * sums.T.expand(*hessian.shape[:-2], m, n)], -1)
    bottom = torch.cat([sums.expand(*hessian.shape[:-2], n, m),
                        torch.zeros(*hessian.shape[:-2], n, n, dtype=gram.dtype, device=gram.device)], -1)
    rhs = torch.cat([free * target + (1 - free) * C * target,
                     torch.zeros(*hessian.shape[:-2], n, dtype=gram.dtype, device=gram.device)], -1)
    solution = torch.linalg.solve(torch.cat([top, bottom], -2), rhs.unsqueeze(-1)).squeeze(-1)
    return solution[..., :m].unflatten(-1, (n, ways))


class MetaOptNetSVM(DifferentiableHeadLearner):
    """MetaOptNet with the Crammer-Singer SVM head on any embedding ``[n, *in] -> [n, D]``.

    Args:
        model: embedding network.
        C: the SVM's box bound (MetaOptNet: 0.1). iterations: FISTA steps per episode before polishing.
        scale: initial logit scale (meta-learned, as MetaOptNet's classification head).
    """

    name = "metaoptnet-svm"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, C: float = 0.1,
                 iterations: int = 100, scale: float = 1.0) -> None:
        super().__init__(model, task_type)
        if not isinstance(C, (int, float)) or isinstance(C, bool) or not C > 0:
            raise ValueError(f"C must be a number > 0 (the SVM's box bound; MetaOptNet: 0.1), got {C!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive int (solver steps per episode), got "
                             f"{iterations!r}")
        self.C, self.iterations = float(C), iterations
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def head_logits(self, support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
        """``scale * sum_i alpha_ik <x_i, q>``, ``[T, nq, ways]``."""
        one_hot = F.one_hot(support_y, ways).to(support.dtype)
        alpha = solve_cs_dual(support @ support.transpose(-1, -2), one_hot, self.C, self.iterations)
        return self.scale * (query @ support.transpose(-1, -2)) @ alpha


@register("metaoptnet-svm", head=False, description="MetaOptNet-SVM (Lee et al. 2019): differentiable "
                                                     "Crammer-Singer SVM head (FISTA + exact KKT polish)")
def build_metaoptnet_svm(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                         **options: Any) -> MetaOptNetSVM:
    """Registry builder; ``ways`` is ignored (the SVM is fitted per episode, any number of ways). Options:
    ``C``, ``iterations``, ``scale``."""
    return MetaOptNetSVM(model, task_type, **options)
