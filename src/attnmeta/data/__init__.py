"""Data sets: Omniglot, miniImageNet, text; named benchmarks (``make_benchmark``)."""

from attnmeta.data.benchmarks import BENCHMARKS, Benchmark, make_benchmark
from attnmeta.data.miniimagenet import MINIIMAGENET_MEAN, MINIIMAGENET_STD, MiniImageNet
from attnmeta.data.omniglot import (
    OMNIGLOT_ROTATIONS,
    Omniglot,
    maml_split,
    read_vinyals_split,
    vinyals_classes,
)

__all__ = ["BENCHMARKS", "Benchmark", "make_benchmark", "MiniImageNet", "MINIIMAGENET_MEAN",
           "MINIIMAGENET_STD", "Omniglot", "OMNIGLOT_ROTATIONS", "maml_split", "read_vinyals_split",
           "vinyals_classes"]
