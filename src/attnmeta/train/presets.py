"""Presets: the defaults of ``attnmeta train BENCHMARK --algo ALGO``, under everything the user sets.

A preset makes the plain command finish in minutes on 2 CPU cores with a useful result; recipes
(``attnmeta recipes``) are the longer, tuned configurations that reproduce published figures. How the CLI
merges a preset (``attnmeta.cli.commands._train_config``): a key the user sets (config file, flag, ``--set``)
wins; setting ``steps`` drops the preset's time budget (N steps asked, N steps trained), setting
``budget_minutes`` drops its ``budget_clock``; setting ``ways`` / ``shots`` / ``queries`` drops the preset's
``train_ways`` / ``train_shots`` / ``train_queries`` (the training episodes then take the user's shape); a
recipe replaces the preset entirely. Omniglot figures: ``docs/results/presets/omniglot-<algo>.json``.
"""

from __future__ import annotations

from typing import Any

REGRESSION_BENCHMARKS = ("sinusoid", "multimodal")
MAML_FAMILY = ("maml", "fomaml", "meta-sgd", "anil", "maml++")
#: Keys of the time budget, dropped from a preset when the user sets ``steps``.
BUDGET_KEYS = ("budget_minutes", "budget_clock")

#: Defaults per benchmark, applied by ``RunConfig.preset`` (the CLI) under the user's own settings.
#: The regression preset is the README's main job: about a minute on 2 CPU cores. One torch thread: the
#: 40-40 MLP is far too small to gain from more, and extra threads spin against each other on a busy machine.
_REGRESSION_PRESET: dict[str, Any] = {
    "meta_batch": 10,
    "steps": 1200,
    "lr": 3e-3,
    "schedule": "cosine",
    "eval_every": 300,
    "eval_episodes": 100,
    "checkpoint_every": 300,
    "threads": 1,
}
#: Image benchmarks: a cosine over a wall-clock budget (``steps`` only caps it), one thread.
_IMAGE_PRESET: dict[str, Any] = {"steps": 100000, "schedule": "cosine", "budget_clock": "wall", "threads": 1}
#: Meta-RL: a step is one TRPO (or PPO) iteration on ``meta_batch`` tasks (``lr`` is unused: ``max_kl`` sizes
#: the TRPO step); a CPU-minute budget, one thread; validation on 20 fixed tasks, test on 40.
_RL_PRESET: dict[str, Any] = {"steps": 10000, "budget_minutes": 6, "eval_every": 10, "eval_episodes": 20,
                              "test_episodes": 40, "checkpoint_every": 10, "threads": 1}
_CHEETAH_PRESET: dict[str, Any] = {**_RL_PRESET, "meta_batch": 10, "budget_minutes": 8, "eval_every": 20,
                                   "eval_episodes": 10, "checkpoint_every": 20}
_DETECTION_PRESET: dict[str, Any] = {
    "meta_batch": 2, "lr": 1e-3, "schedule": "cosine", "steps": 100000, "budget_minutes": 10,
    "budget_clock": "cpu", "eval_every": 250, "eval_episodes": 30, "test_episodes": 100,
    "checkpoint_every": 250, "threads": 2}
_SEQ2SEQ_PRESET: dict[str, Any] = {
    "shots": 20, "queries": 20, "meta_batch": 4, "lr": 1e-3, "schedule": "cosine", "steps": 1000000,
    "budget_minutes": 15, "budget_clock": "cpu", "eval_every": 500, "eval_episodes": 5, "test_episodes": 20,
    "checkpoint_every": 500, "threads": 2}
