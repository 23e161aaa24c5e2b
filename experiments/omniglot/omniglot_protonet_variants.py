"""One-change variants of an Omniglot recipe, run through ``omniglot_time_to_accuracy.py`` (the trainer).

Each ``--variant`` changes one thing of the recipe given by the benchmark's own arguments (every argument
other than ``--variant`` goes to the benchmark unchanged), so a variant and its reference run differ in that
one thing only. The screen of session 14 ran each against the best ProtoNets recipe (README, Omniglot table)::

    OMP_NUM_THREADS=1 python experiments/omniglot/omniglot_protonet_variants.py --variant no-final-relu \\
        --algo protonet --train-ways 150 --train-shots 1 --train-queries 3 --lr 6e-3 \\
        --schedule cosine-budget --episodes 100000 --cpu-minutes 20 --eval-every 75 --eval-episodes 200 \\
        --learner-options '{"distance": "l2", "support_splits": 4}' --shift-pixels 2 --no-pool-last \\
        --seed 2 --name omniglot_protonet_150w3q_l2_lr6_shift2_nopool_splits4_norelu_20min_seed2

Variants (``NAME`` or ``NAME:VALUE``):

- ``no-final-relu``: the last Conv-4 block without its ReLU (the embedding is the batch-norm output, signed).
- ``last-block:W``: the last Conv-4 block with ``W`` filters (embedding ``W * 9``-d unpooled).
- ``concat-blocks-3-4``: the embedding concatenates the outputs of blocks 3 and 4.
- ``progressive:SIZE:MINUTES``: training episodes resized to ``SIZE`` px (antialiased bilinear) for the first
  ``MINUTES`` of process CPU time after the first training batch (training plus the monitor evaluations),
  full size after; the Conv-4 input-size check is dropped so both sizes go through (test episodes stay 28 px).
- ``alphabets:A``: each training episode draws its classes from ``A`` random background alphabets (harder
  negatives: characters of one alphabet look alike) instead of from all 30 (alphabets drawn with seed 1234).
- ``adamw:WD``: AdamW with decoupled weight decay ``WD`` instead of Adam (the same as the benchmark's
  ``--optimizer adamw --weight-decay WD``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import omniglot_time_to_accuracy as bench  # noqa: E402

from attnmeta.nn.backbones import Conv4, ConvBlock  # noqa: E402
from attnmeta.tasks import EpisodeSampler  # noqa: E402

VALUES_TAKEN = {"no-final-relu": 0, "last-block": 1, "concat-blocks-3-4": 0, "progressive": 2, "alphabets": 1,
                "adamw": 1}
"""How many ``:``-separated values each variant takes."""


def parse_variant(text: str) -> tuple[str, tuple[float, ...]]:
    """``"name"`` or ``"name:v1[:v2]"`` -> ``(name, values)``, checked against what each variant takes."""
    name, *raw = text.split(":")
    if name not in VALUES_TAKEN:
        raise argparse.ArgumentTypeError(f"unknown variant {name!r}; choose from {', '.join(VALUES_TAKEN)}")
    try:
        values = tuple(float(v) for v in raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"variant values must be numbers, got {text!r}") from None
    if len(values) != VALUES_TAKEN[name] or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"{name} takes {VALUES_TAKEN[name]} positive value(s) after ':' (see the module docstring), "
            f"got {text!r}")
    return name, values


def without_final_relu(model: Conv4) -> Conv4:
    model.blocks[-1].act = nn.Identity()  # the block then runs op by op (the fast path needs the ReLU)
    return model


def with_last_block_width(model: Conv4, width: int, norm: str) -> Conv4:
    last = model.blocks[-1]
    pooled = not isinstance(last.pool, nn.Identity)
    model.blocks[-1] = ConvBlock(last.conv.in_channels, width, pool=pooled, norm=norm)
    model.feature_dim = model.feature_dim // last.conv.out_channels * width
    return model


def concat_blocks_3_4(model: Conv4) -> Conv4:
    def embed(self: Conv4, x: Tensor) -> Tensor:
        third = self.blocks[:3](x)
        return torch.cat([third.flatten(1), self.blocks[3](third).flatten(1)], 1)
    model.embed = types.MethodType(embed, model)
    model.feature_dim *= 2
    return model


def any_input_size(model: Conv4) -> Conv4:
    model.embed = types.MethodType(lambda self, x: self.blocks(x).flatten(1), model)
    return model


def progressive_resize(size: int, minutes: float,
                       clock: Callable[[], float] = time.process_time) -> Callable[[Tensor], Tensor]:
    """Batch transform: ``[m, C, H, W]`` resized to ``size`` px until ``minutes`` of ``clock`` after its first
    call, unchanged after."""
    started: list[float] = []

    def resize(x: Tensor) -> Tensor:
        if not started:
            started.append(clock())
        if clock() - started[0] >= 60 * minutes:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resize


def draw_from_alphabets(sampler: EpisodeSampler, alphabet_of_base_class: Tensor, alphabets: int,
                        seed: int = 1234) -> None:
    """Make every task of ``sampler`` draw its classes from ``alphabets`` random alphabets (in place).

    ``alphabet_of_base_class[label]`` is the alphabet index of each base class (the sampler's class ids are
    ``label * variants + variant``). The sampler picks its ``ways`` classes as the smallest of one uniform per
    pool class (``ways > 16``); classes outside the chosen alphabets get 1 added, so they come last. The
    alphabets are drawn from a generator of their own (``seed``), so the sampler's draws stay as they were.
    """
    if sampler.ways <= 16:
        raise ValueError("alphabets:A acts on the class choice of episodes with more than 16 ways")
    of_pool = alphabet_of_base_class[sampler.classes // sampler.num_variants]
    count = int(alphabet_of_base_class.max()) + 1
    smallest = torch.bincount(of_pool, minlength=count).sort().values[:alphabets].sum()
    if alphabets > count or int(smallest) < sampler.ways:
        raise ValueError(f"{alphabets} alphabets can hold fewer than the {sampler.ways} classes of an "
                         "episode; choose more alphabets")
    generator = torch.Generator().manual_seed(seed)
    choose = sampler._choose

    def choose_within_alphabets(uniforms: Tensor):
        uniforms = uniforms.clone()
        for task in range(uniforms.shape[0]):
            picked = torch.randperm(count, generator=generator)[:alphabets]
            uniforms[task, :sampler.num_classes][~torch.isin(of_pool, picked)] += 1.0
        return choose(uniforms)
    sampler._choose = choose_within_alphabets


def alphabet_indices(characters: list[str]) -> Tensor:
    """Alphabet index ``[n_characters]`` of Omniglot character names ``"Alphabet/characterNN"``."""
    names = [c.split("/")[0] for c in characters]
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    return torch.tensor([index[name] for name in names])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", type=parse_variant, required=True, metavar="NAME[:VALUE...]")
    own, rest = parser.parse_known_args(argv)
    args = bench.parse_args(rest)
    name, values = own.variant
    hooks: dict = {}
    if name == "no-final-relu":
        hooks["adjust_model"] = without_final_relu
    elif name == "last-block":
        hooks["adjust_model"] = functools.partial(with_last_block_width, width=int(values[0]), norm=args.norm)
    elif name == "concat-blocks-3-4":
        hooks["adjust_model"] = concat_blocks_3_4
    elif name == "progressive":
        resize = progressive_resize(int(values[0]), values[1])
        hooks["adjust_model"] = any_input_size
        hooks["adjust_train"] = lambda sampler: setattr(
            sampler, "batch_transform", bench.compose(sampler.batch_transform, resize))
    elif name == "alphabets":
        if args.mirror_classes:
            parser.error("alphabets:A does not combine with --mirror-classes")
        background, _ = bench.load_data(args)
        of_base = alphabet_indices(background.characters)
        hooks["adjust_train"] = functools.partial(draw_from_alphabets, alphabet_of_base_class=of_base,
                                                  alphabets=int(values[0]))
    elif name == "adamw":  # the trainer's AdamW (decoupled weight decay)
        rest = [*rest, "--optimizer", "adamw", "--weight-decay", str(values[0])]
    print(f"variant {name} {values}", flush=True)
    report = bench.main(rest, **hooks)
    report["variant"] = {"name": name, "values": list(values)}
    (Path(args.out_dir) / f"{report['name']}.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
