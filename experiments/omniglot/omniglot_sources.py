"""Omniglot training sources of the research scripts: the archives or ``--data-pt`` tensors, alphabet folds,
mirror-image characters, augmented training-source samplers, and the parsers of their flags."""

from __future__ import annotations

import argparse

import torch

from attnmeta.data.benchmarks import make_benchmark
from attnmeta.data.omniglot import Omniglot
from attnmeta.tasks import EpisodeSampler, RandomAffine, RandomShift


def parse_numbers(text: str, count: int, flag: str, example: str, kind: type = float) -> tuple:
    try:
        values = tuple(kind(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{flag} takes {example}, got {text!r}")
    return values


def parse_affine(text: str) -> tuple[float, float, float, float]:
    """``"DEG,SCALE,SHEAR,PIXELS"`` -> RandomAffine's (degrees, scale, shear, translate)."""
    return parse_numbers(text, 4, "--affine", "four numbers DEG,SCALE,SHEAR,PIXELS (e.g. 10,0.1,0,0)")


def parse_fold(text: str) -> tuple[int, int]:
    """``"R/K"`` -> (R, K) with 0 <= R < K, K >= 2."""
    remainder, folds = parse_numbers(text.replace("/", ","), 2, "--alphabet-fold", "R/K with 0 <= R < K and "
                                     "K >= 2 (e.g. 0/3)", int) if "/" in text else (-1, 0)
    if not (folds >= 2 and 0 <= remainder < folds):
        raise argparse.ArgumentTypeError(f"--alphabet-fold takes R/K with 0 <= R < K and K >= 2 (e.g. 0/3), "
                                         f"got {text!r}")
    return remainder, folds


def load_data(args: argparse.Namespace) -> tuple[Omniglot, Omniglot]:
    if args.data_pt:
        stored = torch.load(args.data_pt, weights_only=True)
        return tuple(Omniglot.from_tensors(stored[f"{k}_images"], stored[f"{k}_labels"],  # type: ignore
                                           stored[f"{k}_characters"]) for k in ("background", "evaluation"))
    return Omniglot(args.root, background=True), Omniglot(args.root, background=False)


def alphabet_fold(data: Omniglot, remainder: int, folds: int, heldout: bool) -> Omniglot:
    """The characters whose alphabet index modulo ``folds`` is (``heldout``) or is not ``remainder``."""
    in_fold = data.character_alphabet % folds == remainder
    kept = (in_fold if heldout else ~in_fold).nonzero().flatten()
    new_id = torch.full((data.num_characters,), -1, dtype=torch.long)
    new_id[kept] = torch.arange(len(kept))
    images = new_id[data.labels] >= 0
    return Omniglot.from_tensors(data.images[images], new_id[data.labels[images]],
                                 [data.characters[i] for i in kept.tolist()], invert=data.invert)


def with_mirror_classes(data: Omniglot, keep_originals: bool = True) -> Omniglot:
    """``data`` plus (or, ``keep_originals=False``, only) the left-right mirror image of each drawing, as new
    characters ``<character>/mirror``."""
    mirrored = [f"{c}/mirror" for c in data.characters]
    if not keep_originals:
        return Omniglot.from_tensors(data.images.flip(-1), data.labels, mirrored, invert=data.invert)
    return Omniglot.from_tensors(torch.cat([data.images, data.images.flip(-1)]),
                                 torch.cat([data.labels, data.labels + data.num_characters]),
                                 [*data.characters, *mirrored], invert=data.invert)


def training_characters(args: argparse.Namespace, background: Omniglot) -> Omniglot:
    """The background characters a run trains on (``--alphabet-fold``, then ``--mirror-*``)."""
    if args.alphabet_fold:
        background = alphabet_fold(background, *args.alphabet_fold, heldout=args.heldout_fold)
        print(f"training alphabets: {', '.join(background.alphabets)}", flush=True)
    if args.mirror_classes or args.mirror_only:
        background = with_mirror_classes(background, keep_originals=not args.mirror_only)
    return background


def augmented_sampler(args: argparse.Namespace, data: Omniglot, evaluation: Omniglot, ways: int, shots: int,
                      queries: int, seed: int) -> EpisodeSampler:
    """Training-source episodes with the run's ``--shift-pixels`` then ``--affine`` (for analyses)."""
    sampler = make_benchmark("omniglot", data=(data, evaluation), seed=seed, rotations=args.rotations,
                             ways=ways, shots=shots, queries=queries).train
    transforms = [sampler.batch_transform]
    if args.shift_pixels:
        transforms.append(RandomShift(args.shift_pixels, seed=seed))
    if args.affine:
        transforms.append(RandomAffine(*args.affine, seed=seed))
    sampler.batch_transform = compose(*transforms)
    return sampler


def compose(*functions):
    """``x -> functions[-1](...functions[0](x))``."""
    def composed(x):
        for function in functions:
            x = function(x)
        return x
    return composed
