"""SNAIL: a simple neural attentive meta-learner (Mishra et al. 2018), few-shot classification.

An episode is the sequence of ``(embedding, one-hot label)`` pairs of its support set followed by one query
whose label is zeroed; blocks of dilated causal temporal convolutions (dense blocks with gated activations)
and causal attention read the sequence; the output at the query position gives its ``ways`` logits.

All queries of a task are scored in **one** sequence pass, exactly: the support prefix is shared (it is
causal, so it never sees a query), and every query sits at the same virtual position ``n_support`` of its
own sequence. The sequence is ``[support (ns), queries (nq)]``; query ``q`` attends to the support and to
itself only, and its dilated convolution with dilation ``d`` reads support position ``ns - d``. This is
numerically equal to running ``nq`` sequences ``support + (query q)`` (tested), at the cost of one.

Architecture (paper, Omniglot): ``Attention(64, 32) -> TC(128) -> Attention(256, 128) -> TC(128) ->
Attention(512, 256) -> linear(ways)``; ``TC`` has ``ceil(log2(seq_len))`` dense blocks with dilations
``1, 2, 4, ...``, ``seq_len = ways * shots + 1``. ``heads > 1`` gives causal multi-head attention.

Two deviations from the paper, on by default (``normalize=False, tie_query_key=False`` is the paper's
model): the embeddings are centred on their task's support mean and scaled to unit RMS over the support
(``standardize_by_support``), and each attention block's key map starts equal to its query map. Why: Conv-4
embeddings are non-negative (ReLU, max-pool) and share a large common component (cosine ~0.8 between
different Omniglot characters at initialisation); a randomly initialised attention score is a random
bilinear form dominated by that component, so it does not compare a query with the support, the loss gives
almost no signal and training sits at chance for hundreds of steps (issue 7; reproduced in a second by
``tests/test_snail.py::test_learns_offset_prototypes_quickly``). Centred embeddings and tied maps make the
first attention read similar examples from step 0.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import Learner, MetaOutput, episode_classification_output
from attnmeta.learners.matching import check_classification_batch, embed_episodes, infer_feature_dim
from attnmeta.learners.protonet import METRIC_LOGITS, prototypes
from attnmeta.learners.registry import register
from attnmeta.nn.attention import scaled_dot_product_attention
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["SNAIL", "episode_attention_mask", "predecessor_index", "standardize_by_support"]


def episode_attention_mask(n_support: int, n_query: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``[L, L]`` (``L = ns + nq``; True = may attend): causal over the support, each query sees the
    whole support and itself (it is the last element of its own sequence)."""
    length = n_support + n_query
    rows = torch.arange(length, device=device)[:, None]
    cols = torch.arange(length, device=device)[None, :]
    support_part = (cols < n_support) & ((cols <= rows) | (rows >= n_support))
    return support_part | (rows == cols)


def predecessor_index(n_support: int, n_query: int, dilation: int,
                      device: torch.device | None = None) -> Tensor:
    """Index ``[L]`` of the element ``dilation`` steps back of every position (query: ``ns - dilation``);
    ``-1`` where it falls before the start of the sequence."""
    positions = torch.arange(n_support + n_query, device=device).clamp(max=n_support)
    back = positions - dilation
    return back.masked_fill(back < 0, -1)


