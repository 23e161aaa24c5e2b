"""Multi-domain episodes in the style of Meta-Dataset (Triantafillou et al. 2020): ``multi:<name>,...``.

``make_benchmark("multi:omniglot,cifar-fs", ...)`` (CLI: ``attnmeta train multi:omniglot,cifar-fs --algo
protonet``) builds every named image benchmark as usual and samples episodes across them:

1. **Source**: one of the sources, uniformly.
2. **Ways**: ``N`` uniform in ``[ways_min, ways_max]`` (defaults 5..20), both clipped to the number of classes
   the source has in that split; the classes are a uniform draw without replacement from that split.
3. **Shots** (``variable_shots=True``, the default; Meta-Dataset's scheme simplified): a support budget
   ``S`` uniform in ``[N, N * cap]``, with ``cap = min(shots_max, fewest examples of a class in the split
   - queries)``; every class gets one shot, and the other ``S - N`` shots fall on the ``N * (cap - 1)``
   free slots uniformly without replacement (a multivariate hypergeometric split), so a class has between
   1 and ``cap`` shots. Queries per class are fixed (``queries`` / ``train_queries``).
   ``variable_shots=False``: every class has ``shots`` (``train_shots``) support examples (balanced episodes,
   as FEAT's regulariser and ProtoNets' ``support_splits`` need).

   Why variable shots work: a ``Task`` is just support/query tensors with labels ``0..N-1``; nothing in it
   or in the evaluation assumes equal shots, and the learners compute class statistics from one-hot label
   counts (ProtoNets, Matching Networks, SimpleShot, R2-D2, MetaOptNet, Relation Networks) or plain
   cross-entropy on the support set (the MAML family, Reptile, transfer baselines). Learners that need
   balanced episodes say so in one line (FEAT with ``balance > 0``, ProtoNets with ``support_splits > 1``).
4. **Meta-batches**: ``TaskBatch`` stacks tasks of equal shapes, so a meta-batch of ``T`` tasks shares
   one draw of (source, ``N``, shots per class); its ``T`` tasks are independent episodes of that source
   and shape. With ``meta_batch=1`` (recommended) every episode is drawn independently. Validation and test
   episodes are ``fixed_tasks``: ``n`` single episodes from a generator seeded with ``seed`` alone.

Inputs: each source keeps its own storage, image size and normalisation (its ``NormalizedSource`` mean/std,
or [0, 1] for Omniglot / QuickDraw / imagefolder); sampled examples are then resized (bilinear, antialiased)
to ``image_size`` (default 84) and grayscale repeated to 3 channels: the input shape is ``3 x S x S``.
``task.info["source"]`` names the source of every episode (the trainer reports test accuracy per source);
``task.classes`` are global ids (each source's ids shifted past the previous sources'), so transfer
baselines pre-train one classifier over all training classes.

Simplified vs Meta-Dataset: no class-hierarchy sampling (ImageNet's, Omniglot's alphabets), no per-class
shot proportions by class size, queries fixed instead of balanced by the smallest class, ways up to 20 (not
50), and sources sampled uniformly (not by a chosen mixture).

Options (``benchmark_options``): ``roots`` (``{name: folder}``; also ``roots.NAME`` keys), ``sources``
(``{name: {options of that benchmark, and its split}}``), ``ways_min``, ``ways_max``, ``shots_max`` (10),
``variable_shots``. A source's folder is ``roots[name]``, else ``<root>/<subfolder>`` with ``--root`` a base
folder laid out like ``$ATTNMETA_DATA``, else ``$ATTNMETA_DATA/<subfolder>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnmeta.data.benchmarks import Benchmark, NormalizedSource, make_benchmark
from attnmeta.errors import UserError
from attnmeta.tasks.episode import Task, TaskBatch
from attnmeta.tasks.sampler import EpisodeSampler
from attnmeta.tasks.sampler_inputs import _check_count, _check_generator

__all__ = ["MULTI_PREFIX", "SOURCES", "MultiDomainSource", "multi_domain_benchmark", "parse_sources",
           "check_learner", "shape_columns"]

MULTI_PREFIX = "multi:"
#: The image benchmarks a multi-domain benchmark can combine.
SOURCES = ("omniglot", "miniimagenet", "cifar-fs", "fc100", "cub", "aircraft", "flowers", "dtd", "quickdraw",
           "tiered-imagenet", "imagefolder")
#: Pairs built from the same images: one's test classes are the other's training classes.
SAME_IMAGES = ((("cifar-fs", "fc100"), "CIFAR-100"), (("miniimagenet", "tiered-imagenet"), "ImageNet"))
_DEFAULTS = {"ways_min": 5, "ways_max": 20, "shots_max": 10, "variable_shots": True}


def parse_sources(name: str) -> list[str]:
    """``"multi:omniglot,cifar-fs"`` -> ``["omniglot", "cifar-fs"]``, or a one-line ``UserError``."""
    names = [part.strip() for part in name[len(MULTI_PREFIX):].split(",") if part.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise UserError(f"unknown multi-domain source {unknown[0]!r} in {name!r}; choose from: "
                        f"{', '.join(SOURCES)}")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"multi-domain source {twice!r} is named twice in {name!r}; name each source once")
    if len(names) < 2:
        raise UserError(f"{name!r} names {len(names)} source(s); a multi-domain benchmark needs at least "
                        "two, e.g. multi:omniglot,cifar-fs (train one benchmark by its own name)")
    for pair, images in SAME_IMAGES:
        if set(pair) <= set(names):
            raise UserError(f"multi-domain sources {pair[0]!r} and {pair[1]!r} both come from {images}: "
                            "one's test classes are the other's training classes; keep one of them")
    return names


class _Domain:
    """One source's split: its ``EpisodeSampler`` (index tables, example path) and input conversion."""

    def __init__(self, name: str, source: Any, offset: int, queries: int) -> None:
        sampler = source.source if isinstance(source, NormalizedSource) else source
        if not isinstance(sampler, EpisodeSampler):
            raise TypeError(f"multi-domain source {name!r} must give EpisodeSampler task sources, got "
                            f"{type(sampler).__name__}")
        self.name, self.sampler, self.offset = name, sampler, offset
        mean, std = (source.mean, source.std) if isinstance(source, NormalizedSource) else (0.0, 1.0)
        self.mean, self.std = torch.as_tensor(mean).view(-1, 1, 1), torch.as_tensor(std).view(-1, 1, 1)
        self.counts = sampler.class_examples(torch.arange(sampler.num_classes))[1].sum(1)  # per class
        self.spare = int(self.counts.min()) - queries  # the most shots every class of the split allows

    @property
    def num_classes(self) -> int:
        return self.sampler.num_classes

    def examples(self, index: Tensor, variant: Tensor, size: int) -> Tensor:
        """Model inputs ``[T, m, 3, size, size]`` for data indices and class variants ``[T, m]``."""
        x = self.sampler.examples(index, variant)
        shape = x.shape[:2]
        x = x.flatten(0, 1)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous().view(*shape, *x.shape[1:])


