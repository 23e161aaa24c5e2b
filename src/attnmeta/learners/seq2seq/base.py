"""The contract of few-shot sequence-to-sequence learners: meta-train on tasks of pairs, then adapt to a new
task's support pairs and generate its queries' targets.

A learner owns a model, a ``Seq2SeqTransformer`` or a ``Seq2SeqLSTM`` (its parameters are the
meta-parameters), and the ``Vocabulary`` it was built with. Learners differ in how they produce the
initialisation (meta-training); at test time they all adapt the same way by default, ``finetune_steps`` Adam
steps on random batches of the task's support pairs (``adapt``), so that a comparison measures the
initialisation (MAML can adapt with its own inner loop instead); generation with the adapted parameters is
shared. Per task, symbols the vocabulary has not seen get spare ids (``Vocabulary.task_mapping``); in
meta-training a random share of each task's characters is treated as new (``new_symbol_rate``), so that the
model learns to pick up a new script from the support set.
With ``edits`` the model is a transducer with hard monotonic attention: it reads the symbols to edit, ``EOS``,
then the tags, and writes edit actions (``attnmeta.tasks.seq2seq_edits``), which ``decode_output`` applies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from attnmeta.learners.base import MetaOutput
from attnmeta.learners.seq2seq.imitation import imitation_loss, roll_in_groups
from attnmeta.nn.seq2seq import Seq2SeqTransformer, sequence_loss, shift_right
from attnmeta.nn.seq2seq_decoding import beam_search, greedy_decode
from attnmeta.nn.seq2seq_lstm import Seq2SeqLSTM
from attnmeta.tasks.seq2seq import EOS, SPECIALS, Encoded, Seq2SeqBatch, Seq2SeqTask, Sequence_, Vocabulary
from attnmeta.tasks.seq2seq_augment import hallucinate_task
from attnmeta.tasks.seq2seq_edits import COPY, DELETE, apply_actions, edit_actions, split_tags

Params = dict[str, Tensor]


@dataclass
class EncodedTask:
    """A task's pairs as token ids (``[n, L]``, ``PAD``-padded; targets end with ``EOS``)."""

    support_source: Tensor
    support_target: Tensor
    query_source: Tensor
    query_target: Tensor
    mapping: dict[str, int]
    unknown: int  # query-source symbols that became UNK
    real_support: int | None = None  # the first rows of the support set are real pairs, the rest hallucinated


