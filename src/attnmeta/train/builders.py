"""Build what a run needs from its config: benchmark, model, learner, optimizer, schedule.

Nothing here imports code named by a config: ``import_plugins`` is called only with modules the user names
(``--import``, ``imports=``), and ``require_registered`` explains how when a run needs a custom learner.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnmeta import learners
from attnmeta.errors import UserError
from attnmeta.learners.base import Learner
from attnmeta.train.config import RunConfig


@dataclass
class BenchmarkParts:
    """What the trainer needs from a benchmark (mirrors ``attnmeta.data.benchmarks.Benchmark``)."""

    name: str
    task_type: str
    train: Any
    val: Any
    test: Any
    input_shape: tuple[int, ...]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    default_backbone: dict[str, Any] | str | None = None


def import_plugins(imports: list[str]) -> None:
    """Import modules (``"pkg.mod"``) or files (``"path/to/file.py"``), e.g. to register custom learners."""
    for item in imports:
        if item.endswith(".py"):
            path = Path(item).resolve()
            if not path.is_file():
                raise ValueError(f"config key 'imports': file {item!r} does not exist")
            name = f"attnmeta_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None  # a path ending in .py always has one
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(item)
            except ImportError as error:
                raise ValueError(f"config key 'imports': cannot import {item!r} ({error})") from None


def require_registered(algo: str, recorded_imports: list[str] | None = None) -> None:
    """Raise a one-line ``UserError`` unless learner ``algo`` is registered.

    ``recorded_imports`` are the modules a saved run names: they are never imported (a run folder must not
    execute code), only quoted so that the user can pass them explicitly if they trust them.
    """
    from attnmeta.train.config import DETECTION_ALGOS, RL_ALGOS, SEQ2SEQ_ALGOS

    if algo in learners.available() or algo in (*RL_ALGOS, *DETECTION_ALGOS, *SEQ2SEQ_ALGOS):
        return
    if recorded_imports:
        named = " ".join(f"--import {item}" for item in recorded_imports)
        listed = ", ".join(repr(item) for item in recorded_imports)
        raise UserError(
            f"the run uses learner {algo!r} from {listed}, which attnmeta never imports from a run folder or "
            f"checkpoint; if you trust that code, pass {named} (CLI) or "
            f"attnmeta.load(path, imports=[{listed}]) (Python)"
        )
    raise UserError(
        f"unknown learner {algo!r}; choose one of: {', '.join(learners.available())} (meta-RL: "
        f"{', '.join(RL_ALGOS)}; detection: {', '.join(DETECTION_ALGOS)}; sequence-to-sequence: "
        f"{', '.join(SEQ2SEQ_ALGOS)}; a custom learner needs --import MODULE_OR_FILE)"
    )


def build_benchmark(config: RunConfig, val_ways: int | None = None) -> BenchmarkParts:
    """Task sources of ``config.benchmark`` from ``attnmeta.data.benchmarks.make_benchmark`` (``val_ways``:
    another number of ways for the validation split)."""
    from attnmeta.data.benchmarks import make_benchmark

    options = dict(config.benchmark_options)
    if config.benchmark == "clinc150" and config.backbone is not None:
        from attnmeta.nn.backbones import BACKBONES  # a backbone reading raw text (minilm) asks for its bytes

        text_inputs = getattr(BACKBONES.get(config.backbone), "text_inputs", None)
        if text_inputs:
            options.setdefault("inputs", text_inputs)
    assert config.shots is not None and config.queries is not None, "RunConfig.resolved() sets them"
    b = make_benchmark(
        config.benchmark,
        root=config.root if config.root is not None else default_data_root(config.benchmark),
        ways=config.ways,
        shots=config.shots,
        queries=config.queries,
        train_ways=config.train_ways,
        train_shots=config.train_shots,
        train_queries=config.train_queries,
        **({} if val_ways is None else {"val_ways": val_ways}),
        split=config.split,
        seed=config.seed,
        image_size=config.image_size,
        **options,
    )
    return BenchmarkParts(
        b.name,
        b.task_type,
        b.train,
        b.val,
        b.test,
        tuple(b.input_shape),
        dict(b.preprocessing or {}),
        b.default_backbone,
    )


#: Where each benchmark's data lives below ``$ATTNMETA_DATA`` (the layout of the project's shared data).
DATA_SUBFOLDERS = {"omniglot": "omniglot", "omniglot-scenes": "omniglot", "miniimagenet": "miniimagenet",
                   "clinc150": "text/clinc150", "sigmorphon2018": "text/sigmorphon2018",
                   "cifar-fs": "cifar100", "fc100": "cifar100", "cub": "cub", "aircraft": "aircraft",
                   "flowers": "flowers", "dtd": "dtd", "quickdraw": "quickdraw",
                   "tiered-imagenet": "imagenet"}


def default_data_root(benchmark: str) -> str | None:
    """``$ATTNMETA_DATA/<subfolder>`` for benchmarks that read data, when ``ATTNMETA_DATA`` is set."""
    base = os.environ.get("ATTNMETA_DATA")
    if not base or benchmark not in DATA_SUBFOLDERS:
        return None
    return str(Path(base).expanduser() / DATA_SUBFOLDERS[benchmark])


def head_outputs(config: RunConfig) -> int:
    """Outputs of a classification head learner's model: ``ways``, or ``train_ways`` when larger (a shared
    or zero head of the MAML family trains on more ways than it tests)."""
    return max(config.ways or 0, config.train_ways or 0)


def build_model(config: RunConfig, bench: BenchmarkParts) -> nn.Module:
    """The backbone: ``head_outputs`` outputs for head learners (1 for regression), an embedding
    otherwise."""
    head = learners.spec(config.algo).head
    out_features = (1 if bench.task_type == "regression" else head_outputs(config)) if head else None
    from attnmeta.nn.backbones import build_backbone

    default = bench.default_backbone
    if isinstance(default, str) or default is None:
        default = {"name": default, "options": {}}
    name, options = default["name"], dict(default.get("options") or {})
    if config.backbone is not None and config.backbone != name:
        name, options = config.backbone, {}
    options.update(config.backbone_options)
    if name is None:
        raise ValueError(
            f"benchmark {bench.name!r} has no default backbone; pass --backbone conv4, resnet12 or mlp"
        )
    return build_backbone(name, in_shape=bench.input_shape, out_features=out_features, **options)


def build_learner(config: RunConfig, bench: BenchmarkParts) -> Learner:
    """Seeded model + learner from ``config`` (the same initial weights for the same seed).

    Never imports anything: the learner must be registered (built in, or by ``import_plugins`` with modules
    the user named)."""
    require_registered(config.algo, config.imports)
    torch.manual_seed(config.seed)
    model = build_model(config, bench)
    options = {**data_options(config, bench), **config.algo_options}
    learner = learners.build(config.algo, model=model, task_type=bench.task_type, ways=config.ways, **options)
    _give_selector_targets(learner, config, bench)
    if config.benchmark.startswith("multi:"):  # variable-way episodes (attnmeta.data.multi_domain)
        from attnmeta.data.multi_domain import check_learner

        check_learner(config.algo, learner, config.ways, bench.test)
    if config.train_ways is not None and config.train_ways != config.ways:
        if learners.spec(config.algo).head and not getattr(learner, "head_rows_shared", False):
            raise ValueError(
                f"config key 'train_ways' ({config.train_ways}) must equal 'ways' ({config.ways}) for "
                f"{config.algo}: its model ends in a head whose rows are learned per label; drop train_ways, "
                "set algo_options.head_init=shared, zero or prototypes (the MAML family) or use a metric "
                "learner such as protonet"
            )
        assert config.ways is not None  # RunConfig allows train_ways only for classification, which has ways
        learner.check_training_ways(config.train_ways, config.ways)
    return learner.to(device=resolve_device(config.device), dtype=getattr(torch, config.dtype))


#: How many target tasks a task selector built from a config attends from.
SELECTOR_TARGETS = 5


def _give_selector_targets(learner: Learner, config: RunConfig, bench: BenchmarkParts) -> None:
    """A config cannot hold tasks: a ``TaskSelector`` built from one (``task_attention: {kind: selector}``)
    attends from ``SELECTOR_TARGETS`` fixed tasks of the validation source (seed ``val_seed + 1``, not the
    validation episodes)."""
    from attnmeta.learners.task_attention import TaskSelector

    selector = getattr(learner, "task_attention", None)
    if not isinstance(selector, TaskSelector) or selector.targets is not None or bench.val is None:
        return
    selector.targets = bench.val.fixed_tasks(SELECTOR_TARGETS, seed=config.val_seed + 1)


#: Learners whose ``num_classes`` option (the pre-training classifier's size) comes from the training data.
CLASS_COUNT_LEARNERS = ("transfer", "baseline++", "simpleshot")


def data_options(config: RunConfig, bench: BenchmarkParts) -> dict[str, Any]:
    """Learner options known from the data, under the user's (a run records them in its config, so that
    ``attnmeta.load`` rebuilds the learner without the data): ``num_classes`` of the transfer baselines
    (the largest class id the training source can label an example with, plus one) and ``shots`` of the
    learners that size themselves by it (SNAIL's sequence: the larger of the training and test shots)."""
    algo = config.algo
    if "shots" in (learners.registry.valid_options(algo) or ()) and config.shots is not None:
        return {"shots": max(config.shots, config.train_shots or 0)}
    if algo not in CLASS_COUNT_LEARNERS or bench.task_type != "classification":
        return {}
    classes = getattr(bench.train, "classes", None)
    if isinstance(classes, Tensor) and classes.numel() > 0:  # a sampler's pool of (augmented) class ids
        return {"num_classes": int(classes.max()) + 1}
    count = getattr(bench.train, "num_classes", None)
    return {"num_classes": count} if isinstance(count, int) else {}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'device' is 'cuda' but no CUDA GPU is available; use device=cpu or auto")
    return torch.device(device)


def lr_factor(config: RunConfig, step: int, budget_fraction: float = 0.0) -> float:
    """Multiplier of ``config.lr`` at 1-based outer ``step`` (linear warm-up, then the schedule).

    ``budget_fraction``: the share of ``budget_minutes`` used so far; the cosine follows whichever of the
    steps and the time budget is further along, so it reaches its end when the run does.
    """
    if config.warmup_steps and step <= config.warmup_steps:
        return step / config.warmup_steps
    if config.schedule == "cosine":
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, max((step - config.warmup_steps) / span, budget_fraction))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.gamma ** ((step - 1) // config.step_size)
    return 1.0


def augmented_source(source: Any, augment: dict[str, Any], seed: int, bench: BenchmarkParts) -> Any:
    """The training task source with ``augment`` (``RandomShift``, then ``RandomAffine``), run-seeded."""
    from attnmeta.tasks import RandomAffine, RandomShift
    from attnmeta.tasks.augmented import Augmented, BatchTransform

    if bench.task_type != "classification" or len(bench.input_shape) != 3:
        raise UserError(
            f"config key 'augment' transforms images; benchmark {bench.name!r} has inputs of shape "
            f"{tuple(bench.input_shape)}: drop augment"
        )
    transforms: list[BatchTransform] = []
    if augment.get("shift"):
        transforms.append(RandomShift(augment["shift"], seed=seed))
    if augment.get("affine"):
        degrees, scale, shear, translate = augment["affine"]  # validated by RunConfig: 4 numbers
        transforms.append(RandomAffine(degrees, scale, shear, translate, seed=seed))
    return Augmented(source, transforms) if transforms else source


def make_optimizer(config: RunConfig, params: Sequence[Tensor]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