class MultiDomainSource:
    """Variable-way (and variable-shot) episodes over several sources (see the module docstring); a task
    source: ``sample``, ``sample_batch``, ``fixed_tasks``, ``state_dict`` / ``load_state_dict``."""

    def __init__(self, domains: list[_Domain], *, ways_min: int, ways_max: int, shots: int | None,
                 shots_max: int, queries: int, image_size: int, seed: int) -> None:
        self.domains, self.ways_min, self.ways_max = domains, ways_min, ways_max
        self.shots, self.shots_max, self.queries, self.image_size = shots, shots_max, queries, image_size
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    @property
    def classes(self) -> Tensor:
        """Global ids of every pool class of every source (each source shifted past the previous ones)."""
        return torch.cat([d.sampler.classes + d.offset for d in self.domains])

    @property
    def num_classes(self) -> int:
        return sum(d.num_classes for d in self.domains)

    def __repr__(self) -> str:
        shots = "variable" if self.shots is None else self.shots
        return (f"MultiDomainSource({', '.join(self.names)}; {self.ways_min}-{self.ways_max} ways, shots "
                f"{shots} (max {self.shots_max}), {self.queries} queries, {self.image_size} px)")

    def _shots(self, domain: _Domain, ways: int, g: torch.Generator) -> Tensor:
        """Support shots of each class ``[N]``: fixed, or 1..cap from a uniform budget (module docstring)."""
        if self.shots is not None:
            return torch.full((ways,), self.shots, dtype=torch.long)
        cap = min(self.shots_max, domain.spare)
        budget = int(torch.randint(ways, ways * cap + 1, (1,), generator=g))
        slots = torch.arange(ways).repeat_interleave(cap - 1)
        taken = slots[torch.randperm(slots.numel(), generator=g)[: budget - ways]]
        return 1 + torch.bincount(taken, minlength=ways)

    def sample(self, generator: torch.Generator | None = None) -> Task:
        """One episode; draws from ``generator`` (default: the source's own)."""
        return self.sample_batch(1, generator)[0]

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> TaskBatch:
        """``meta_batch`` episodes of one source and one shape (drawn once per meta-batch)."""
        tasks = _check_count("meta_batch", meta_batch, "sample at least one task")
        _check_generator(generator)
        g = self.generator if generator is None else generator
        domain = self.domains[int(torch.randint(len(self.domains), (1,), generator=g))]
        sampler, pool = domain.sampler, domain.num_classes
        ways = int(torch.randint(min(self.ways_min, pool), min(self.ways_max, pool) + 1, (1,), generator=g))
        shots = self._shots(domain, ways, g)
        most, q = int(shots.max()), self.queries
        keep = torch.arange(most) < shots[:, None]  # [N, most]: which of the first picks are support
        chosen_all, variants, support, query = [], [], [], []
        for _ in range(tasks):
            chosen = torch.randperm(pool, generator=g)[:ways]
            table, valid, variant = sampler.class_examples(chosen)
            keys = torch.rand(ways, table.shape[1], generator=g, dtype=torch.float64)
            picks = keys.masked_fill(~valid, 2.0).topk(most + q, dim=1, largest=False).indices
            index = table.gather(1, picks)  # [N, most + Q] distinct examples per class
            chosen_all.append(chosen)
            variants.append(variant)
            support.append(index[:, :most][keep])
            query.append(index[:, most:].reshape(-1))
        chosen_t = torch.stack(chosen_all)
        variant = torch.stack(variants)  # [T, N]
        support_y = torch.arange(ways).repeat_interleave(shots)
        query_y = torch.arange(ways).repeat_interleave(q)
        support_x = domain.examples(torch.stack(support), variant[:, support_y], self.image_size)
        query_x = domain.examples(torch.stack(query), variant[:, query_y], self.image_size)
        device = support_x.device
        info = {"source": domain.name, "ways": ways, "shots": shots.tolist()}
        return TaskBatch(support_x, support_y.expand(tasks, -1).contiguous().to(device), query_x,
                         query_y.expand(tasks, -1).contiguous().to(device),
                         sampler.classes[chosen_t] + domain.offset, tuple(dict(info) for _ in range(tasks)))

    def fixed_tasks(self, n: int = 600, seed: int = 0) -> list[Task]:
        """``n`` single episodes determined by ``seed`` (and the sources); the own generator is untouched."""
        count = _check_count("n", n, "ask for at least one episode")
        generator = torch.Generator().manual_seed(int(seed))
        return [self.sample(generator) for _ in range(count)]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "sources": self.names, "ways_min": self.ways_min,
                "ways_max": self.ways_max, "shots": self.shots, "queries": self.queries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "generator" not in state:
            raise TypeError("state must be a dict from MultiDomainSource.state_dict() (with a 'generator' "
                            "entry)")
        mine = self.state_dict()
        for key in ("sources", "ways_min", "ways_max", "shots", "queries"):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"state was saved by a multi-domain source with {key}={state[key]}, this "
                                 f"one has {key}={mine[key]}; load it into a source built the same way")
        self.generator.set_state(state["generator"])