class Seq2SeqLearner(nn.Module):
    """Base class: subclasses implement ``adapt`` (and ``meta_loss`` when ``meta_trained``).

    Args:
        vocabulary: the symbols the model knows (plus spare ids).
        dim / heads / layers / ff_dim / dropout / max_length: the ``Seq2SeqTransformer``'s size.
        architecture: ``"transformer"`` (``Seq2SeqTransformer``) or ``"lstm"`` (``attnmeta.nn.seq2seq_lstm.
            Seq2SeqLSTM``, the hard-attention LSTM transducer of the 2018 shared task's strongest systems;
            needs ``edits``): its embeddings and encoder states are ``dim`` wide, its decoder state
            ``ff_dim``; ``heads`` and ``layers`` are the Transformer's only.
        copy: the model's pointer-generator output (copying source characters, new scripts' included).
        edits: the model writes edit actions with hard monotonic attention (``COPY``, ``DELETE``, insert a
            symbol) instead of the target's symbols; the oracle's actions are its training targets.
        explore: (``edits`` only) train by imitation learning (``attnmeta.learners.seq2seq.imitation``): the
            model rolls in, following the expert's optimal actions or, with this probability per step, its
            own sample; the loss is that of the optimal actions. ``None``: teacher forcing on the static
            oracle's actions. Used by pooled training (``transfer``) and fine-tuning, not by MAML's loops.
        finetune_explore: (``edits`` only) ``explore`` for the test-time fine-tuning alone (default:
            ``explore``): imitation learning where it pays (measured) without its cost in meta-training.
        label_smoothing: of the token cross-entropy.
        new_symbol_rate: share of a training task's single-character symbols treated as new (spare ids).
        beam: beam size of ``generate`` (1: greedy).
        ensemble: copies of the model fine-tuned on each new task (``adapt(encoded, member)``: their own
            batch order, roll-in samples and dropout); decoding averages their next-symbol probabilities.
        finetune_steps / finetune_lr / finetune_batch: the test-time adaptation: Adam steps, their learning
            rate and pairs per step (all support pairs when the support set is smaller).
        hallucinate: hallucinated pairs added to a new task's support set before it is adapted to (stems
            replaced by random letters, ``attnmeta.tasks.seq2seq_augment``); 0: none.
        meta_hallucinate: the same in meta-training: hallucinated pairs added to each training task's
            support set (drawn anew each time the task is sampled).
        hallucinated_share: the share of each test-time fine-tuning batch drawn from the hallucinated pairs
            (the rest from the real ones); ``None``: batches drawn uniformly from all support pairs, so that
            with 1000 hallucinated and 100 real pairs 9% of a batch is real.
    """

    name = "seq2seq"
    #: False for a learner without meta-training (``scratch``): the trainer only tests it.
    meta_trained = True
    #: The model has a ``task_context`` vector the learner sets per task (either network).
    uses_task_context = False

    def __init__(self, vocabulary: Vocabulary, *, dim: int = 128, heads: int = 4, layers: int = 2,
                 ff_dim: int = 256, dropout: float = 0.1, max_length: int = 100, copy: bool = False,
                 edits: bool = False, explore: float | None = None,
                 finetune_explore: float | None = None, label_smoothing: float = 0.1,
                 new_symbol_rate: float = 0.0, beam: int = 1, ensemble: int = 1, finetune_steps: int = 100,
                 finetune_lr: float = 5e-4, finetune_batch: int = 32, hallucinate: int = 0,
                 meta_hallucinate: int = 0, hallucinated_share: float | None = None,
                 architecture: str = "transformer") -> None:
        super().__init__()
        if finetune_steps < 0 or finetune_batch < 1 or finetune_lr <= 0:
            raise ValueError("finetune_steps must be >= 0, finetune_batch >= 1 and finetune_lr > 0")
        if hallucinate < 0 or meta_hallucinate < 0:
            raise ValueError(f"hallucinate and meta_hallucinate must be >= 0 (hallucinated pairs per task), "
                             f"got {hallucinate} and {meta_hallucinate}")
        if hallucinated_share is not None and not 0.0 <= hallucinated_share <= 1.0:
            raise ValueError("hallucinated_share must be in [0, 1] (or null: uniform over all support "
                             f"pairs), got {hallucinated_share}")
        self.hallucinate, self.meta_hallucinate = hallucinate, meta_hallucinate
        self.hallucinated_share = hallucinated_share
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr
        self.finetune_batch = finetune_batch
        if not 0.0 <= new_symbol_rate <= 1.0:
            raise ValueError(f"new_symbol_rate must be in [0, 1], got {new_symbol_rate}")
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1 (fine-tuned copies per task), got {ensemble}")
        self.ensemble = ensemble
        if copy and edits:
            raise ValueError("copy and edits are two ways of copying source symbols: choose one")
        for name, rate in (("explore", explore), ("finetune_explore", finetune_explore)):
            if rate is not None and not (edits and 0.0 <= rate <= 1.0):
                raise ValueError(f"{name} (imitation learning of edit actions) must be in [0, 1] and needs "
                                 f"edits=true, got {name}={rate} with edits={edits}")
        self.explore, self.finetune_explore = explore, finetune_explore
        self.vocabulary, self.edits = vocabulary, edits
        self.model: Seq2SeqTransformer | Seq2SeqLSTM
        if architecture == "lstm":
            if not edits:
                raise ValueError("architecture=lstm is a transducer of edit actions: it needs edits=true")
            self.model = Seq2SeqLSTM(vocabulary.size + 2, dim=dim, hidden=ff_dim, dropout=dropout,
                                     max_length=max_length, task_context=self.uses_task_context)
        elif architecture == "transformer":
            self.model = Seq2SeqTransformer(vocabulary.size + 2 * edits, dim=dim, heads=heads, layers=layers,
                                            ff_dim=ff_dim, dropout=dropout, max_length=max_length, copy=copy,
                                            task_context=self.uses_task_context, pointer=edits)
        else:
            raise ValueError(f"architecture must be 'transformer' or 'lstm', got {architecture!r}")
        self.label_smoothing, self.new_symbol_rate, self.beam = label_smoothing, new_symbol_rate, beam

    # -- encoding ------------------------------------------------------------------------------------
    def encode_task(self, task: Seq2SeqTask, generator: torch.Generator | None = None) -> EncodedTask:
        """Token ids of ``task`` (``generator``: draws the characters treated as new and the hallucinated
        pairs in meta-training), with ``hallucinate`` (in training ``meta_hallucinate``) hallucinated pairs
        appended to the support set."""
        real = len(task.support_source)
        if not self.training and self.hallucinate:
            task = hallucinate_task(task, self.hallucinate)
        elif self.training and self.meta_hallucinate:
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
            task = hallucinate_task(task, self.meta_hallucinate, seed=seed)
        hidden: set[str] = set()
        if self.training and self.new_symbol_rate > 0:
            pairs = task.support_source + task.support_target
            chars = sorted({s for seq in pairs for s in seq if len(s) == 1})
            draws = torch.rand(len(chars), generator=generator)
            hidden = {c for c, d in zip(chars, draws.tolist()) if d < self.new_symbol_rate}
        mapping = self.vocabulary.task_mapping(task.support_source + task.support_target, hidden)
        if self.edits:
            mapping.update({SPECIALS[EOS]: EOS, COPY: self.vocabulary.size, DELETE: self.vocabulary.size + 1})
        query = self.encode_sources(task.query_source, mapping)
        return EncodedTask(self.encode_sources(task.support_source, mapping).ids,
                           self.encode_targets(task.support_source, task.support_target, mapping),
                           query.ids, self.encode_targets(task.query_source, task.query_target, mapping),
                           mapping, query.unknown, real)

    def encode_sources(self, sources: Sequence[Sequence_], mapping: dict[str, int]) -> Encoded:
        """The ids the model reads for ``sources`` (``edits``: the symbols to edit, ``EOS``, the tags)."""
        if self.edits:
            sources = [rest + (SPECIALS[EOS],) + tags for rest, tags in map(split_tags, sources)]
        return self.vocabulary.encode(sources, mapping, max_length=self.model.max_length)

    def encode_targets(self, sources: Sequence[Sequence_], targets: Sequence[Sequence_],
                       mapping: dict[str, int]) -> Tensor:
        """``[n, T]`` the ids the model writes (with ``edits``: the oracle's actions), ``EOS``-terminated."""
        if self.edits:
            targets = [edit_actions(split_tags(s)[0], tuple(t)) for s, t in zip(sources, targets)]
        return self.vocabulary.encode(targets, mapping, eos=True, max_length=self.model.max_length).ids

    def decode_output(self, ids: Tensor, source: Sequence_, mapping: dict[str, int]) -> Sequence_:
        """The target symbols that the generated row ``ids`` writes for ``source``."""
        symbols = self.vocabulary.decode(ids, mapping)
        return apply_actions(split_tags(source)[0], symbols) if self.edits else symbols

    # -- the loss of a set of pairs under given parameters ------------------------------------------
    def params(self) -> Params:
        return dict(self.model.named_parameters())

    def pair_loss(self, params: Params, source: Tensor, target: Tensor,
                  rolled: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Mean token cross-entropy of ``target`` ``[n, T]`` given ``source`` ``[n, S]`` under ``params``;
        given a roll-in of them (``rolled_in``), the imitation loss of its optimal actions instead."""
        if rolled is not None:
            actions, optimal = rolled
            logits = torch.func.functional_call(self.model, params, (source, shift_right(actions)))
            return imitation_loss(logits, actions, optimal, self.label_smoothing)
        logits = torch.func.functional_call(self.model, params, (source, shift_right(target)))
        return sequence_loss(logits, target, self.label_smoothing)

    def rolled_in(self, model: nn.Module, groups: list[tuple[Tensor, Tensor]], explore: float | None,
                  generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor] | None]:
        """With an ``explore`` rate: ``model``'s roll-ins of the ``(source, target)`` groups for
        ``pair_loss``, in one batched decode (``attnmeta.learners.seq2seq.imitation``); with ``None``,
        ``None`` for each."""
        if explore is None:
            return [None] * len(groups)
        assert self.model.actions is not None
        model = cast(Seq2SeqTransformer | Seq2SeqLSTM, model)
        return list(roll_in_groups(model, groups, self.model.actions, explore, generator))

    def packed_forward(self, source_length: int) -> Callable[[Mapping[str, Tensor], Tensor], Tensor]:
        """``forward(params, x)`` for ``adapt``: ``x`` is ``[n, S + T]``, the source then the target ids."""

        def forward(params: Mapping[str, Tensor], packed: Tensor) -> Tensor:
            source, target = packed[:, :source_length], packed[:, source_length:]
            return torch.func.functional_call(self.model, dict(params), (source, shift_right(target)))

        return forward

    def task_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return sequence_loss(logits, target, self.label_smoothing)

    # -- the contract --------------------------------------------------------------------------------
    def meta_loss(self, batch: Seq2SeqBatch) -> MetaOutput:
        """Differentiable outer loss of a meta-batch of tasks."""
        raise NotImplementedError(f"{self.name} has nothing to meta-train")

    def adapt(self, encoded: EncodedTask, member: int = 0) -> Params:
        """Parameters adapted to the task's support pairs (detached; never changes the learner):
        ``finetune_steps`` Adam steps on random batches of the support pairs (seeded by the task and the
        ensemble ``member``, so an evaluation is repeatable), in training mode (dropout on)."""
        model = self.task_model(encoded).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.finetune_lr)
        n = encoded.support_source.shape[0]
        generator = torch.Generator().manual_seed(n + int(encoded.support_target.sum()) + 7919 * member)
        explore = self.explore if self.finetune_explore is None else self.finetune_explore
        with torch.enable_grad():
            for _ in range(self.finetune_steps):
                rows = self.batch_rows(n, encoded.real_support, generator)
                source, target = encoded.support_source[rows], encoded.support_target[rows]
                rolled = self.rolled_in(model, [(source, target)], explore, generator)[0]
                loss = self.pair_loss(dict(model.named_parameters()), source, target, rolled)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return {name: p.detach() for name, p in model.named_parameters()}

    def task_model(self, encoded: EncodedTask) -> nn.Module:
        """The copy of the model that ``adapt`` fine-tunes (a learner may prepare it for ``encoded``)."""
        return copy.deepcopy(self.model)

    def batch_rows(self, n: int, real: int | None, generator: torch.Generator) -> Tensor:
        """Rows of one fine-tuning batch of a support set of ``n`` pairs whose first ``real`` are real:
        uniform over all rows, or ``hallucinated_share`` of the batch from the hallucinated rows."""
        if self.hallucinated_share is None or real is None or real >= n:
            return torch.randperm(n, generator=generator)[:self.finetune_batch]
        fake = min(round(self.hallucinated_share * self.finetune_batch), n - real)
        real_rows = torch.randperm(real, generator=generator)[:self.finetune_batch - fake]
        return torch.cat([real_rows, real + torch.randperm(n - real, generator=generator)[:fake]])

    def adapt_ensemble(self, encoded: EncodedTask, size: int | None = None) -> list[Params]:
        """``adapt`` once per member of an ensemble of ``size`` (default: ``ensemble``)."""
        return [self.adapt(encoded, member) for member in range(self.ensemble if size is None else size)]

    @torch.no_grad()
    def generate_ids(self, params: Params | Sequence[Params], source: Tensor, beam: int | None = None,
                     batch_size: int = 256) -> Tensor:
        """Generated ids ``[n, L]`` (``EOS``-terminated) for ``source`` ``[n, S]`` under ``params`` (or an
        ensemble's list of them)."""
        models = []
        for member in [params] if isinstance(params, Mapping) else params:
            model = copy.deepcopy(self.model).eval()
            model.load_state_dict({k: v.detach() for k, v in member.items()}, strict=False)
            models.append(model)
        beam = self.beam if beam is None else beam
        rows = []
        for start in range(0, source.shape[0], batch_size):
            chunk = source[start:start + batch_size]
            ids = greedy_decode(models, chunk) if beam == 1 else beam_search(models, chunk, beam)[0]
            rows.extend(list(ids))
        width = max((r.numel() for r in rows), default=1)
        out = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :r.numel()] = r
        return out

    def predict_task(self, task: Seq2SeqTask, beam: int | None = None) -> tuple[list[Sequence_], int]:
        """Adapt to ``task``'s support pairs; its queries' generated targets and the count of query symbols
        that became ``UNK`` (neither known nor in the support set)."""
        was_training = self.training
        self.eval()
        try:
            encoded = self.encode_task(task)
            ids = self.generate_ids(self.adapt_ensemble(encoded), encoded.query_source, beam)
        finally:
            self.train(was_training)
        outputs = [self.decode_output(row, source, encoded.mapping)
                   for row, source in zip(ids, task.query_source)]
        return outputs, encoded.unknown


def batch_output(losses: Sequence[Tensor], metrics: dict[str, float]) -> MetaOutput:
    """``MetaOutput`` of per-task outer losses (their mean is the loss)."""
    task_losses = torch.stack(list(losses))
    loss = task_losses.mean()
    return MetaOutput(loss, task_losses.detach(), {"loss": loss.item(), **metrics})