def standardize_by_support(support: Tensor, query: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Centre embeddings on their task's support mean and scale them to unit RMS over the support.

    ``support [T, ns, D]``, ``query [T, nq, D]`` -> same shapes. Statistics come from the support only, so
    every query still depends on the support and itself alone.
    """
    mean = support.mean(1, keepdim=True)
    scale = (support - mean).pow(2).mean((1, 2), keepdim=True).add(eps).rsqrt()
    return (support - mean) * scale, (query - mean) * scale


class DenseBlock(nn.Module):
    """Gated dilated causal convolution (kernel 2) whose ``filters`` outputs are concatenated to the input."""

    def __init__(self, in_channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.dilation, self.filters = dilation, filters
        self.current = nn.Linear(in_channels, 2 * filters)
        self.previous = nn.Linear(in_channels, 2 * filters, bias=False)

    def forward(self, x: Tensor, n_support: int) -> Tensor:
        """``x [B, L, C] -> [B, L, C + filters]``."""
        index = predecessor_index(n_support, x.shape[1] - n_support, self.dilation, x.device)
        # Every predecessor is a support position (or none: -1, a zero row; ``previous`` has no bias), so
        # the map runs over the support only and its rows are gathered, not over every query's copy.
        from_support = self.previous(x[:, :n_support])
        previous = torch.cat([torch.zeros_like(from_support[:, :1]), from_support], dim=1)[:, index + 1]
        pre = self.current(x) + previous
        activation = torch.tanh(pre[..., :self.filters]) * torch.sigmoid(pre[..., self.filters:])
        return torch.cat([x, activation], dim=-1)


class TCBlock(nn.Module):
    """``ceil(log2(seq_len))`` dense blocks with dilations ``1, 2, 4, ...``."""

    def __init__(self, in_channels: int, seq_len: int, filters: int) -> None:
        super().__init__()
        blocks = max(1, math.ceil(math.log2(seq_len)))
        self.blocks = nn.ModuleList(
            DenseBlock(in_channels + i * filters, filters, 2 ** i) for i in range(blocks))
        self.out_channels = in_channels + blocks * filters

    def forward(self, x: Tensor, n_support: int) -> Tensor:
        for block in self.blocks:
            x = block(x, n_support)
        return x


class AttentionBlock(nn.Module):
    """Causal (multi-head) attention whose ``value_size`` read is concatenated to the input."""

    def __init__(self, in_channels: int, key_size: int, value_size: int, heads: int = 1) -> None:
        super().__init__()
        if key_size % heads or value_size % heads:
            raise ValueError(f"key_size ({key_size}) and value_size ({value_size}) must be multiples of "
                             f"heads ({heads})")
        self.heads = heads
        self.query = nn.Linear(in_channels, key_size)
        self.key = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)
        self.out_channels = in_channels + value_size

    def tie_query_key(self) -> None:
        """Initialise the key map equal to the query map: scores start as ``<W x_i, W x_j> + ...``, a
        similarity (a random bilinear form otherwise), so attention reads similar elements from step 0."""
        with torch.no_grad():
            self.key.weight.copy_(self.query.weight)
            self.key.bias.copy_(self.query.bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, L, C]``, ``mask [L, L]`` -> ``[B, L, C + value_size]``."""
        b, length, _ = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, length, self.heads, -1).transpose(1, 2)

        read = cast(Tensor, scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                                         split(self.value(x)), mask))  # no weights asked
        return torch.cat([x, read.transpose(1, 2).reshape(b, length, -1)], dim=-1)


#: Where SNAIL's options that did not help live (``prototype_residual``, ``input_noise``,
#: ``shuffle_features``, ``subtasks``, ``prototype_distance``): a plugin learner of the repository.
VARIANTS = "learner 'snail-variants' (--import experiments/omniglot/snail_variants.py)"