def _int_option(options: dict[str, Any], key: str, least: int) -> int:
    value = options.pop(key, _DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"multi-domain option {key!r} must be an int >= {least}, got {value!r}; set "
                        f"benchmark_options.{key}")
    return value


def _mapping_option(options: dict[str, Any], key: str) -> dict[str, Any]:
    """``options[key]`` (a mapping) with ``key.NAME`` entries folded in (``--set
    benchmark_options.roots.cub=...``)."""
    value = options.pop(key, None) or {}
    if not isinstance(value, dict):
        raise UserError(f"multi-domain option {key!r} must map source names to values, got "
                        f"{type(value).__name__}; e.g. --set 'benchmark_options.{key}={{cub: ...}}'")
    value = dict(value)
    for dotted in [k for k in options if isinstance(k, str) and k.startswith(f"{key}.")]:
        value[dotted[len(key) + 1:]] = options.pop(dotted)
    return value


def _source_root(name: str, root: str | Path | None, roots: dict[str, Any], has_data: bool) -> str | None:
    """``roots[name]``, else ``<root>/<subfolder>``, else ``$ATTNMETA_DATA/<subfolder>`` (see the module
    docstring)."""
    from attnmeta.train.builders import DATA_SUBFOLDERS

    if roots.get(name) is not None:
        return str(roots[name])
    sub = DATA_SUBFOLDERS.get(name)
    base = root if root is not None else os.environ.get("ATTNMETA_DATA") or None
    if sub is not None and base is not None:
        return str(Path(base).expanduser() / sub)
    if has_data:
        return None
    where = f" (or --root BASE holding {sub}/, or $ATTNMETA_DATA)" if sub is not None else ""
    raise UserError(f"multi-domain source {name!r} has no data folder: set "
                    f"benchmark_options.roots.{name}=PATH{where}")


