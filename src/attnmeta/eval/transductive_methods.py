"""Transductive few-shot methods on fixed embeddings (no network weights change).

Contract of every method here: ``method(support_emb [Ns, D], support_y [Ns], query_emb [Nq, D], ways) ->
probabilities [Nq, ways]`` (each row sums to 1). All queries of the episode are classified jointly, so the
unlabelled queries themselves shape the classifier. Each method follows its paper, with the paper's (or its
reference code's) default hyper-parameters as keyword defaults:

* ``bd_cspn`` -- Liu, Song & Qin, "Prototype Rectification for Few-Shot Learning" (ECCV 2020).
* ``tim`` -- TIM-GD, Boudiaf et al., "Information Maximization for Few-Shot Learning" (NeurIPS 2020).
* ``pt_map`` -- Hu, Gripon & Pateux, "Leveraging the Feature Distribution in Transfer-based Few-Shot
  Learning" (ICANN 2021).
* ``laplacianshot`` -- Ziko et al., "Laplacian Regularized Few-Shot Learning" (ICML 2020).

Transductive fine-tuning (Dhillon et al. 2020) also changes the backbone: ``attnmeta.eval.transductive``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnmeta.learners.protonet import prototypes

__all__ = ["bd_cspn", "knn_affinity", "laplacian_bound_update", "laplacianshot", "pt_map",
           "pt_map_preprocess", "rectified_prototypes", "sinkhorn", "tim", "tim_loss"]


# -- BD-CSPN ----------------------------------------------------------------------------------------------
def rectified_prototypes(support_emb: Tensor, support_y: Tensor, query_emb: Tensor, ways: int,
                         epsilon: float = 10.0) -> tuple[Tensor, Tensor]:
    """BD-CSPN's bias diminishing: ``(prototypes [ways, D], shifted queries [Nq, D])``.

    Features are L2-normalised; the queries are shifted by the cross-set shift ``xi = mean(support) -
    mean(query)``; every query is pseudo-labelled with its nearest basic prototype (cosine); the rectified
    prototype of class ``c`` is ``sum_i w_i x_i`` over the support and pseudo-labelled queries of class ``c``,
    with ``w_i = softmax_i(epsilon * cos(x_i, p_c))`` within the class.
    """
    support, query = F.normalize(support_emb, dim=-1), F.normalize(query_emb, dim=-1)
    query = query + (support.mean(0, keepdim=True) - query.mean(0, keepdim=True))
    basic = F.normalize(prototypes(support, support_y, ways), dim=-1)  # [ways, D]
    examples = torch.cat([support, query])  # [Ns + Nq, D]
    cosine = F.normalize(examples, dim=-1) @ basic.T  # [Ns + Nq, ways]
    labels = torch.cat([support_y, cosine[len(support):].argmax(-1)])
    member = F.one_hot(labels, ways).to(examples.dtype)  # [Ns + Nq, ways]
    scores = (epsilon * cosine).masked_fill(member == 0, float("-inf"))
    weights = torch.softmax(scores, dim=0).nan_to_num(0.0)  # over the members of each class
    return weights.T @ examples, query


def bd_cspn(support_emb: Tensor, support_y: Tensor, query_emb: Tensor, ways: int, *,
            epsilon: float = 10.0) -> Tensor:
    """BD-CSPN: ``softmax(epsilon * cos(shifted query, rectified prototype))`` ``[Nq, ways]``."""
    protos, query = rectified_prototypes(support_emb, support_y, query_emb, ways, epsilon)
    return torch.softmax(epsilon * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).T, dim=-1)


# -- TIM-GD -----------------------------------------------------------------------------------------------
def _tim_logits(samples: Tensor, weights: Tensor, temperature: float) -> Tensor:
    """``-temperature / 2 * ||x - w_c||^2``: ``[n, D]`` x ``[ways, D]`` -> ``[n, ways]``."""
    return temperature * (samples @ weights.T - 0.5 * weights.pow(2).sum(-1)
                          - 0.5 * samples.pow(2).sum(-1, keepdim=True))


def tim_loss(weights: Tensor, support: Tensor, support_y: Tensor, query: Tensor, *, temperature: float = 15.0,
             loss_weights: tuple[float, float, float] = (0.1, 1.0, 0.1)) -> Tensor:
    """TIM's objective: ``l_ce * CE(support) - (l_marg * H(Y_q) - l_cond * H(Y_q | X_q))`` (a scalar).

    ``weights [ways, D]`` are the classifier's class weights; ``support [Ns, D]``, ``query [Nq, D]``.
    """
    ways = weights.shape[0]
    one_hot = F.one_hot(support_y, ways).to(support.dtype)
    cross_entropy = -(one_hot * torch.log(_tim_logits(support, weights, temperature).softmax(-1) + 1e-12)
                      ).sum(-1).mean()
    probs = _tim_logits(query, weights, temperature).softmax(-1)  # [Nq, ways]
    conditional = -(probs * torch.log(probs + 1e-12)).sum(-1).mean()
    marginal = probs.mean(0)
    marginal_entropy = -(marginal * torch.log(marginal + 1e-12)).sum()
    ce_weight, marginal_weight, conditional_weight = loss_weights
    return ce_weight * cross_entropy - (marginal_weight * marginal_entropy - conditional_weight * conditional)


def tim(support_emb: Tensor, support_y: Tensor, query_emb: Tensor, ways: int, *, iterations: int = 1000,
        lr: float = 1e-4, temperature: float = 15.0,
        loss_weights: tuple[float, float, float] = (0.1, 1.0, 0.1)) -> Tensor:
    """TIM-GD: Adam on the class weights (initialised to the prototypes of L2-normalised features),
    ``iterations`` steps of ``tim_loss``; returns the query probabilities ``[Nq, ways]``."""
    support, query = F.normalize(support_emb, dim=-1).detach(), F.normalize(query_emb, dim=-1).detach()
    weights = prototypes(support, support_y, ways).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=lr)
    with torch.enable_grad():
        for _ in range(iterations):
            loss = tim_loss(weights, support, support_y, query, temperature=temperature,
                            loss_weights=loss_weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return _tim_logits(query, weights, temperature).softmax(-1)


# -- PT-MAP -----------------------------------------------------------------------------------------------
def pt_map_preprocess(support_emb: Tensor, query_emb: Tensor, beta: float = 0.5) -> tuple[Tensor, Tensor]:
    """Power transform ``(x + 1e-6)^beta``, L2 normalisation, then support and queries each centred on their
    own mean and L2-normalised again (PT-MAP's pipeline). Features with negative values get the
    sign-preserving ``sign(x) |x|^beta`` (the paper assumes non-negative, post-ReLU features)."""
    features = torch.cat([support_emb, query_emb])
    if bool((features < 0).any()):
        features = features.sign() * (features.abs() + 1e-6).pow(beta)
    else:
        features = (features + 1e-6).pow(beta)
    features = F.normalize(features, dim=-1)
    support, query = features[:len(support_emb)], features[len(support_emb):]
    support = F.normalize(support - support.mean(0, keepdim=True), dim=-1)
    query = F.normalize(query - query.mean(0, keepdim=True), dim=-1)
    return support, query


def sinkhorn(cost: Tensor, row_sums: Tensor, column_sums: Tensor, lam: float, *, tolerance: float = 1e-6,
             max_iterations: int = 1000) -> Tensor:
    """Entropic optimal transport plan ``[n, m]`` of ``exp(-lam * cost)`` with the given marginals."""
    plan = torch.exp(-lam * (cost - cost.min()))  # the shift cancels in the normalisations
    plan = plan / plan.sum()
    current = torch.zeros_like(row_sums)
    for _ in range(max_iterations):
        if float((current - plan.sum(1)).abs().max()) <= tolerance:
            break
        current = plan.sum(1)
        plan = plan * (row_sums / current).unsqueeze(1)
        plan = plan * (column_sums / plan.sum(0)).unsqueeze(0)
    return plan


def pt_map(support_emb: Tensor, support_y: Tensor, query_emb: Tensor, ways: int, *, epochs: int = 20,
           lam: float = 10.0, alpha: float = 0.2, beta: float = 0.5) -> Tensor:
    """PT-MAP: Sinkhorn soft assignments of the queries (each class receives ``Nq / ways`` queries) and
    ``epochs`` MAP updates ``mu <- mu + alpha (mu_hat - mu)`` of the class centres; returns the final
    assignments ``[Nq, ways]``, rows normalised to sum to 1."""
    support, query = pt_map_preprocess(support_emb, query_emb, beta)
    centres = prototypes(support, support_y, ways)
    examples = torch.cat([support, query])
    support_mask = F.one_hot(support_y, ways).to(support.dtype)
    rows = torch.ones(len(query), dtype=query.dtype, device=query.device)
    columns = torch.full((ways,), len(query) / ways, dtype=query.dtype, device=query.device)

    def assignments() -> Tensor:
        return sinkhorn(torch.cdist(query, centres).pow(2), rows, columns, lam)

    for _ in range(epochs):
        mask = torch.cat([support_mask, assignments()])  # [Ns + Nq, ways]
        estimate = (mask.T @ examples) / mask.sum(0).unsqueeze(1)
        centres = centres + alpha * (estimate - centres)
    plan = assignments()
    return plan / plan.sum(-1, keepdim=True)


# -- LaplacianShot ----------------------------------------------------------------------------------------
def knn_affinity(features: Tensor, knn: int = 3) -> Tensor:
    """Binary kNN affinity ``[n, n]``: ``W[i, j] = 1`` for the ``knn - 1`` nearest neighbours ``j != i`` of
    ``i`` (the reference code's ``knn`` counts the point itself); not symmetrised."""
    n = features.shape[0]
    neighbours = min(knn - 1, n - 1)
    affinity = torch.zeros(n, n, dtype=features.dtype, device=features.device)
    if neighbours <= 0:
        return affinity
    distances = torch.cdist(features, features)
    distances.fill_diagonal_(float("inf"))
    index = distances.topk(neighbours, dim=1, largest=False).indices
    return affinity.scatter_(1, index, 1.0)


def laplacian_bound_update(unary: Tensor, affinity: Tensor, lam: float, iterations: int = 20) -> Tensor:
    """LaplacianShot's bound optimisation: ``Y <- softmax(-unary + lam * W Y)`` from ``Y = softmax(-unary)``,
    stopping early when the energy ``sum(Y a - lam (W Y) Y + Y log Y)`` changes by <= 1e-6 relatively."""
    assignment = torch.softmax(-unary, dim=-1)
    previous = float("inf")
    for step in range(iterations):
        assignment = torch.softmax(-unary + lam * (affinity @ assignment), dim=-1)
        pairwise = affinity @ assignment
        energy = float((unary * assignment - lam * pairwise * assignment
                        + assignment * torch.log(assignment.clamp_min(1e-20))).sum())
        if step > 1 and abs(energy - previous) <= 1e-6 * abs(previous):
            break
        previous = energy
    return assignment


def laplacianshot(support_emb: Tensor, support_y: Tensor, query_emb: Tensor, ways: int, *, knn: int = 3,
                  lam: float = 0.7, iterations: int = 20, epsilon: float = 10.0) -> Tensor:
    """LaplacianShot on L2-normalised features with BD-CSPN-rectified prototypes (as the reference code):
    unary ``a_qc = ||x_q - m_c||^2``, kNN affinity among the shifted queries, bound updates ``[Nq, ways]``."""
    protos, query = rectified_prototypes(support_emb, support_y, query_emb, ways, epsilon)
    unary = torch.cdist(query, protos).pow(2)
    return laplacian_bound_update(unary, knn_affinity(query, knn), lam, iterations)
