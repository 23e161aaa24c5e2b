"""Time to accuracy on Omniglot (background alphabets -> evaluation alphabets), 5-way 1-shot test.

Trains a learner on episodes of the 964 background characters (x4 rotation classes) and evaluates it
periodically on fixed 5-way 1-shot 15-query episodes of the 659 evaluation characters. Records the training
time (process CPU seconds and wall seconds, evaluation excluded) at which the test accuracy first reaches
95 / 97 / 98%, and the final accuracy +/- 95% CI on 600 fixed episodes at 5w1s and 20w1s (when the learner
allows other ways). Prints a table and writes ``experiments/omniglot/results/<name>.json``.

Examples::

    # ProtoNets, the recipe of experiments/omniglot/results/omniglot_protonet_100w1s.json: 100-way 1-shot
    # 4-query training episodes, Adam 3e-3 with a cosine schedule over 450 episodes, fused batch norm,
    # 1 thread
    OMP_NUM_THREADS=1 python experiments/omniglot/omniglot_time_to_accuracy.py --algo protonet \
        --train-ways 100 --train-shots 1 --train-queries 4 --lr 3e-3 --schedule cosine --episodes 450 \
        --cpu-minutes 8.5 --eval-every 75 --eval-episodes 200 --name omniglot_protonet_100w1s
    # MAML, second order, the MAML paper's full-length Omniglot 5-way 1-shot configuration (meta-batch 32,
    # 1 inner step of 0.4, 3 steps at test, Adam 1e-3, 60,000 meta-steps; --norm meta is exact under vmap
    # too). Several CPU-seconds per meta-step on a 2-core CPU, i.e. days: a GPU run.
    OMP_NUM_THREADS=1 python experiments/omniglot/omniglot_time_to_accuracy.py --algo maml --train-ways 5 \
        --train-shots 1 --train-queries 15 --meta-batch 32 --lr 1e-3 --schedule constant --norm meta \
        --episodes 60000 --cpu-minutes 1e9 --eval-every 1000 --device cuda \
        --learner-options '{"inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3}' --name omniglot_maml

Recipe sweep (14 configurations, 1 thread each, on the 16-core host of a lent GPU machine):
``experiments/omniglot/results/omniglot_protonet_sweep_h100host.json``. Higher-way, fewer-shot training
episodes learn fastest per CPU-second (100w1s4q and 60w1s5q ahead of easyfsl's 60w5s5q).

On machines without the archives, ``--export-data FILE`` (on a machine with them) writes the decoded
tensors and ``--data-pt FILE`` reads them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT / "src"))

from attnmeta.data.benchmarks import make_benchmark  # noqa: E402
from attnmeta.data.omniglot import Omniglot  # noqa: E402
from attnmeta.eval import evaluate, with_rotation_ensemble  # noqa: E402
from attnmeta.learners import registry  # noqa: E402
from attnmeta.nn.backbones import build_backbone  # noqa: E402
from attnmeta.tasks import EpisodeSampler, RandomAffine, RandomShift  # noqa: E402
from attnmeta.train.averaging import ParameterAverage  # noqa: E402
from attnmeta.train.memory import retain_freed_memory  # noqa: E402

THRESHOLDS = (0.95, 0.97, 0.98, 0.988)


def parse_affine(text: str) -> tuple[float, float, float, float]:
    """``"DEG,SCALE,SHEAR,PIXELS"`` -> RandomAffine's (degrees, scale, shear, translate)."""
    parts = text.split(",")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(
            f"--affine takes four numbers DEG,SCALE,SHEAR,PIXELS (e.g. 10,0.1,0,0), got {text!r}")
    return values


def parse_decays(text: str) -> tuple[float, ...]:
    """``"0.99,0.995"`` -> (0.99, 0.995), each in [0, 1)."""
    try:
        decays = tuple(float(part) for part in text.split(","))
    except ValueError:
        decays = ()
    if not decays or not all(0.0 <= d < 1.0 for d in decays):
        raise argparse.ArgumentTypeError(f"--ema takes decays in [0, 1) separated by commas "
                                         f"(e.g. 0.99,0.995), got {text!r}")
    return decays


def parse_fold(text: str) -> tuple[int, int]:
    """``"R/K"`` -> (R, K) with 0 <= R < K, K >= 2."""
    try:
        remainder, folds = (int(part) for part in text.split("/"))
    except ValueError:
        remainder, folds = -1, 0
    if not (folds >= 2 and 0 <= remainder < folds):
        raise argparse.ArgumentTypeError(f"--alphabet-fold takes R/K with 0 <= R < K and K >= 2 (e.g. 0/3), "
                                         f"got {text!r}")
    return remainder, folds