BENCHMARK_PRESETS: dict[str, dict[str, Any]] = {
    "sinusoid": dict(_REGRESSION_PRESET),
    "multimodal": dict(_REGRESSION_PRESET),
    # few-shot intents (held-out domains); the lexical text encoder, a few CPU-minutes
    "clinc150": {"ways": 5, "shots": 1, "queries": 10, "meta_batch": 2, "steps": 300, "lr": 1e-3,
                 "eval_every": 100, "eval_episodes": 100, "checkpoint_every": 100, "threads": 1},
    # 5-way 1-shot (background -> evaluation alphabets); each learner's settings below (OMNIGLOT)
    "omniglot": {**_IMAGE_PRESET, "budget_minutes": 3, "eval_episodes": 200, "channels_last": True,
                 "backbone_options": {"norm": "fused"}},
    # the MAML paper's meta-batch of 20 tasks x 20 episodes
    "navigation": {**_RL_PRESET, "meta_batch": 20},
    "halfcheetah-dir": _CHEETAH_PRESET,
    "halfcheetah-vel": _CHEETAH_PRESET,
    # few-shot detection: 5-way 1-shot episodes of 4 scenes, a cosine over 10 CPU-minutes on 2 threads;
    # validation on 30 fixed episodes, the test on 100 (400 scenes); per learner below (DETECTION)
    "omniglot-scenes": _DETECTION_PRESET,
    "coco": _DETECTION_PRESET,
    # few-shot inflection: tasks of 20 + 20 pairs from the 67 training languages, 15 CPU-minutes on 2
    # threads; validation on 5 languages (200 dev words each), the test on the 20 held-out languages
    "sigmorphon2018": {**_SEQ2SEQ_PRESET, "benchmark_options": {"val_queries": 200}},
    # your own parallel data: 5 CPU-minutes, validation every 200 steps
    "parallel": {**_SEQ2SEQ_PRESET, "shots": 10, "queries": 10, "budget_minutes": 5, "eval_every": 200,
                 "eval_episodes": 20, "test_episodes": 100, "checkpoint_every": 200},
    # by analogy with Omniglot, not measured (84 x 84 images: ~9x the CPU of Omniglot per image)
    "miniimagenet": {**_IMAGE_PRESET, "budget_minutes": 5, "eval_every": 100, "eval_episodes": 100,
                     "checkpoint_every": 100, "channels_last": True},
    # CIFAR-FS / FC100 (32 x 32 RGB), as miniImageNet, not measured
    "cifar-fs": {**_IMAGE_PRESET, "budget_minutes": 5, "eval_every": 100, "eval_episodes": 100,
                 "checkpoint_every": 100, "channels_last": True},
    "fc100": {**_IMAGE_PRESET, "budget_minutes": 5, "eval_every": 100, "eval_episodes": 100,
              "checkpoint_every": 100, "channels_last": True},
    # fine-grained / textures (84 x 84 RGB, attnmeta.data.fine_grained), as miniImageNet, not measured
    **{name: {**_IMAGE_PRESET, "budget_minutes": 5, "eval_every": 100, "eval_episodes": 100,
              "checkpoint_every": 100, "channels_last": True}
       for name in ("cub", "aircraft", "flowers", "dtd")},
    # Quick, Draw! (28 x 28 drawings, attnmeta.data.quickdraw): as Omniglot, not measured
    "quickdraw": {**_IMAGE_PRESET, "budget_minutes": 3, "eval_episodes": 200, "channels_last": True,
                  "backbone_options": {"norm": "fused"}},
    # tieredImageNet (84 x 84 RGB, attnmeta.data.tiered_imagenet): as miniImageNet, not measured
    "tiered-imagenet": {**_IMAGE_PRESET, "budget_minutes": 5, "eval_every": 100, "eval_episodes": 100,
                        "checkpoint_every": 100, "channels_last": True},
}

