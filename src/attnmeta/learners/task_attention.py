"""Task attention: weight the tasks of a meta-batch, and choose which tasks to train on.

**Meta-batch weighting** (``TaskWeighting``). Every task ``t`` of a meta-batch gets a descriptor: its
support-set embedding (``TaskEncoder``: self-attention over (x, y) pairs, pooled) and ``DESCRIPTOR_STATS = 8``
log statistics (``descriptor_stats``): support loss and inner-gradient norm before and after adaptation, their
ratio, the post-adaptation *query* loss, the support-query gap ``log(Q_after / L_after)`` and the cosine
alignment of the task's meta-gradient with the rest of the meta-batch. A set-attention block over the ``T``
descriptors (each task sees the others) and a linear score give ``p = softmax(s / temperature)``; the weights
are ``w = T * p`` (mean 1) and the outer loss is ``mean_t(w_t * L_t)`` with ``w`` treated as constants.

*Objective of the weighting module (one-step look-ahead, first order).* With per-task meta-gradients ``g_t``
the meta-update is ``theta' = theta - alpha * mean_t(w_t g_t)``. On a held-out meta-batch ``V``,
``L_V(theta') ~= L_V(theta) - (alpha / T) * sum_t w_t <grad L_V(theta), g_t>`` (first order in ``alpha``),
so weights that lower the held-out loss maximise ``sum_t p_t a_t`` with alignment ``a_t = <g_V, g_t>``.
We use first-order (FOMAML) task gradients ``g_t = d L_t / d phi_t`` at the adapted parameters and cosine
alignments (a task with a huge noisy gradient cannot dominate). The held-out batch ``V`` is either

* a small *trusted* set of held-out tasks (``heldout_grad``; as in learning-to-reweight, Ren et al. 2018):
  the look-ahead then asks "which training tasks move the meta-parameters the way the held-out tasks want";
  this is what makes corrupted tasks lose weight, or
* the *other* tasks of the meta-batch (leave-one-out, no extra data). Caveat, measured on 30%-corrupted
  sinusoid: once MAML has trained a little, the meta-batch's own mean gradient is near a stationary point of
  the *corrupted* mixture and every task's alignment with it is ~0, so this variant barely re-weights.

A KL-to-uniform (entropy) term keeps the weights spread:

    J(phi) = - sum_t p_t a_t + entropy * sum_t p_t log p_t,       optimum  p_t ∝ exp(a_t / entropy).

*Gate mode* (``mode="gate"``): instead of one softmax over the meta-batch, every task gets its own gate
``g_t = sigmoid(s_t / temperature)`` in (0, 1) and ``p = g / sum(g)``. The look-ahead then asks, per task,
"does including this task help the held-out tasks", with a binary-entropy term:

    J(phi) = - mean_t g_t a_t / rms(a) - entropy * mean_t H(g_t),
    optimum  g_t = sigmoid(a_t / (entropy * rms(a))),   rms(a) = sqrt(mean_t a_t^2).

Because a gate saturates, tasks with clearly positive alignment all get weights near 1 and tasks with
clearly negative alignment weights near 0: sharp between the two groups, flat within each. The softmax
optimum instead ranks the helpful tasks against each other too (weights ∝ exp(a_t / entropy)), which
measurably shrank the effective meta-batch on corrupted sinusoid (README). At initialisation (score 0)
every gate is 0.5, i.e. uniform weights.

``J`` is added to the returned meta-loss; its gradient reaches only the weighting module (descriptors and
alignments are detached), and the outer loss does not reach the weighting module (weights detached), so the
module cannot cheat by down-weighting hard tasks. Uniform weights are the special case ``uniform=True``
(and the module's output at initialisation: the score layer starts at zero).

``MetaBatchWeighting`` holds the options of this mechanism in ``AttentionMAML`` (which builds the module).

**Attentive task selection** (``TaskSelector``). Given target task(s) and a pool of candidates, embed every
task (default: ``function_signature``, the kernel-smoothed support targets on a fixed grid, standardised),
attend from the targets to the pool, and sample the next meta-batch from
``(1 - uniform_share) * attention + uniform_share / N`` (temperature on the attention scores). In
``AttentionMAML`` every incoming meta-batch is the pool and the learner trains on ``keep`` tasks of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnmeta.nn.attention import SetAttentionBlock, attention_weights
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["TaskWeighting", "MetaBatchWeighting", "TaskSelector", "function_signature", "cosine_alignment",
           "descriptor_stats", "DESCRIPTOR_STATS", "WEIGHTING_MODES"]

DESCRIPTOR_STATS = 8
WEIGHTING_MODES = ("gate", "softmax")
# measured on 30%-corrupted sinusoid, 10,000 meta-steps (README): gate 0.03 best of 0.03 / 0.1
DEFAULT_ENTROPY = {"gate": 0.03, "softmax": 0.1}


def descriptor_stats(loss_before: Tensor, loss_after: Tensor, grad_before: Tensor, grad_after: Tensor,
                     query_after: Tensor | None = None, alignment: Tensor | None = None,
                     reference: Tensor | None = None) -> Tensor:
    """Per-task descriptor statistics from ``[T]`` tensors.

    ``[log L_before, log L_after, log ||g||_before, log ||g||_after, log(L_after / L_before)]`` (``[T, 5]``),
    and with ``query_after`` (post-adaptation query loss) and ``alignment`` (cosine with the meta-batch)
    also ``[log Q_after, log(Q_after / L_after), alignment]`` (``[T, 8]``).

    ``reference [T]`` makes the statistics scale-free: losses are divided by it and gradient norms by its
    square root (e.g. the variance of a regression task's support targets, the loss of predicting their mean,
    so ``L / reference`` is the unexplained fraction; ``log(ways)`` for classification). Then a task's weight
    cannot depend on how large its targets are, only on how well it is fitted."""
    eps = 1e-8
    if reference is not None:
        reference = reference.clamp_min(eps)
        loss_before, loss_after = loss_before / reference, loss_after / reference
        grad_before, grad_after = grad_before / reference.sqrt(), grad_after / reference.sqrt()
        query_after = None if query_after is None else query_after / reference
    lb, la = torch.log(loss_before + eps), torch.log(loss_after + eps)
    parts = [lb, la, torch.log(grad_before + eps), torch.log(grad_after + eps), la - lb]
    if (query_after is None) != (alignment is None):
        raise ValueError("pass both query_after and alignment (8 statistics) or neither (5 statistics)")
    if query_after is not None and alignment is not None:
        qa = torch.log(query_after + eps)
        parts += [qa, qa - la, alignment.to(qa.dtype)]
    return torch.stack(parts, dim=-1)


def cosine_alignment(task_grads: Tensor, heldout_grad: Tensor | None = None) -> Tensor:
    """Alignment ``a_t = cos(g_t, g_V)`` of each task gradient ``task_grads [T, P]`` with the held-out
    gradient ``heldout_grad [P]``; default: leave-one-out, ``g_V = sum_{s != t} g_s / ||g_s||`` (unit task
    steps, so a few tasks with huge gradients cannot set the direction). Returns ``[T]``."""
    if task_grads.dim() != 2:
        raise ValueError(f"task_grads must be [tasks, parameters], got {tuple(task_grads.shape)}")
    if heldout_grad is None:
        if task_grads.shape[0] < 2:
            raise ValueError("leave-one-out alignment needs at least 2 tasks in the meta-batch; "
                             "pass a held-out gradient or use a larger meta-batch")
        unit = task_grads / task_grads.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        target = unit.sum(0, keepdim=True) - unit
    else:
        target = heldout_grad.reshape(1, -1).expand_as(task_grads)
    return torch.nn.functional.cosine_similarity(task_grads, target, dim=-1, eps=1e-12)


class TaskWeighting(nn.Module):
    """Attention over the tasks of a meta-batch: descriptors ``[T, D]`` -> weights ``[T]`` (mean 1).

    Args:
        stats_dim: number of per-task statistics (``DESCRIPTOR_STATS``).
        encoder: optional ``TaskEncoder`` giving the support-set embedding part of the descriptor.
        dim / heads: width and heads of the attention over tasks.
        temperature: temperature of the scores (softmax, or each gate's sigmoid).
        entropy: weight of the entropy term of the objective (``None``: ``DEFAULT_ENTROPY[mode]``, 0.03 for
            gates, 0.1 for the softmax).
        uniform: always return weights 1 (plain MAML; the module is then unused).
        standardize: also feed each statistic standardised over the meta-batch (relative to the other tasks);
            ``False``: the statistics as they are (absolute levels only).
        mode: ``"gate"`` (default: an independent sigmoid gate per task, normalised; see the module
            docstring) or ``"softmax"`` (one distribution over the meta-batch).
    """

    def __init__(self, stats_dim: int = DESCRIPTOR_STATS, encoder: nn.Module | None = None, *,
                 dim: int = 32, heads: int = 2, temperature: float = 1.0,
                 entropy: float | None = None, uniform: bool = False, standardize: bool = True,
                 mode: str = "gate") -> None:
        super().__init__()
        if mode not in WEIGHTING_MODES:
            raise ValueError(f"mode must be one of {WEIGHTING_MODES}, got {mode!r}")
        entropy = DEFAULT_ENTROPY[mode] if entropy is None else entropy
        if temperature <= 0 or entropy < 0:
            raise ValueError(f"temperature must be > 0 and entropy >= 0, got {temperature}, {entropy}")
        self.mode = mode
        self.encoder = encoder
        embed_dim = int(getattr(encoder, "task_dim", 0)) if encoder is not None else 0
        self.stats_dim, self.standardize = stats_dim, standardize
        self.input = nn.Linear((2 if standardize else 1) * stats_dim + embed_dim, dim)
        self.attention = SetAttentionBlock(dim, heads)
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.temperature, self.entropy, self.uniform = temperature, entropy, uniform

    def probabilities(self, stats: Tensor, embeddings: Tensor | None = None) -> Tensor:
        """``p [T]`` (sums to 1) from ``stats [T, stats_dim]`` and ``embeddings [T, task_dim]``."""
        return self.weigh(stats, embeddings)[0]

    def gates(self, stats: Tensor, embeddings: Tensor | None = None) -> Tensor:
        """Per-task gates ``g [T]`` in (0, 1) (``mode="gate"``; 0.5 everywhere at initialisation)."""
        return torch.sigmoid(self.scores(stats, embeddings) / self.temperature)

    def scores(self, stats: Tensor, embeddings: Tensor | None = None) -> Tensor:
        """Raw per-task scores ``[T]`` (zeros for ``uniform=True``)."""
        if stats.dim() != 2:
            raise ValueError(f"stats must be [tasks, stats], got {tuple(stats.shape)}")
        tasks = stats.shape[0]
        if self.uniform:
            return torch.zeros(tasks, dtype=stats.dtype, device=stats.device)
        if stats.shape[1] != self.stats_dim:
            raise ValueError(f"expected {self.stats_dim} statistics per task, got {stats.shape[1]}")
        # each statistic as it is and standardised over the meta-batch (weights are relative to the others)
        spread = stats.std(0, keepdim=True, unbiased=False) if tasks > 1 else torch.ones_like(stats[:1])
        parts = [stats]
        if self.standardize:
            parts.append((stats - stats.mean(0, keepdim=True)) / (spread + 1e-3))
        if embeddings is not None:
            parts.append(embeddings)
        h = torch.relu(self.input(torch.cat(parts, dim=-1))).unsqueeze(0)
        return self.score(self.attention(h))[0, :, 0]

    def weigh(self, stats: Tensor, embeddings: Tensor | None = None,
              alignment: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(p [T], J)``: the task probabilities and the look-ahead objective of this module's mode for
        alignments ``a [T]`` (``J = 0`` without them, e.g. a single task). Only ``J`` trains the module."""
        if self.mode == "gate" and not self.uniform:
            gates = self.gates(stats, embeddings)
            probs = gates / gates.sum().clamp_min(1e-12)
            objective = None if alignment is None else self.gate_objective(gates, alignment)
        else:
            probs = torch.softmax(self.scores(stats, embeddings) / self.temperature, dim=-1)
            objective = None if alignment is None else self.objective(probs, alignment)
        return probs, probs.sum() * 0 if objective is None else objective

    def forward(self, stats: Tensor, embeddings: Tensor | None = None) -> Tensor:
        """Weights ``T * p`` ``[T]`` (mean 1)."""
        return stats.shape[0] * self.probabilities(stats, embeddings)

    def objective(self, probs: Tensor, alignment: Tensor) -> Tensor:
        """``J = -sum p_t a_t + entropy * sum p_t log p_t`` (alignment detached)."""
        if probs.shape != alignment.shape:
            raise ValueError(f"probs {tuple(probs.shape)} and alignment {tuple(alignment.shape)} must match")
        return -(probs * alignment.detach()).sum() + self.entropy * (probs * torch.log(probs + 1e-12)).sum()

    def gate_objective(self, gates: Tensor, alignment: Tensor) -> Tensor:
        """``J = -mean_t g_t a_t / rms(a) - entropy * mean_t H(g_t)`` (binary entropy ``H``; alignment
        detached). Optimum ``g_t = sigmoid(a_t / (entropy * rms(a)))``: the sign of the look-ahead gain
        decides, and dividing by the meta-batch's RMS alignment keeps the gates equally sharp while the
        alignments shrink during training (cosines of ~0.1 early, a few hundredths later)."""
        if gates.shape != alignment.shape:
            raise ValueError(f"gates {tuple(gates.shape)} and alignment {tuple(alignment.shape)} must match")
        alignment = alignment.detach()
        scale = alignment.pow(2).mean().sqrt().clamp_min(1e-8)
        g = gates.clamp(1e-6, 1 - 1e-6)
        binary_entropy = -(g * torch.log(g) + (1 - g) * torch.log(1 - g))
        return -(gates * alignment).mean() / scale - self.entropy * binary_entropy.mean()


@dataclass(frozen=True)
class MetaBatchWeighting:
    """Task attention of ``AttentionMAML``: weight the meta-batch with a ``TaskWeighting`` trained by the
    look-ahead (the learner builds the module and its ``TaskEncoder``; these are its options).

    Args:
        temperature / entropy / mode / standardize: ``TaskWeighting`` options (``mode="gate"``, the default:
            an independent sigmoid gate per task; ``"softmax"``: one distribution over the meta-batch).
        scale_free: divide the descriptor losses by a per-task reference loss (regression: variance of the
            support targets; classification: ``log(ways)``), see ``descriptor_stats``.
        heldout: trusted held-out tasks (a list of ``Task``) for the look-ahead; each meta-step uses
            ``heldout_batch`` of them (a rotating window, deterministic). Default: leave-one-out alignment
            within the meta-batch.
        task_dim / x_encoder: size and feature extractor of the support-set embedding (``make_task_encoder``).
    """

    temperature: float = 0.1
    entropy: float | None = None
    mode: str = "gate"
    standardize: bool = True
    scale_free: bool = False
    heldout: Sequence[Task] | None = field(default=None, repr=False)
    heldout_batch: int = 10
    task_dim: int = 32
    x_encoder: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.mode not in WEIGHTING_MODES:
            raise ValueError(f"task weighting mode must be one of {WEIGHTING_MODES}, got {self.mode!r}")
        for name in ("temperature", "entropy"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"task weighting {name} must be a number, got {value!r}")
        if self.temperature <= 0 or (self.entropy is not None and self.entropy < 0):
            raise ValueError(f"task weighting temperature must be > 0 and entropy >= 0, got "
                             f"{self.temperature}, {self.entropy}")
        for name in ("heldout_batch", "task_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"task weighting {name} must be a positive int, got {value!r}")
        self.heldout_tasks()  # reject a bad held-out set now

    def module(self, encoder: nn.Module | None) -> TaskWeighting:
        """The weighting module over ``DESCRIPTOR_STATS`` statistics plus ``encoder``'s embedding."""
        return TaskWeighting(encoder=encoder, entropy=self.entropy, temperature=self.temperature,
                             standardize=self.standardize, mode=self.mode)

    def heldout_tasks(self) -> TaskBatch | None:
        """``heldout`` stacked into one ``TaskBatch`` (``None`` without it)."""
        tasks = self.heldout
        if tasks is None or isinstance(tasks, TaskBatch):
            return tasks
        if isinstance(tasks, Task) or not isinstance(tasks, Sequence) or not tasks:
            raise TypeError("heldout must be a non-empty list of Task (e.g. family.fixed_tasks(20, seed))")
        if not all(isinstance(t, Task) for t in tasks):
            raise TypeError("heldout must contain only Task values")
        try:
            return TaskBatch.stack(list(tasks))
        except Exception as error:  # noqa: BLE001 - shapes differ
            raise ValueError(f"heldout tasks must all have the same shapes: {error}") from None


def function_signature(task: Task, grid: Tensor | None = None, bandwidth: float = 0.75) -> Tensor:
    """Shape descriptor of a 1-d regression task: Nadaraya-Watson smoothing of the support targets on
    ``grid`` (default 16 points in [-5, 5]), standardised to zero mean and unit norm. Returns ``[G]``."""
    if task.is_classification or task.support_x.shape[-1] != 1:
        raise ValueError("function_signature works for 1-d regression tasks; pass embed_fn=... for others")
    device = task.support_x.device
    grid = (torch.linspace(-5, 5, 16, dtype=torch.float64, device=device) if grid is None
            else grid.double().to(device))
    x, y = task.support_x.double().reshape(-1), task.support_y.double().reshape(-1)
    kernel = torch.exp(-0.5 * ((grid[:, None] - x[None, :]) / bandwidth) ** 2) + 1e-12
    smooth = (kernel * y).sum(1) / kernel.sum(1)
    smooth = smooth - smooth.mean()
    return (smooth / (smooth.norm() + 1e-8)).float()


class TaskSelector:
    """Attentive task selection: sample a meta-batch from a pool, favouring tasks like the target(s).

    Args:
        embed_fn: ``Task -> [d]`` embedding (default ``function_signature``).
        temperature: attention temperature (lower = sharper); scores are ``<q, k> / (sqrt(d) * temperature)``.
        uniform_share: probability mass spread uniformly over the pool (in [0, 1]) so no task is starved.
        targets: the target tasks (or their embeddings ``[n, d]``) that ``select`` attends from.
        keep: how many tasks ``select`` draws from a pool (``AttentionMAML``: of each meta-batch).
    """

    def __init__(self, embed_fn: Callable[[Task], Tensor] = function_signature, *, temperature: float = 0.05,
                 uniform_share: float = 0.2, targets: Sequence[Task] | Tensor | None = None,
                 keep: int | None = None) -> None:
        for name, value in (("temperature", temperature), ("uniform_share", uniform_share)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"task selector {name} must be a number, got {value!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= uniform_share <= 1.0:
            raise ValueError(f"uniform_share must be in [0, 1], got {uniform_share}")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"task selector keep must be a positive int, got {keep!r}")
        self.embed_fn, self.temperature, self.uniform_share = embed_fn, temperature, uniform_share
        self.targets, self.keep = targets, keep

    def __repr__(self) -> str:
        targets = "None" if self.targets is None else f"<{len(self.targets)} tasks>"
        return (f"TaskSelector(temperature={self.temperature}, uniform_share={self.uniform_share}, "
                f"keep={self.keep}, targets={targets})")

    def embed(self, tasks: Sequence[Task]) -> Tensor:
        """``[n, d]`` embeddings (float32, on the CPU) of ``tasks``."""
        if len(tasks) == 0:
            raise ValueError("need at least one task to embed")
        return torch.stack([self.embed_fn(t).detach().float().reshape(-1).cpu() for t in tasks])

    def select(self, pool: Sequence[Task] | Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Indices ``[keep]`` into ``pool`` drawn by ``sample`` from this selector's ``targets``."""
        if self.targets is None or self.keep is None:
            missing = " and ".join(n for n in ("targets", "keep") if getattr(self, n) is None)
            raise ValueError(f"TaskSelector.select needs {missing}: set TaskSelector(targets=tasks, keep=N) "
                             "(targets: a few tasks like the ones to do well on, e.g. validation tasks)")
        return self.sample(self.targets, pool, self.keep, generator)

    def probabilities(self, targets: Sequence[Task] | Tensor, pool: Sequence[Task] | Tensor) -> Tensor:
        """Sampling probabilities ``[N]`` over ``pool`` (tasks, or their embeddings ``[N, d]``)."""
        queries = targets if isinstance(targets, Tensor) else self.embed(targets)
        keys = pool if isinstance(pool, Tensor) else self.embed(pool)
        scale = 1.0 / (math.sqrt(keys.shape[-1]) * self.temperature)
        attention = attention_weights(queries, keys, scale=scale).mean(0)
        return (1 - self.uniform_share) * attention + self.uniform_share / keys.shape[0]

    def sample(self, targets: Sequence[Task] | Tensor, pool: Sequence[Task] | Tensor, meta_batch: int,
               generator: torch.Generator | None = None) -> Tensor:
        """Indices ``[meta_batch]`` into ``pool``, drawn without replacement from ``probabilities``."""
        probs = self.probabilities(targets, pool)
        if meta_batch > probs.numel():
            raise ValueError(f"cannot draw {meta_batch} distinct tasks from a pool of {probs.numel()}")
        return torch.multinomial(probs, meta_batch, replacement=False, generator=generator)