def multi_domain_benchmark(name: str, root: str | Path | None, shapes: tuple[tuple[int, int, int], ...],
                           split: str, seed: int, image_size: int | None,
                           options: dict[str, Any]) -> Benchmark:
    """The ``multi:...`` benchmark (module docstring); ``shapes``: ``(ways, shots, queries)`` of the train,
    val and test splits as ``make_benchmark`` passes them (ways unused: see ``ways_min`` / ``ways_max``)."""
    names = parse_sources(name)
    options = dict(options)
    roots, per_source = _mapping_option(options, "roots"), _mapping_option(options, "sources")
    ways_min, ways_max = _int_option(options, "ways_min", 2), _int_option(options, "ways_max", 2)
    shots_max = _int_option(options, "shots_max", 1)
    variable = options.pop("variable_shots", True)
    if options:
        raise UserError(f"unknown multi-domain options {sorted(options)}; accepted: roots, sources, "
                        "ways_min, ways_max, shots_max, variable_shots (options of one source go in "
                        "sources.NAME)")
    if ways_min > ways_max:
        raise UserError(f"multi-domain ways_min ({ways_min}) must be <= ways_max ({ways_max}); set "
                        "benchmark_options.ways_min / ways_max")
    if not isinstance(variable, bool):
        raise UserError(f"multi-domain option 'variable_shots' must be true or false, got {variable!r}")
    if split != "default":
        raise UserError(f"multi-domain benchmarks take each source's default split (got split {split!r}); "
                        "give one source another split as benchmark_options.sources.NAME.split")
    if shapes[0][0] != shapes[1][0]:
        raise UserError("train_ways does not apply to multi-domain episodes (their ways are drawn from "
                        "ways_min..ways_max); drop it")
    unknown = sorted((set(per_source) | set(roots)) - set(names))
    if unknown:
        raise UserError(f"multi-domain options name source {unknown[0]!r}, which is not in {name!r}")
    size = 84 if image_size is None else image_size
    splits: list[list[_Domain]] = [[], [], []]
    info: dict[str, Any] = {"sources": names, "ways": [ways_min, ways_max], "variable_shots": variable,
                            "shots_max": shots_max, "image_size": size}
    per_source_info: dict[str, Any] = {}
    offset = 0
    for source in names:
        extra = dict(per_source.get(source) or {})
        folder = _source_root(source, root, roots, has_data="data" in extra)
        bench = make_benchmark(source, root=folder, ways=2, shots=shapes[1][1], queries=shapes[1][2],
                               train_shots=shapes[0][1], train_queries=shapes[0][2],
                               split=extra.pop("split", "default"), seed=seed,
                               image_size=extra.pop("image_size", None), **extra)
        parts = (bench.train, bench.val, bench.test)
        domains = [_Domain(source, part, offset, shapes[i][2]) for i, part in enumerate(parts)]
        for i, domain in enumerate(domains):
            if variable and domain.spare < 1:  # (the source's own check needs shots + queries anyway)
                raise UserError(f"multi-domain source {source!r} has a class with only "
                                f"{int(domain.counts.min())} examples, too few for {shapes[i][2]} queries "
                                "and a shot; lower --queries")
            splits[i].append(domain)
        offset += max(int(d.sampler.classes.max()) for d in domains) + 1
        prep = bench.preprocessing
        per_source_info[source] = {"mean": prep.get("mean"), "std": prep.get("std"),
                                   "invert": prep.get("invert", False),
                                   **{f"{part}_classes": d.num_classes
                                      for part, d in zip(("train", "val", "test"), domains)}}
    train, val, test = (MultiDomainSource(splits[i], ways_min=ways_min, ways_max=ways_max,
                                          shots=None if variable else shapes[i][1], shots_max=shots_max,
                                          queries=shapes[i][2], image_size=size, seed=seed + i)
                        for i in range(3))
    preprocessing = {"image_size": size, "channels": 3, "grayscale": False, "resize": "bilinear",
                     "invert": False, "scale": 1 / 255, "mean": [0.0] * 3, "std": [1.0] * 3,
                     "per_source": per_source_info}
    return Benchmark(name, "classification", train, val, test, (3, size, size), preprocessing,
                     {"name": "conv4", "options": {"hidden": 64}}, {**info, "per_source": per_source_info})