_MAML: dict[str, Any] = {
    "meta_batch": 4, "train_queries": 5, "lr": 2e-3, "eval_every": 150, "checkpoint_every": 300,
    "algo_options": {"inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 1, "head_init": "shared"}}
_PROTONET = {"train_ways": 150, "train_shots": 1, "train_queries": 3, "meta_batch": 1, "optimizer": "adamw",
             "lr": 6e-3, "weight_decay": 0.3, "augment": {"shift": 2}, "eval_every": 50,
             "checkpoint_every": 100, "algo_options": {"distance": "l2", "support_splits": 4},
             "backbone_options": {"norm": "fused", "pool_last": False}}
_TRANSFER = {"train_ways": 64, "train_shots": 1, "train_queries": 1, "meta_batch": 1, "lr": 3e-3,
             "eval_every": 300, "eval_episodes": 100, "checkpoint_every": 300}
_META_LSTM = {"meta_batch": 4, "train_queries": 5, "lr": 1e-3, "eval_every": 1000, "eval_episodes": 100,
              "checkpoint_every": 100, "algo_options": {"steps": 5}, "backbone_options": {"hidden": 32}}
#: Omniglot per learner: the recipes' settings that learn fastest per CPU-second (the README's Omniglot
#: rows): ProtoNets / Matching Networks on large-way episodes with Adam 6e-3; the MAML family with
#: meta-batch 4, one inner step of 0.4 from a shared head row (FOMAML: 5 steps), Attention-MAML with feature
#: attention; SNAIL's smaller sequence model with the auxiliary prototype loss; transfer on 64-image batches.
OMNIGLOT: dict[str, dict[str, Any]] = {
    "maml": _MAML,
    # first order: no meta-gradient through the support features, so 5 (cheap) inner steps sharpen the head
    "fomaml": {**_MAML, "algo_options": {**_MAML["algo_options"], "inner_steps": 5, "eval_inner_steps": 5}},
    "meta-sgd": _MAML,
    "anil": _MAML,
    "maml++": {**_MAML, "algo_options": {**_MAML["algo_options"], "inner_steps": 2, "eval_inner_steps": 2,
                                         "msl_anneal_steps": 200, "first_order_until": 0}},
    "attention-maml": {**_MAML, "algo_options": {**_MAML["algo_options"], "feature_attention": True}},
    "protonet": _PROTONET,
    "contrastive": {k: v for k, v in _PROTONET.items() if k != "algo_options"},
    "matching": {"train_ways": 200, "train_shots": 1, "train_queries": 2, "meta_batch": 1, "lr": 6e-3,
                 "eval_every": 50, "checkpoint_every": 100},
    "feat": {"train_ways": 60, "train_shots": 1, "train_queries": 3, "meta_batch": 1, "lr": 2e-3,
             "eval_every": 50, "checkpoint_every": 100},
    "snail": {"meta_batch": 16, "train_queries": 1, "lr": 1e-3, "eval_every": 250, "checkpoint_every": 250,
              "algo_options": {"filters": 32, "attention_sizes": [[32, 16], [64, 32], [128, 64]],
                               "prototype_loss_weight": 1.0, "prototype_loss_scope": "batch"}},
    "meta-lstm": _META_LSTM,
    "meta-lstm-attention": _META_LSTM,
    "transfer": _TRANSFER,
    "baseline++": _TRANSFER,
    # Reptile with the MAML preset's fast inner loop (5 SGD steps of 0.4 from a shared head row) and Adam on
    # Reptile's direction; the paper's settings (inner Adam 1e-3, eps 1.0) reached 62% in this budget
    "reptile": {"meta_batch": 5, "lr": 2e-3, "eval_every": 150, "checkpoint_every": 300,
                "algo_options": {"rule": "sgd", "inner_lr": 0.4, "inner_steps": 5, "eval_inner_steps": 5,
                                 "head_init": "shared"}},
    # issue 35: Relation Networks on 5-way 15-query episodes, Conv-4 unpooled after block 2 (7x7 maps), Adam
    # 1e-3 (the paper's); SimpleShot pre-trains as transfer; R2D2 / MetaOptNet-SVM on wide 1-shot episodes
    "relationnet": {"train_queries": 15, "meta_batch": 1, "lr": 1e-3, "eval_every": 100,
                    "checkpoint_every": 100, "backbone_options": {"pools": 2}},
    "simpleshot": _TRANSFER,
    "r2d2": {"train_ways": 30, "train_shots": 1, "train_queries": 3, "meta_batch": 1, "lr": 2e-3,
             "eval_every": 100, "checkpoint_every": 100, "algo_options": {"scale": 10.0},
             "backbone_options": {"pool_last": False}},
    "metaoptnet-svm": {"train_ways": 20, "train_shots": 1, "train_queries": 3, "meta_batch": 1, "lr": 2e-3,
                       "eval_every": 100, "checkpoint_every": 100, "backbone_options": {"pool_last": False}},
}
#: miniImageNet per learner (not measured): small meta-batches and one-episode steps as on Omniglot.
MINIIMAGENET: dict[str, dict[str, Any]] = {
    **{algo: {"meta_batch": 2} for algo in (*MAML_FAMILY, "attention-maml", "meta-lstm",
                                            "meta-lstm-attention")},
    **{algo: {"meta_batch": 1, "lr": 2e-3} for algo in ("protonet", "matching", "feat")},
    "snail": {"meta_batch": 4, "train_queries": 1},
    "transfer": {"meta_batch": 1, "train_ways": 16, "train_queries": 1},
    "baseline++": {"meta_batch": 1, "train_ways": 16, "train_queries": 1},
}
#: Detection per learner: the attention detector starts from template matching's score (template_prior);
#: template matching has nothing to train (one validation, then the test); the sliding-window ProtoNets
#: baseline learns its embedding in 5 CPU-minutes; the prototype detector trains without its episodic loss
#: (at equal CPU time the base training's extra steps were worth more: docs/guides/detection.md).
DETECTION: dict[str, dict[str, Any]] = {"attention-detector": {"algo_options": {"template_prior": 8.0}},
                                        "prototype-detector": {"algo_options": {"episode_weight": 0.0}},
                                        "template-matching": {"threads": 1},
                                        "protonet-windows": {"budget_minutes": 5}}
#: Sequence-to-sequence per learner: MAML's inner loop is 3 Adam steps on the support pairs and the test
#: fine-tunes as every learner does (the sigmorphon2018-maml recipe starts it from multilingual pre-training).
SEQ2SEQ: dict[str, dict[str, Any]] = {
    "maml": {"algo_options": {"rule": "adam", "inner_lr": 5e-4, "inner_steps": 3, "eval_inner_steps": None}}}
#: HalfCheetah: 10 episodes per task and step (the MAML paper: 20) to fit the budget.
CHEETAH: dict[str, dict[str, Any]] = {"maml-rl": {"algo_options": {"episodes": 10}}}
PER_LEARNER: dict[str, dict[str, dict[str, Any]]] = {
    "omniglot": OMNIGLOT, "miniimagenet": MINIIMAGENET, "halfcheetah-dir": CHEETAH,
    "halfcheetah-vel": CHEETAH, "omniglot-scenes": DETECTION, "coco": DETECTION, "sigmorphon2018": SEQ2SEQ,
    "parallel": SEQ2SEQ, "cifar-fs": MINIIMAGENET, "fc100": MINIIMAGENET,
    **{name: MINIIMAGENET for name in ("cub", "aircraft", "flowers", "dtd")},
    "quickdraw": OMNIGLOT, "tiered-imagenet": MINIIMAGENET}

#: Learner options added on CLINC150: cosine prototypes (TF-IDF nearest centroid before meta-training) and
#: MAML on the zero-initialised head with a large inner step (the lexical features have norm 4).
CLINC150_OPTIONS: dict[str, dict[str, Any]] = {
    "protonet": {"distance": "cosine"}, "maml": {"adapt": "head", "inner_lr": 0.5},
    "fomaml": {"adapt": "head", "inner_lr": 0.5}, "anil": {"inner_lr": 0.5}}
#: Learner options added for the MAML family on the regression presets (evaluation with 10 inner steps,
#: as in the MAML paper's sinusoid results).
REGRESSION_MAML_OPTIONS = {"eval_inner_steps": 10}


def preset(benchmark: str, algo: str) -> dict[str, Any]:
    """The defaults for ``benchmark`` trained with ``algo`` (a fresh dict; nested dicts copied)."""
    values = dict(BENCHMARK_PRESETS.get(benchmark, {}))
    for key, value in PER_LEARNER.get(benchmark, {}).get(algo, {}).items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    if benchmark in REGRESSION_BENCHMARKS and algo in MAML_FAMILY:
        values["algo_options"] = dict(REGRESSION_MAML_OPTIONS)
    if benchmark == "clinc150" and algo in CLINC150_OPTIONS:
        values["algo_options"] = dict(CLINC150_OPTIONS[algo])
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}


def _line(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def preset_lines() -> list[str]:
    """``benchmark [with learner]: key=value, ...`` for every preset (``attnmeta train --help``)."""
    lines = [f"{name}: {_line(values)}" for name, values in BENCHMARK_PRESETS.items()]
    lines += [f"{name} with {', '.join(MAML_FAMILY)}: algo_options={REGRESSION_MAML_OPTIONS}"
              for name in REGRESSION_BENCHMARKS]
    lines += [f"clinc150 with {algo}: algo_options={options}" for algo, options in CLINC150_OPTIONS.items()]
    for benchmark, table in PER_LEARNER.items():
        groups: dict[str, list[str]] = {}
        for algo, values in table.items():
            groups.setdefault(_line(values), []).append(algo)
        lines += [f"{benchmark} with {', '.join(algos)}: {line}" for line, algos in groups.items()]
    lines.append("(setting steps drops a preset's budget; setting ways/shots/queries drops its "
                 "train_ways/train_shots/train_queries; a recipe replaces the preset)")
    return lines
