"""Run configuration: one validated dataclass, loaded from YAML/JSON plus command-line overrides.

Every key is checked up front: an unknown key or a bad value is a ``ValueError`` that names the key and
the allowed values, before any data is read or any model is built. ``algo_options`` are checked against the
learner's options (``attnmeta.learners.registry.check_options``) by ``resolved()`` (which ``train`` calls
first), once the file, flags and ``--set`` are merged: a file's options for the ``--algo`` given on the
command line are not checked against the default algo. Learners not registered yet (plugins of
``imports``) are skipped there; call ``check_learner_options()`` again after importing them.

Numbers: float keys take any spelling Python's ``float()`` reads (``1e-3``, ``1E-3``, ``.5``, ``-.5``,
``1_000.0``), in config files and ``--set`` alike (plain YAML 1.1 reads ``1e-3`` as a string; here it is a
float, in ``algo_options`` too); they must be finite (``nan``/``inf`` are rejected with the key's name). Int
keys take only integers (``5``, not ``5.0`` or ``1e3``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnmeta.train.config_checks import (  # noqa: F401  (the key lists are public here too)
    AUGMENT_KEYS,
    FLOAT_KEYS,
    NON_EMPTY_KEYS,
    SEED_KEYS,
    as_float,
    check_augment,
    check_choice,
    check_key_is_str,
    check_numbers,
    check_type,
    storable,
    unknown_key_message,
)
from attnmeta.train.config_files import load_config_file, parse_overrides  # noqa: F401  (public here too)
from attnmeta.train.families import (  # noqa: F401  (public here too)
    DETECTION_ALGOS,
    DETECTION_BENCHMARKS,
    REGRESSION_BENCHMARKS,
    RL_ALGOS,
    RL_BENCHMARKS,
    SEQ2SEQ_ALGOS,
    SEQ2SEQ_BENCHMARKS,
    check_family,
    task_type_of,
)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
MAML_FAMILY = ("maml", "fomaml", "meta-sgd", "anil", "maml++")
BUDGET_CLOCKS = ("cpu", "wall")

@dataclass
class RunConfig:
    """Everything that defines a meta-training run. ``None`` means "the benchmark's default".

    Attributes (units in brackets):
        benchmark: ``sinusoid``, ``multimodal``, ``omniglot``, ``miniimagenet`` (see ``make_benchmark``).
        root: data folder of image benchmarks.
        ways / shots / queries: N-way (classification only), K support and Q query examples per class
            (per task for regression).
        train_ways / train_shots / train_queries: another shape for the training episodes only (``None``:
            as ``ways`` / ``shots`` / ``queries``); validation and test keep ``ways`` / ``shots`` /
            ``queries``. E.g. Prototypical Networks trained on 60-way episodes for a 5-way test (Snell et
            al.). Learners with a ``ways``-output head (MAML family, Meta-LSTM) and SNAIL need
            ``train_ways == ways`` (SNAIL on subtasks of larger episodes: the ``snail-variants`` plugin,
            ``experiments/omniglot/snail_variants.py``).
        split: split name passed to ``make_benchmark``.
        image_size: side of the square images [pixels] (``None``: benchmark default).
        benchmark_options: extra keyword arguments of ``make_benchmark``.
        algo / algo_options: learner name in ``attnmeta.learners`` and its keyword options.
        backbone / backbone_options: ``build_backbone`` name (``None``: the benchmark's default) and options.
        meta_batch: tasks per outer step.
        steps: outer steps.
        optimizer / lr / weight_decay / momentum: outer optimizer (``adam``, ``adamw`` or ``sgd``), learning
            rate; ``weight_decay`` is an L2 term of the gradient for ``adam`` / ``sgd`` and decoupled
            (``w -= lr * weight_decay * w`` each step, Loshchilov & Hutter) for ``adamw``.
        schedule: LR schedule: ``constant``, ``cosine`` (to ``lr * min_lr_ratio``) or ``step``
            (multiply by ``gamma`` every ``step_size`` steps); ``warmup_steps`` of linear warm-up first.
        grad_clip: clip the meta-gradient's global norm to this value (``None``: no clipping).
        budget_minutes / budget_clock: stop training after this many minutes of ``cpu`` time (the process's
            CPU time, all threads) or ``wall`` time, counting training steps only (validation, checkpoints
            and the final test excluded); ``cosine`` / ``step`` schedules then run to the budget, whichever
            of ``steps`` and the budget ends first. A resumed budget run is not bit-identical (time decides
            where it stops). ``None``: ``steps`` alone.
        augment: training-time augmentation of every sampled example: ``{"shift": 2}`` (``RandomShift``, max
            pixels) and/or ``{"affine": [degrees, scale, shear, translate]}`` (``RandomAffine``); fixed
            validation and test episodes are never augmented.
        channels_last: keep the model and inputs in channels-last memory format (faster convolutions on
            CPUs with oneDNN).
        test_rotation_ensemble: validate and test with ``attnmeta.eval.with_rotation_ensemble`` (each task
            also seen turned by 90 / 180 / 270 degrees; not the papers' protocol).
        ema_decay: validate, test and save an exponential moving average of the trained parameters with
            this decay per step (``attnmeta.train.ParameterAverage``, warmed up over the first steps; e.g.
            0.995), training itself unchanged; ``None``: the trained parameters themselves.
        eval_every / eval_episodes / val_seed: validation period [steps], fixed val. episodes, their seed.
        test_episodes / test_seed: fixed test episodes evaluated at the end (600 and seed 0 as in the papers).
        checkpoint_every / keep_last: checkpoint period [steps] and how many recent checkpoints to keep
            (the best one is always kept).
        seed: seed of every random number generator of the run.
        device / dtype / threads: ``auto``/``cpu``/``cuda``, ``float32``/``float64``, torch CPU threads
            (``None``: leave torch's default).
        retain_memory: on CPU, keep freed memory in the process heap (``attnmeta.train.memory``): 1.44x
            faster ProtoNets steps on 200-way Omniglot episodes (no change for MAML's small meta-batches);
            the process keeps its peak memory until it exits.
        run_dir: run folder (``None``: ``runs/<benchmark>-<algo>-<ways>w<shots>s``).
        plot: write ``learning_curves.png`` to the run folder at the end (needs matplotlib).
        imports: modules or ``.py`` files imported before building (to register custom learners).
        recipe: the name of the recipe the run started from (``attnmeta train --recipe``), for the record.
        init_from: a finished run folder whose best weights start this run (same model and vocabulary; e.g.
            meta-training from a multilingual pre-training run). Sequence-to-sequence runs only.
    """

    benchmark: str = "sinusoid"
    root: str | None = None
    ways: int | None = None
    shots: int | None = None
    queries: int | None = None
    train_ways: int | None = None
    train_shots: int | None = None
    train_queries: int | None = None
    split: str = "default"
    image_size: int | None = None
    benchmark_options: dict[str, Any] = field(default_factory=dict)
    algo: str = "maml"
    algo_options: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)
    meta_batch: int = 25
    steps: int = 1000
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    step_size: int = 1000
    gamma: float = 0.5
    grad_clip: float | None = None
    ema_decay: float | None = None
    budget_minutes: float | None = None
    budget_clock: str = "cpu"
    augment: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False
    test_rotation_ensemble: bool = False
    eval_every: int = 500
    eval_episodes: int = 100
    val_seed: int = 1
    test_episodes: int = 600
    test_seed: int = 0
    checkpoint_every: int = 500
    keep_last: int = 2
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    threads: int | None = None
    retain_memory: bool = True
    run_dir: str | None = None
    plot: bool = True
    imports: list[str] = field(default_factory=list)
    recipe: str | None = None
    init_from: str | None = None

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for key in FLOAT_KEYS:
            setattr(self, key, as_float(key, getattr(self, key)))
        self.validate()

    @property
    def task_type(self) -> str:
        return task_type_of(self.benchmark)

    def validate(self) -> None:
        """Type-check every field and its range; raise ``ValueError``/``TypeError`` naming the key."""
        hints = typing.get_type_hints(RunConfig)
        for f in dataclasses.fields(self):
            check_type(f.name, getattr(self, f.name), hints[f.name])
        check_numbers(self)
        for key in ("ways", "shots", "queries", "train_ways", "train_shots", "train_queries", "image_size",
                    "threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"config key {key!r} must be >= 1 (or null for the default), got {value}")
        for key in (
            "meta_batch",
            "steps",
            "eval_every",
            "eval_episodes",
            "test_episodes",
            "checkpoint_every",
            "keep_last",
            "step_size",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps",):
            if getattr(self, key) < 0:
                raise ValueError(f"config key {key!r} must be >= 0, got {getattr(self, key)}")
        for key in ("ways", "train_ways"):
            value = getattr(self, key)
            if value is not None and value < 2 and self.task_type != "detection":
                raise ValueError(f"config key {key!r} must be >= 2 (a task needs two classes), "
                                 f"got {value}")
        if self.train_ways is not None and self.task_type == "regression":
            raise ValueError("config key 'train_ways' is for classification benchmarks; regression tasks "
                             "have no classes (set train_shots / train_queries)")
        if self.init_from is not None and self.task_type != "seq2seq":
            raise ValueError("config key 'init_from' is for the sequence-to-sequence benchmarks "
                             f"({', '.join(SEQ2SEQ_BENCHMARKS)}), not {self.benchmark!r}")
        reserved = sorted({"model", "task_type", "ways"} & set(self.algo_options))
        if reserved:
            raise ValueError(f"config key 'algo_options' may not set {reserved}: the learner gets its model, "
                             "task type and ways from the run (set 'ways', 'backbone', 'benchmark' instead)")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("device", self.device, DEVICES)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("budget_clock", self.budget_clock, BUDGET_CLOCKS)
        check_augment(self.augment)

    def check_learner_options(self) -> None:
        """Raise ``ValueError`` naming an ``algo_options`` key the learner does not take (with the valid
        ones); learners not registered yet are not checked."""
        if self.algo in RL_ALGOS:
            from attnmeta.rl.registry import check_rl_options

            check_rl_options(self.algo, self.algo_options)
            return
        if self.task_type == "seq2seq":
            from attnmeta.learners.seq2seq.registry import check_seq2seq_options

            check_seq2seq_options(self.algo, self.algo_options)
            return
        if self.algo in DETECTION_ALGOS:
            from attnmeta.learners.detection.registry import check_detector_options

            check_detector_options(self.algo, self.algo_options)
            return
        from attnmeta.learners.registry import check_options

        check_options(self.algo, self.algo_options)

    def resolved(self) -> RunConfig:
        """A copy with the benchmark's defaults filled in (shots, queries, ways, run_dir); ``algo_options``
        are checked against the learner first (``check_learner_options``)."""
        check_family(self.benchmark, self.algo, self.task_type)
        self.check_learner_options()
        c = dataclasses.replace(
            self,
            benchmark_options=dict(self.benchmark_options),
            algo_options=dict(self.algo_options),
            backbone_options=dict(self.backbone_options),
            imports=list(self.imports),
        )
        if c.task_type == "seq2seq":  # pairs per training task; evaluation tasks bring their own support
            c.shots = 20 if c.shots is None else c.shots
            c.queries = 20 if c.queries is None else c.queries
        if c.task_type == "regression":
            c.shots = 10 if c.shots is None else c.shots
            c.queries = 10 if c.queries is None else c.queries
        elif c.task_type in ("classification", "detection"):  # (meta-RL tasks are environments)
            c.ways = 5 if c.ways is None else c.ways
            c.shots = 1 if c.shots is None else c.shots
            c.queries = (15 if c.task_type == "classification" else 4) if c.queries is None else c.queries
        if c.run_dir is None:
            shape = f"{c.shots}shot" if c.task_type == "regression" else f"{c.ways}w{c.shots}s"
            bench = c.benchmark.replace(":", "-").replace(",", "+")  # multi:a,b -> multi-a+b
            name = f"{bench}-{c.algo}" + ("" if c.task_type in ("rl", "seq2seq") else f"-{shape}")
            c.run_dir = str(Path("runs") / name)
        return c

    @staticmethod
    def preset(benchmark: str, algo: str) -> dict[str, Any]:
        """Defaults for ``benchmark`` trained with ``algo`` (``attnmeta.train.presets``)."""
        from attnmeta.train.presets import preset

        return preset(benchmark, algo)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_storable_dict(self) -> dict[str, Any]:
        """``to_dict`` with in-memory objects (e.g. ``benchmark_options.data`` tensors) replaced by a note,
        for ``config.yaml`` and checkpoints: such a run cannot be resumed from its folder alone."""
        return storable(self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a plain dict; unknown keys are an error naming the closest known key."""
        if not isinstance(values, dict):
            raise TypeError(f"a config must be a mapping of key: value, got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            check_key_is_str(key)
            if key not in known:
                raise ValueError(unknown_key_message(key, known))
        return cls(**values)

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """Apply ``{"key": value}`` or ``{"algo_options.inner_lr": 0.01}`` overrides, validated."""
        values = self.to_dict()
        known = list(values)
        for key, value in overrides.items():
            check_key_is_str(key)
            top, _, sub = key.partition(".")
            if top not in known:
                raise ValueError(unknown_key_message(top, known))
            if sub:
                if not isinstance(values[top], dict):
                    raise ValueError(
                        f"config key {top!r} is not a mapping; set it as {top}=VALUE, not {key}=VALUE"
                    )
                values[top] = {**values[top], sub: value}
            else:
                values[top] = value
        return RunConfig.from_dict(values)