class SNAIL(Learner):
    """SNAIL over any embedding network.

    Args:
        model: embedding network ``[B, *input_shape] -> [B, D]``.
        ways: number of classes (fixed: labels are one-hot inputs); shots: support shots (sizes TC blocks).
        feature_dim / input_shape: embedding size ``D``, or an input shape to infer it with a dry run.
        filters: channels added by each dense block; key/value sizes: the paper's Omniglot configuration.
        heads: attention heads (1 in the paper).
        normalize: standardise embeddings on the support (``standardize_by_support``); tie_query_key:
            initialise every key map equal to its query map. Both default on; both off is the paper's model.
        norm_input: not in the paper, off by default: each embedding's mean square over its features (after
            the standardisation, when ``normalize``) is appended to it as one more input channel. Attention
            scores are inner products, and ``<q, k> - |k|^2 / 2`` ranks the keys as the distance
            ``-|q - k|^2 / 2`` does, so with this channel the first attention block can read each query's
            nearest support example (the nearest-prototype rule in 1-shot tasks; a query map whose last
            coordinate is a constant bias, a key map whose last coordinate reads the norm channel), which
            inner products of the embeddings alone cannot. On Omniglot, SNAIL on a frozen Conv-4:
            98.50-98.54% at five seeds against 98.37-98.63% without (means 98.52 / 98.47; 98.51 / 98.39 on
            one and the same Conv-4).
        prototype_loss_weight: optional auxiliary loss (off by default, not in the paper): this weight times
            the Prototypical Networks cross-entropy (squared Euclidean distance) of the same episode's raw
            embeddings is added to the training loss, so the embedding also gets a direct metric signal.
            Prediction is SNAIL's alone. On Omniglot in 30 CPU-minutes: 97.32% against 94.49% without (the
            Omniglot preset uses it).
        prototype_loss_scope: ``"batch"`` (default: the meta-batch as one episode, every query against the
            prototypes of all classes of the meta-batch, matched by their original class ids; 80-way for 16
            5-way tasks; measured better on Omniglot, 97.3% vs 96.5%) or ``"episode"`` (each task's queries
            against its own ``ways`` prototypes).
        train_embedding: ``True`` (default, the paper): SNAIL's loss trains the embedding network too.
            ``False``: ``meta_loss`` embeds without gradient, so only the sequence model learns from it;
            train the embedding by another loss (e.g. Prototypical Networks on other classes, or a frozen
            pre-trained backbone). Excludes ``prototype_loss_weight`` (it would train nothing).

    The options tried on Omniglot that did not help (a prototype residual, input noise, feature shuffling,
    subtasks of larger episodes, another auxiliary distance) are in the repository's
    ``experiments/omniglot/snail_variants.py``, a plugin learner ``snail-variants``.
    """

    name = "snail"
    any_ways = False
    #: What the refusal of larger training episodes suggests.
    larger_episodes_hint = f"to train on subtasks of larger episodes: {VARIANTS}"

    def __init__(self, model: nn.Module, ways: int, *, shots: int = 1, task_type: str = "classification",
                 feature_dim: int | None = None, input_shape: tuple[int, ...] | None = None,
                 filters: int = 128, attention_sizes: tuple[tuple[int, int], ...] = ((64, 32), (256, 128),
                                                                                   (512, 256)),
                 heads: int = 1, normalize: bool = True, tie_query_key: bool = True, norm_input: bool = False,
                 prototype_loss_weight: float = 0.0, prototype_loss_scope: str = "batch",
                 train_embedding: bool = True) -> None:
        super().__init__(task_type)
        if task_type != "classification":
            raise ValueError(f"{self.name} is a few-shot classification learner (classification only); "
                             "use task_type='classification'")
        if not isinstance(ways, int) or ways < 2:
            raise ValueError(f"SNAIL needs ways >= 2 (the one-hot label size), got {ways!r}")
        if not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots must be a positive int, got {shots!r}")
        if not prototype_loss_weight >= 0:
            raise ValueError(f"prototype_loss_weight must be >= 0 (0 turns the auxiliary loss off), got "
                             f"{prototype_loss_weight!r}")
        if not train_embedding and prototype_loss_weight:
            raise ValueError("train_embedding=False embeds without gradient, so the auxiliary prototype loss "
                             "would train nothing; set prototype_loss_weight=0 (train the embedding by a "
                             "separate loss instead)")
        if prototype_loss_scope not in ("episode", "batch"):
            raise ValueError("prototype_loss_scope must be 'episode' or 'batch', got "
                             f"{prototype_loss_scope!r}")
        if len(attention_sizes) != 3:
            raise ValueError("attention_sizes must give (key_size, value_size) for the 3 attention blocks")
        self.model, self.ways, self.shots, self.normalize = model, ways, shots, normalize
        self.prototype_loss_weight = float(prototype_loss_weight)
        self.prototype_loss_scope = prototype_loss_scope
        self.prototype_logits = METRIC_LOGITS["euclidean"]
        self.train_embedding = bool(train_embedding)
        self.norm_input = bool(norm_input)
        dim = feature_dim or infer_feature_dim(model, input_shape)
        seq_len = ways * shots + 1
        self.attention1 = AttentionBlock(dim + ways + self.norm_input, *attention_sizes[0], heads=heads)
        self.tc1 = TCBlock(self.attention1.out_channels, seq_len, filters)
        self.attention2 = AttentionBlock(self.tc1.out_channels, *attention_sizes[1], heads=heads)
        self.tc2 = TCBlock(self.attention2.out_channels, seq_len, filters)
        self.attention3 = AttentionBlock(self.tc2.out_channels, *attention_sizes[2], heads=heads)
        self.classifier = nn.Linear(self.attention3.out_channels, ways)
        if tie_query_key:
            for block in (self.attention1, self.attention2, self.attention3):
                block.tie_query_key()

    def sequence_inputs(self, support_emb: Tensor, query_emb: Tensor) -> tuple[Tensor, Tensor]:
        """The embeddings ``[T, ns, D]`` / ``[T, nq, D]`` as the sequence model reads them (standardised on
        the support when ``normalize``)."""
        return standardize_by_support(support_emb, query_emb) if self.normalize else (support_emb, query_emb)

    def read_sequence(self, support: Tensor, support_y: Tensor, query: Tensor) -> Tensor:
        """The sequence model on inputs from ``sequence_inputs``: query logits ``[T, nq, ways]``."""
        n_support, n_query = support.shape[1], query.shape[1]
        if self.norm_input:
            support, query = (torch.cat([e, e.pow(2).mean(-1, keepdim=True)], dim=-1)
                              for e in (support, query))
        labels = torch.cat([F.one_hot(support_y, self.ways).to(support.dtype),
                            support.new_zeros(support.shape[0], n_query, self.ways)], dim=1)
        x = torch.cat([torch.cat([support, query], dim=1), labels], dim=-1)
        mask = episode_attention_mask(n_support, n_query, x.device)
        x = self.attention1(x, mask)
        x = self.tc1(x, n_support)
        x = self.attention2(x, mask)
        x = self.tc2(x, n_support)
        x = self.attention3(x, mask)
        return self.classifier(x[:, n_support:])

    def sequence_logits(self, support_emb: Tensor, support_y: Tensor, query_emb: Tensor) -> Tensor:
        """Query logits ``[T, nq, ways]``; support ``[T, ns, D]``, labels ``[T, ns]``, queries
        ``[T, nq, D]``."""
        support, query = self.sequence_inputs(support_emb, query_emb)
        return self.read_sequence(support, support_y, query)

    def _check(self, batch: Task | TaskBatch) -> None:
        check_classification_batch(batch, self.name)
        if batch.ways == self.ways:
            return
        hint = (f" ({self.larger_episodes_hint})" if batch.ways > self.ways and isinstance(batch, TaskBatch)
                else "")
        raise ValueError(f"{self.name} was built {self.ways}-way (one-hot label inputs) and cannot score a "
                         f"{batch.ways}-way episode; build it with ways={batch.ways} or sample "
                         f"{self.ways}-way episodes{hint}")

    def check_training_ways(self, train_ways: int, ways: int) -> None:
        if train_ways == self.ways:
            return
        hint = f" ({self.larger_episodes_hint})" if train_ways > self.ways else ""
        raise ValueError(f"{self.name} was built {self.ways}-way and cannot train on {train_ways}-way "
                         f"episodes; train on {self.ways}-way episodes{hint}")

    def embed(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Support / query embeddings ``[T, ns, D]`` / ``[T, nq, D]`` (without gradient unless
        ``train_embedding``)."""
        with torch.set_grad_enabled(self.train_embedding and torch.is_grad_enabled()):
            return embed_episodes(self.model, batch.support_x, batch.query_x)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        self._check(batch)
        support_emb, query_emb = self.embed(batch)
        out = episode_classification_output(self.sequence_logits(support_emb, batch.support_y, query_emb),
                                            batch.query_y)
        return self.with_prototype_loss(out, support_emb, query_emb, batch)

    def with_prototype_loss(self, out: MetaOutput, support_emb: Tensor, query_emb: Tensor,
                            batch: TaskBatch) -> MetaOutput:
        """``out`` plus ``prototype_loss_weight`` x the auxiliary loss of the embeddings (``out`` if off)."""
        if not self.prototype_loss_weight:
            return out
        proto = self._prototype_output(support_emb, query_emb, batch)
        weight = self.prototype_loss_weight
        metrics = {**out.metrics, "loss": out.metrics["loss"] + weight * proto.metrics["loss"],
                   "snail_loss": out.metrics["loss"], "prototype_loss": proto.metrics["loss"],
                   "prototype_accuracy": proto.metrics["accuracy"]}
        task_losses = out.task_losses + weight * proto.task_losses
        return MetaOutput(out.loss + weight * proto.loss, task_losses, metrics)

    def _prototype_output(self, support_emb: Tensor, query_emb: Tensor, batch: TaskBatch) -> MetaOutput:
        """Prototypical Networks loss of the embeddings ``[T, ns, D]`` / ``[T, nq, D]``, per task ``[T]``."""
        if self.prototype_loss_scope == "episode":
            centres = prototypes(support_emb, batch.support_y, batch.ways)
            return episode_classification_output(self.prototype_logits(query_emb, centres), batch.query_y)
        tasks, n_query = batch.query_y.shape
        original = batch.classes.to(batch.support_y.device)  # class ids are metadata: kept on the CPU
        support_ids = original.gather(1, batch.support_y).flatten()
        query_ids = original.gather(1, batch.query_y).flatten()
        classes, labels = torch.unique(torch.cat([support_ids, query_ids]), return_inverse=True)
        support_labels, query_labels = labels[:support_ids.numel()], labels[support_ids.numel():]
        centres = prototypes(support_emb.flatten(0, 1), support_labels, len(classes))
        logits = self.prototype_logits(query_emb.flatten(0, 1), centres)
        return episode_classification_output(logits.view(tasks, n_query, -1),
                                             query_labels.view(tasks, n_query))

    def predict(self, task: Task) -> Tensor:
        self._check(task)
        with torch.no_grad():
            support_emb, query_emb = embed_episodes(self.model, task.support_x[None], task.query_x[None])
            return self.sequence_logits(support_emb, task.support_y[None], query_emb)[0]


@register("snail", head=False, description="SNAIL: temporal convolutions + causal attention over the episode")
def build_snail(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                **options: Any) -> SNAIL:
    if ways is None:
        raise ValueError("snail needs ways=<number of classes> (its label inputs are one-hot of that size)")
    return SNAIL(model, ways, task_type=task_type, **options)