def alphabet_fold(data: Omniglot, remainder: int, folds: int, heldout: bool) -> Omniglot:
    """The characters of ``data`` whose alphabet index modulo ``folds`` is (``heldout``) or is not
    ``remainder``, as a new data set with character ids ``0..m-1``."""
    in_fold = data.character_alphabet % folds == remainder
    kept = (in_fold if heldout else ~in_fold).nonzero().flatten()
    new_id = torch.full((data.num_characters,), -1, dtype=torch.long)
    new_id[kept] = torch.arange(len(kept))
    images = new_id[data.labels] >= 0
    return Omniglot.from_tensors(data.images[images], new_id[data.labels[images]],
                                 [data.characters[i] for i in kept.tolist()], invert=data.invert)


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"150,1,3"`` -> (150, 1, 3): ways >= 2, shots and queries >= 1."""
    try:
        ways, shots, queries = (int(part) for part in text.split(","))
    except ValueError:
        ways = shots = queries = 0
    if ways < 2 or shots < 1 or queries < 1:
        raise argparse.ArgumentTypeError(f"--aux-shape takes WAYS,SHOTS,QUERIES with ways >= 2 and shots, "
                                         f"queries >= 1 (e.g. 150,1,3), got {text!r}")
    return ways, shots, queries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="protonet")
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    p.add_argument("--data-pt", default=None, help="pre-decoded tensors written by --export-data")
    p.add_argument("--export-data", default=None, help="write the decoded tensors to this file and exit")
    p.add_argument("--train-ways", type=int, default=60)
    p.add_argument("--train-shots", type=int, default=5)
    p.add_argument("--train-queries", type=int, default=5)
    p.add_argument("--meta-batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (outer)")
    p.add_argument("--clip-grad-norm", type=float, default=0.0,
                   help="clip the gradient's global norm to this before each step (0: no clipping)")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "cosine-budget", "exp", "constant"),
                   help="cosine over --episodes; cosine-budget: cosine over whichever of --episodes, "
                        "--cpu-minutes and --wall-minutes runs out first (a time limit then ends the "
                        "schedule instead of cutting it short); exp halves the lr every --half-life episodes")
    p.add_argument("--episodes", type=int, default=1000, help="length of the lr schedule (training episodes)")
    p.add_argument("--half-life", type=float, default=250.0)
    p.add_argument("--cpu-minutes", type=float, default=20.0, help="stop after this much training CPU time")
    p.add_argument("--wall-minutes", type=float, default=float("inf"),
                   help="also stop after this much training wall time (for GPU runs)")
    p.add_argument("--eval-every", type=int, default=25, help="evaluate every this many training episodes")
    p.add_argument("--eval-episodes", type=int, default=300, help="fixed 5w1s test episodes during training")
    p.add_argument("--final-episodes", type=int, default=600)
    p.add_argument("--norm", default="fused", choices=("fused", "meta", "running"),
                   help="Conv-4 batch norm (fused: batch statistics with the fused kernel, exact for metric "
                        "learners and for MAML's loop strategy, wrong second-order gradients under vmap; "
                        "meta: batch statistics, second-order safe under every strategy; running: batch "
                        "statistics in training, running "
                        "statistics at evaluation, as nn.BatchNorm2d)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--no-pool-last", dest="pool_last", action="store_false",
                   help="Conv-4 without the fourth max-pool (28x28: a 3x3 map, hidden * 9 features)")
    p.add_argument("--pools", type=int, default=None,
                   help="max-pool after the first N Conv-4 blocks only (28x28, 2: a 7x7 map, hidden * 49 "
                        "features); overrides --no-pool-last")
    p.add_argument("--shift-pixels", type=int, default=0,
                   help="shift training examples by up to N pixels (RandomShift); test episodes untouched")
    p.add_argument("--affine", type=parse_affine, default=None, metavar="DEG,SCALE,SHEAR,PIXELS",
                   help="random affine jitter of training examples (RandomAffine: rotation up to DEG "
                        "degrees, zoom 1 +/- SCALE, shear up to SHEAR degrees, translation up to PIXELS), "
                        "after --shift-pixels; test episodes untouched")
    p.add_argument("--channels-last", action="store_true", default=True)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--learner-options", default="{}",
                   help='JSON keyword arguments of the learner ("ways" there overrides --train-ways for it)')
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-retain-memory", dest="retain_memory", action="store_false",
                   help="leave glibc's allocator as it is (as runs before 2026-11-28; attnmeta.train.memory)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CPU time is then not the measure: use wall)")
    p.add_argument("--init-backbone", default=None,
                   help="start from this Conv-4 state dict (written by --save-backbone of an earlier run, "
                        "e.g. a ProtoNets pre-training; count that run's time too)")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the learner's own parameters (e.g. SNAIL's attention and convolution "
                        "blocks), not the Conv-4 loaded with --init-backbone")
    p.add_argument("--save-backbone", default=None, help="write the trained Conv-4 state dict here")
    p.add_argument("--save-learner", default=None,
                   help="write the trained learner's state dict (backbone and the learner's own parameters) "
                        "here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-rotations", dest="rotations", action="store_false",
                   help="train on the 964 upright background characters only (default: x4 rotation classes)")
    p.add_argument("--alphabet-fold", type=parse_fold, default=None, metavar="R/K",
                   help="train on the background alphabets whose index (sorted names) modulo K is not R; "
                        "with --heldout-fold, on those where it is R (e.g. a backbone on one part, a head on "
                        "the other)")
    p.add_argument("--heldout-fold", action="store_true", help="see --alphabet-fold")
    p.add_argument("--heldout-head", type=parse_fold, default=None, metavar="R/K",
                   help="SNAIL with train_embedding=False trains its sequence model on the background "
                        "alphabets whose index modulo K is R, while an auxiliary learner (--aux-algo) trains "
                        "the same Conv-4 on the other alphabets, both every step")
    p.add_argument("--aux-algo", default="protonet", help="the embedding's learner with --heldout-head")
    p.add_argument("--aux-options", default="{}", help="JSON keyword options of --aux-algo")
    p.add_argument("--aux-shape", type=parse_shape, default=(150, 1, 3), metavar="WAYS,SHOTS,QUERIES",
                   help="episodes of --aux-algo, one per step (default 150,1,3)")
    p.add_argument("--aux-lr", type=float, default=6e-3,
                   help="Adam learning rate of the Conv-4 with --heldout-head (--lr: the sequence model's)")
    p.add_argument("--mirror-classes", action="store_true",
                   help="add the left-right mirror image of every background character as a new training "
                        "character (x2 classes; with the rotations x8: the dihedral group); test untouched")
    p.add_argument("--mirror-only", action="store_true",
                   help="train on the left-right mirror images of the background characters only, as new "
                        "characters: classes that a backbone trained without them (--init-backbone) never "
                        "saw, from all background alphabets (e.g. SNAIL's sequence model on a frozen "
                        "ProtoNets Conv-4); test untouched")
    p.add_argument("--name", default=None, help="result file stem (default omniglot_<algo>)")
    p.add_argument("--rotation-ensemble", action="store_true",
                   help="also evaluate (monitor and final test) with the test-time ensemble of the four "
                        "rotations of every task (attnmeta.eval.with_rotation_ensemble: concatenated "
                        "embeddings for protonet / matching, averaged predictions otherwise), reported "
                        "apart from the plain figures")
    p.add_argument("--ema", type=parse_decays, default=(), metavar="DECAY[,DECAY...]",
                   help="also evaluate exponential moving averages of the trained parameters with these "
                        "decays (attnmeta.train.ParameterAverage; updating them counts as training time): "
                        "monitor and final figures reported beside the plain ones")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.heldout_head and (args.alphabet_fold or args.algo != "snail"):
        p.error("--heldout-head splits the alphabets itself (drop --alphabet-fold) and trains SNAIL's "
                "sequence model (use --algo snail)")
    if args.heldout_fold and not args.alphabet_fold:
        p.error("--heldout-fold selects the held-out part of --alphabet-fold: give it --alphabet-fold R/K")
    if args.mirror_classes and args.mirror_only:
        p.error("--mirror-classes adds the mirror images to the characters, --mirror-only trains on them "
                "alone: give one")
    if args.freeze_backbone and not args.init_backbone:
        p.error("--freeze-backbone keeps the Conv-4 as loaded: give it --init-backbone")
    return args


def load_data(args: argparse.Namespace) -> tuple[Omniglot, Omniglot]:
    if args.data_pt:
        stored = torch.load(args.data_pt, weights_only=True)
        return tuple(Omniglot.from_tensors(stored[f"{k}_images"], stored[f"{k}_labels"],  # type: ignore
                                           stored[f"{k}_characters"]) for k in ("background", "evaluation"))
    return Omniglot(args.root, background=True), Omniglot(args.root, background=False)


def with_mirror_classes(data: Omniglot, keep_originals: bool = True) -> Omniglot:
    """``data`` plus the left-right mirror image of each drawing, as new characters ``<character>/mirror``
    (same alphabet); the mirror images alone with ``keep_originals=False``."""
    n = data.num_characters
    mirrored = [f"{c}/mirror" for c in data.characters]
    if not keep_originals:
        return Omniglot.from_tensors(data.images.flip(-1), data.labels, mirrored, invert=data.invert)
    return Omniglot.from_tensors(torch.cat([data.images, data.images.flip(-1)]),
                                 torch.cat([data.labels, data.labels + n]),
                                 [*data.characters, *mirrored], invert=data.invert)


def training_characters(args: argparse.Namespace, background: Omniglot) -> Omniglot:
    """The background characters a run trains on: ``--alphabet-fold`` / ``--heldout-fold``, then
    ``--mirror-classes`` / ``--mirror-only``."""
    if args.alphabet_fold:
        background = alphabet_fold(background, *args.alphabet_fold, heldout=args.heldout_fold)
        print(f"training alphabets: {', '.join(background.alphabets)}", flush=True)
    if args.mirror_classes or args.mirror_only:
        background = with_mirror_classes(background, keep_originals=not args.mirror_only)
    return background


def augmented_sampler(args: argparse.Namespace, data: Omniglot, evaluation: Omniglot, ways: int, shots: int,
                      queries: int, seed: int,
                      adjust_train: Callable[[EpisodeSampler], None] | None = None) -> EpisodeSampler:
    """Training episodes of ``data`` (x4 rotation classes unless ``--no-rotations``), with the run's
    ``--shift-pixels`` then ``--affine`` augmentation, then ``adjust_train``."""
    sampler = make_benchmark("omniglot", data=(data, evaluation), seed=seed, rotations=args.rotations,
                             ways=ways, shots=shots, queries=queries).train
    if args.shift_pixels:
        sampler.batch_transform = compose(sampler.batch_transform, RandomShift(args.shift_pixels, seed=seed))
    if args.affine:
        sampler.batch_transform = compose(sampler.batch_transform, RandomAffine(*args.affine, seed=seed))
    if adjust_train is not None:
        adjust_train(sampler)
    return sampler


def compose(*functions):
    """``x -> functions[-1](...functions[0](x))``."""
    def composed(x):
        for function in functions:
            x = function(x)
        return x
    return composed


def schedule_fraction(args: argparse.Namespace, episode: int, cpu_s: float = 0.0,
                      wall_s: float = 0.0) -> float:
    """How far training is through its schedule, in [0, 1]: episodes for ``cosine``, and for
    ``cosine-budget`` the largest of the episode, CPU-time and wall-time fractions."""
    fraction = episode / args.episodes
    if args.schedule == "cosine-budget":
        fraction = max(fraction, cpu_s / (60 * args.cpu_minutes), wall_s / (60 * args.wall_minutes))
    return min(fraction, 1.0)


def learning_rate(args: argparse.Namespace, episode: int, cpu_s: float = 0.0, wall_s: float = 0.0) -> float:
    if args.schedule in ("cosine", "cosine-budget"):
        return args.lr * 0.5 * (1 + math.cos(math.pi * schedule_fraction(args, episode, cpu_s, wall_s)))
    if args.schedule == "exp":
        return args.lr * 0.5 ** (episode / args.half_life)
    return args.lr


def mark_reached(reached: dict, accuracy: float, episode: int, cpu_s: float, wall_s: float) -> None:
    """Record in ``reached`` the first time (CPU and wall minutes, episode) each threshold is met."""
    for threshold in THRESHOLDS:
        if accuracy >= threshold and str(threshold) not in reached:
            reached[str(threshold)] = {"cpu_min": round(cpu_s / 60, 3), "wall_min": round(wall_s / 60, 3),
                                       "episode": episode}


def main(argv: list[str] | None = None, *, adjust_model: Callable[[nn.Module], nn.Module] | None = None,
         adjust_train: Callable[[EpisodeSampler], None] | None = None,
         make_optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer] | None = None) -> dict:
    """Run the benchmark with command-line ``argv``; returns the report written to ``<name>.json``.

    Hooks for variants of a recipe (``omniglot_protonet_variants.py``): ``adjust_model(backbone)``
    returns the backbone to train (after ``--init-backbone``); ``adjust_train(sampler)`` changes the training
    sampler in place (after ``--shift-pixels`` / ``--affine``); ``make_optimizer(parameters, lr)`` replaces
    ``torch.optim.Adam`` (the schedule still sets each group's ``lr``).
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.retain_memory:
        retain_freed_memory()
    background, evaluation = load_data(args)
    if args.export_data:
        pairs = (("background", background), ("evaluation", evaluation))
        torch.save({f"{k}_{f}": getattr(d, f) for k, d in pairs for f in ("images", "labels", "characters")},
                   args.export_data)
        print(f"wrote {args.export_data}")
        return {}
    background = training_characters(args, background)
    torch.manual_seed(args.seed)

    def training_sampler(data: Omniglot, ways: int, shots: int, queries: int, seed: int) -> EpisodeSampler:
        return augmented_sampler(args, data, evaluation, ways, shots, queries, seed, adjust_train)

    aux_train = None
    if args.heldout_head:
        embedding_data = alphabet_fold(background, *args.heldout_head, heldout=False)
        background = alphabet_fold(background, *args.heldout_head, heldout=True)
        print(f"sequence model on {', '.join(background.alphabets)}; embedding on "
              f"{', '.join(embedding_data.alphabets)}", flush=True)
        aux_train = training_sampler(embedding_data, *args.aux_shape, seed=args.seed + 1000)
    train = training_sampler(background, args.train_ways, args.train_shots, args.train_queries, args.seed)
    tests = {w: make_benchmark("omniglot", data=(background, evaluation), ways=w, shots=1, queries=15,
                               train_ways=2, train_queries=1).test  # (its training source is unused)
             for w in (5, 20)}
    spec = registry.spec(args.algo)
    model = build_backbone("conv4", in_shape=(1, 28, 28), hidden=args.hidden, norm=args.norm,
                           pool_last=args.pool_last or args.pools is not None, pools=args.pools,
                           out_features=args.train_ways if spec.head else None)
    if args.init_backbone:
        model.load_state_dict(torch.load(args.init_backbone, weights_only=True))
    if adjust_model is not None:
        model = adjust_model(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    options = json.loads(args.learner_options)
    if args.heldout_head:
        if options.get("train_embedding", False):
            raise SystemExit("--heldout-head trains SNAIL with train_embedding=False; drop it from "
                             "--learner-options")
        options["train_embedding"] = False
    # "ways" in the options builds the learner for that many ways (SNAIL with subtasks of larger episodes)
    learner = registry.build(args.algo, model=model, task_type="classification",
                             **{"ways": args.train_ways, **options})
    learner.to(args.device)
    if args.freeze_backbone:
        model.requires_grad_(False)
    trained = [p for p in learner.parameters() if p.requires_grad]
    aux = None
    if aux_train is not None:
        aux = registry.build(args.aux_algo, model=model, task_type="classification", ways=args.aux_shape[0],
                             **json.loads(args.aux_options)).to(args.device)
        embedding = {id(p) for p in model.parameters()}
        aux_own = [p for p in aux.parameters() if id(p) not in embedding and p.requires_grad]
        trained = [{"params": [p for p in trained if id(p) in embedding] + aux_own,
                    "lr_scale": args.aux_lr / args.lr},
                   {"params": [p for p in trained if id(p) not in embedding], "lr_scale": 1.0}]
    optimizer = (make_optimizer or torch.optim.Adam)(trained, args.lr)
    averages = {f"ema{decay:g}": ParameterAverage(learner, decay) for decay in args.ema}
    monitor = tests[5].fixed_tasks(args.eval_episodes, seed=1)
    name = args.name or f"omniglot_{args.algo}"
    print(f"{name}: {args.algo} on {train!r}, {sum(p.numel() for p in learner.parameters())} parameters "
          f"({sum(p.numel() for p in learner.parameters() if p.requires_grad)} trained), "
          f"{torch.get_num_threads()} thread(s)", flush=True)

    cpu = wall = 0.0
    curve, reached, reached_ensemble = [], {}, {}
    episode = 0
    while (cpu < 60 * args.cpu_minutes and wall < 60 * args.wall_minutes
           and not (args.schedule in ("cosine", "cosine-budget") and episode >= args.episodes)):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, episode, cpu, wall) * group.get("lr_scale", 1.0)
        batch = train.sample_batch(args.meta_batch).to(args.device)
        out = learner.meta_loss(batch)
        loss = out.loss
        if aux is not None:
            aux_out = aux.meta_loss(aux_train.sample_batch(1).to(args.device))
            loss = loss + aux_out.loss
            out.metrics.update(loss=out.metrics["loss"] + aux_out.metrics["loss"],
                               aux_loss=aux_out.metrics["loss"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           args.clip_grad_norm)
        optimizer.step()
        for average in averages.values():
            average.update(learner)
        episode += 1
        cpu += time.process_time() - cpu0
        wall += time.perf_counter() - wall0
        if episode % args.eval_every == 0:
            result = evaluate(learner, monitor, device=args.device)
            point = {"episode": episode, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                     "accuracy": result.mean, "ci95": result.ci95, "train_loss": out.metrics.get("loss"),
                     "lr": learning_rate(args, episode, cpu, wall)}
            curve.append(point)
            mark_reached(reached, result.mean, episode, cpu, wall)
            shown = result.summary.as_percent()
            if args.rotation_ensemble:
                ensemble = evaluate(with_rotation_ensemble(learner), monitor, device=args.device)
                point.update(accuracy_rotation_ensemble=ensemble.mean, ci95_rotation_ensemble=ensemble.ci95)
                mark_reached(reached_ensemble, ensemble.mean, episode, cpu, wall)
                shown += f"%, rotation ensemble {ensemble.summary.as_percent()}"
            for key, average in averages.items():
                with average.applied(learner):
                    averaged = evaluate(learner, monitor, device=args.device)
                point.update({f"accuracy_{key}": averaged.mean, f"ci95_{key}": averaged.ci95})
                shown += f"%, {key} {averaged.summary.as_percent()}"
            print(f"episode {episode:5d}  cpu {cpu / 60:6.2f} min  wall {wall / 60:6.2f} min  "
                  f"loss {out.metrics.get('loss', float('nan')):.3f}  "
                  f"test 5w1s {shown}%",
                  flush=True)

    final = {}
    learner_ways = options.get("ways", args.train_ways)
    for ways, source in tests.items():
        if ways != learner_ways and (not learner.any_ways or (spec.head and ways > learner_ways)):
            continue  # a head of learner_ways outputs (or one-hot labels of that size) cannot score them
        episodes = source.fixed_tasks(args.final_episodes, seed=0)
        evaluated = {f"{ways}w1s": learner}
        if args.rotation_ensemble:
            evaluated[f"{ways}w1s_rotation_ensemble"] = with_rotation_ensemble(learner)
        for key, evaluated_learner in evaluated.items():
            result = evaluate(evaluated_learner, episodes, device=args.device)
            final[key] = {"accuracy": result.mean, "ci95": result.ci95, "n": result.summary.n}
        for key, average in averages.items():
            with average.applied(learner):
                result = evaluate(learner, episodes, device=args.device)
            final[f"{ways}w1s_{key}"] = {"accuracy": result.mean, "ci95": result.ci95, "n": result.summary.n}
    if args.save_backbone:
        torch.save(model.state_dict(), args.save_backbone)
    if args.save_learner:
        torch.save(learner.state_dict(), args.save_learner)
    report = {"name": name, "algo": args.algo, "args": vars(args), "episodes": episode,
              "train_cpu_min": cpu / 60, "train_wall_min": wall / 60, "reached": reached, "final": final,
              **({"reached_rotation_ensemble": reached_ensemble} if args.rotation_ensemble else {}),
              "curve": curve, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "note": "training time excludes evaluation; the machine may be shared and loaded (wall >> cpu)"}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(f"\n{name}: {episode} episodes, training {cpu / 60:.2f} CPU-min ({wall / 60:.2f} wall-min)")
    print(f"{'target':>8} | {'CPU-min':>8} | {'wall-min':>8} | episode")
    tables = [("", reached)]
    if args.rotation_ensemble:
        tables.append((" (rotation ensemble)", reached_ensemble))
    for label, hits in tables:
        for threshold in THRESHOLDS:
            hit = hits.get(str(threshold))
            cells = (f"{hit['cpu_min']:8.2f} | {hit['wall_min']:8.2f} | {hit['episode']}" if hit
                     else f"{'never':>8} | {'':>8} |")
            print(f"{100 * threshold:7.1f}% | {cells}{label}")
    for key, value in final.items():
        print(f"final {key}: {100 * value['accuracy']:.2f} +/- {100 * value['ci95']:.2f}% "
              f"({value['n']} episodes)")
    return report


if __name__ == "__main__":
    main()