def shape_columns(options: dict[str, Any], shots: Any) -> dict[str, str]:
    """The ways and shots columns of a results table for a run with these ``benchmark_options``."""
    values = {**_DEFAULTS, **options}
    shown = f"1-{values['shots_max']}" if values["variable_shots"] else shots
    return {"ways": f"{values['ways_min']}-{values['ways_max']}", "shots": shown}


def check_learner(algo: str, learner: Any, ways: int | None, source: Any) -> None:
    """One-line ``UserError`` unless ``learner`` handles the variable ways of ``source``'s episodes: a learner
    fixed to one number of ways (``any_ways = False``) cannot, a head learner needs ``ways >= ways_max``."""
    from attnmeta import learners

    ways_max = getattr(source, "ways_max", None)
    if ways_max is None:
        return
    if not getattr(learner, "any_ways", True):
        raise UserError(f"learner {algo!r} is built for one number of ways and cannot take multi-domain "
                        f"episodes ({source.ways_min} to {ways_max} ways); choose a learner that handles any "
                        "ways, e.g. protonet, matching, simpleshot or maml")
    if learners.spec(algo).head and (ways or 0) < ways_max:
        raise UserError(f"learner {algo!r} ends in a {ways}-output head, but multi-domain episodes have up "
                        f"to {ways_max} ways; set --ways {ways_max} (the head size) or "
                        f"--set benchmark_options.ways_max={ways}")
