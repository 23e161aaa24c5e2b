"""Named few-shot benchmarks: task sources for train/val/test plus everything a predictor needs.

``make_benchmark("omniglot", root=..., ways=5, shots=1, queries=15)`` returns a ``Benchmark`` whose
``train``/``val``/``test`` are task sources (``sample``, ``sample_batch``, ``fixed_tasks``, ``state_dict``).

Omniglot splits (``split=``):

- ``"default"`` (alias ``"lake"``): train on the 30 background alphabets (964 characters, each 90-degree
  rotation its own class), test on the 20 evaluation alphabets (659 characters, unrotated). Lake's protocol
  has no validation set: ``val`` samples the evaluation alphabets too (use a different ``fixed_tasks`` seed).
- ``"vinyals"``: the Vinyals et al. class split from ``split_dir`` (``train.txt``/``val.txt``/``test.txt``,
  default ``<root>/splits/vinyals``), every split with rotation classes.
- ``"maml"``: 1,200 seeded random characters (x4 rotations) for training, the other 423 for testing
  (``val`` = ``test``).

CLINC150 (``root``: folder of ``data_full.json`` and ``domains.json``): intents as classes, held-out domains
(``split="default"``) or random intents (``"random"``); inputs are token ids from ``attnmeta.nn.text``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnmeta.data.omniglot import OMNIGLOT_ROTATIONS, Omniglot, maml_split, rotation_classes, vinyals_classes
from attnmeta.tasks.episode import Task, TaskBatch
from attnmeta.tasks.regression import Multimodal, Sinusoid
from attnmeta.tasks.sampler import EpisodeSampler

__all__ = ["Benchmark", "make_benchmark", "BENCHMARKS", "NormalizedSource"]

BENCHMARKS = ("sinusoid", "multimodal", "omniglot", "miniimagenet", "clinc150", "imagefolder", "cifar-fs",
              "fc100", "cub", "aircraft", "flowers", "dtd", "quickdraw", "tiered-imagenet")


@dataclass
class Benchmark:
    """A benchmark's task sources and metadata.

    Attributes:
        name: benchmark name. task_type: ``"classification"`` or ``"regression"``.
        train, val, test: task sources. input_shape: shape of one model input, e.g. ``(1, 28, 28)``.
        preprocessing: how raw inputs become model inputs (image size, channels, scale, mean/std, inversion).
        default_backbone: ``{"name": ..., "options": {...}}`` for ``attnmeta.nn.backbones.build_backbone``.
        info: split details (class counts, data sources).
    """

    name: str
    task_type: str
    train: Any
    val: Any
    test: Any
    input_shape: tuple[int, ...]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    default_backbone: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class NormalizedSource:
    """Wraps a task source over uint8 images; returns float tasks ``(x / 255 - mean) / std`` per channel.

    Keeps the image store in uint8 (4x less memory) and converts only the sampled examples.
    """

    def __init__(self, source: Any, mean: Tensor | Sequence[float], std: Tensor | Sequence[float]) -> None:
        self.source = source
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def _convert(self, x: Tensor) -> Tensor:
        return (x.float() / 255.0 - self.mean.to(x.device)) / self.std.to(x.device)

    def _task(self, task: Task) -> Task:
        return Task(self._convert(task.support_x), task.support_y, self._convert(task.query_x), task.query_y,
                    task.classes, task.info)

    def sample(self, generator: torch.Generator | None = None) -> Task:
        return self._task(self.source.sample(generator))

    def sample_batch(self, meta_batch: int, generator: torch.Generator | None = None) -> TaskBatch:
        b = self.source.sample_batch(meta_batch, generator)
        return TaskBatch(self._convert(b.support_x), b.support_y, self._convert(b.query_x), b.query_y,
                         b.classes, b.infos)

    def fixed_tasks(self, n: int = 600, seed: int = 0) -> list[Task]:
        return [self._task(t) for t in self.source.fixed_tasks(n, seed)]

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:  # ways, shots, classes, ... of the wrapped sampler
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)


def uint8_to_unit(x: Tensor) -> Tensor:
    """uint8 pixels ``[m, ...]`` -> float32 in [0, 1] (the sampler's batch transform for image stores)."""
    return x.float().div_(255.0)


def make_benchmark(name: str, *, root: str | Path | None = None, ways: int | None, shots: int, queries: int,
                   split: str = "default", seed: int = 0, image_size: int | None = None,
                   train_ways: int | None = None, train_shots: int | None = None,
                   train_queries: int | None = None, val_ways: int | None = None,
                   **options: Any) -> Benchmark:
    """Build a named benchmark.

    Args:
        name: ``"sinusoid"``, ``"multimodal"``, ``"omniglot"``, ``"miniimagenet"``, ``"clinc150"``,
            ``"imagefolder"``, ``"cifar-fs"`` or ``"fc100"``.
        root: data folder (Omniglot archives; miniImageNet CSVs and images or caches). Unused for regression.
        ways, shots, queries: episode shape (``ways`` is ignored for regression, where it may be ``None``).
        split: see the module docstring (Omniglot ``"default"``/``"vinyals"``/``"maml"``; miniImageNet
            ``"default"`` = Ravi & Larochelle).
        seed: seeds the samplers' own generators (train ``seed``, val ``seed + 1``, test ``seed + 2``) and the
            MAML character split.
        image_size: image side in pixels (Omniglot 28, miniImageNet and imagefolder 84, CIFAR-FS and FC100
            32 by default).
        train_ways, train_shots, train_queries: another episode shape for the training source only
            (``None``: ``ways`` / ``shots`` / ``queries``), e.g. 150-way training episodes for a 5-way test,
            the Prototypical Networks recipe; validation and test keep ``ways`` / ``shots`` / ``queries``.
        val_ways: another number of ways for the validation source (``attnmeta eval`` keeps the trained one
            there, so the test split may hold more classes than validation, e.g. every CLINC150 test intent).
        options: Omniglot: ``download``, ``cache_dir``, ``split_dir``, ``rotations`` (train rotation classes,
            default True), ``train_characters`` (MAML split, 1200), ``data`` (a pre-loaded
            ``(background, evaluation)`` pair of ``Omniglot``). miniImageNet: ``cache_dir``, ``csv_dir``.
            imagefolder: ``split_file`` (JSON class split), ``channels`` (1 or 3). CIFAR-FS / FC100
            (``attnmeta.data.cifar``): ``download``, ``cache``, ``cache_dir``, ``data``. cub, aircraft,
            flowers, dtd (``attnmeta.data.fine_grained``, 84 px by default): the same, and ``crop``
            (aircraft). quickdraw (``attnmeta.data.quickdraw``, 28 px): ``max_per_class``, ``split_file``.
            tiered-imagenet (``attnmeta.data.tiered_imagenet``, 84 px): ``max_per_class``, ``select_seed``,
            ``cache``, ``cache_dir``, ``split_file``.
            Regression: keyword arguments of the task family (``noise_std``, ...).
    """
    if name.startswith("multi:"):  # Meta-Dataset-style episodes over several sources
        from attnmeta.data.multi_domain import multi_domain_benchmark

        shape = (ways or 0, shots, queries)
        train = (shape[0] if train_ways is None else train_ways, train_shots or shots,
                 train_queries or queries)
        return multi_domain_benchmark(name, root, (train, shape, shape), split, seed, image_size, options)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)} "
                         "(or multi:NAME,NAME,... for multi-domain episodes)")
    if ways is None:
        if name not in ("sinusoid", "multimodal"):
            raise ValueError(f"benchmark {name!r} needs ways= (classes per episode)")
        ways = 0  # regression tasks have no classes: ignored
    train_shape = (ways if train_ways is None else train_ways, shots if train_shots is None else train_shots,
                   queries if train_queries is None else train_queries)
    shapes = (train_shape, (ways if val_ways is None else val_ways, shots, queries), (ways, shots, queries))
    if name in ("sinusoid", "multimodal"):
        return _regression(name, shapes, seed, options)
    if name == "omniglot":
        return _omniglot(root, shapes, split, seed, image_size or 28, options)
    if name == "clinc150":
        return _clinc150(root, shapes, split, seed, options)
    if name == "imagefolder":
        return _imagefolder(root, shapes, split, seed, image_size or 84, options)
    if name in ("cifar-fs", "fc100"):
        from attnmeta.data.cifar import cifar_benchmark

        return cifar_benchmark(name, root, shapes, split, seed, image_size or 32, options)
    if name in ("cub", "aircraft", "flowers", "dtd"):
        from attnmeta.data.fine_grained import fine_grained_benchmark

        return fine_grained_benchmark(name, root, shapes, split, seed, image_size or 84, options)
    if name == "quickdraw":
        from attnmeta.data.quickdraw import quickdraw_benchmark

        return quickdraw_benchmark(root, shapes, split, seed, image_size or 28, options)
    if name == "tiered-imagenet":
        from attnmeta.data.tiered_imagenet import tiered_benchmark

        return tiered_benchmark(root, shapes, split, seed, image_size or 84, options)
    return _miniimagenet(root, shapes, split, seed, image_size or 84, options)


Shapes = tuple[tuple[int, int, int], ...]  # (ways, shots, queries) of the train, val and test sources


def _regression(name: str, shapes: Shapes, seed: int, options: dict[str, Any]) -> Benchmark:
    family = Sinusoid if name == "sinusoid" else Multimodal
    train, val, test = (family(shots, queries, seed=seed + i, **options)
                        for i, (_, shots, queries) in enumerate(shapes))
    return Benchmark(name, "regression", train, val, test, (1,), {"input_range": list(family.x_range)},
                     {"name": "mlp", "options": {"hidden": [40, 40]}}, {"family": family.__name__})


def _omniglot(root: str | Path | None, shapes: Shapes, split: str, seed: int, image_size: int,
              options: dict[str, Any]) -> Benchmark:
    data = options.pop("data", None)
    download, cache_dir = options.pop("download", False), options.pop("cache_dir", None)
    split_dir = options.pop("split_dir", None)
    rotate = options.pop("rotations", True)
    train_characters = options.pop("train_characters", 1200)
    if options:
        raise TypeError(f"unknown omniglot options {sorted(options)}; accepted: data, download, cache_dir, "
                        "split_dir, rotations, train_characters")
    if split not in ("default", "lake", "vinyals", "maml"):
        raise ValueError(f"unknown omniglot split {split!r}; choose 'default' (alias 'lake'), 'vinyals' "
                         "or 'maml'")
    if data is None:
        if root is None:
            raise ValueError("omniglot needs root= (the folder with images_background.zip and "
                             "images_evaluation.zip); pass download=True to fetch them there")
        data = tuple(Omniglot(root, background=b, image_size=image_size, download=download,
                              cache_dir=cache_dir) for b in (True, False))
    elif (size := data[0].images.shape[-1]) != image_size:
        raise ValueError(f"the Omniglot data passed in memory has {size}-pixel images but image_size is "
                         f"{image_size}; set image_size to {size} or pass data of {image_size} pixels")
    background, evaluation = data
    rotations = OMNIGLOT_ROTATIONS if rotate else None

    def sampler(images: Tensor, labels: Tensor, offset: int, classes: Tensor | None = None,
                rotations: tuple[int, ...] | None = None) -> EpisodeSampler:
        # uint8 storage, rotations precomputed once, float conversion only of the sampled examples:
        # the fastest sampler path (benchmarks/bench_sampler.py), same tasks as float storage.
        return EpisodeSampler(images, labels, *shapes[offset], classes=classes, rotations=rotations,
                              seed=seed + offset, batch_transform=uint8_to_unit,
                              precompute_augmentation=rotations is not None)

    info: dict[str, Any] = {"split": split, "image_size": image_size}
    if split in ("default", "lake"):
        train = sampler(background.images, background.labels, 0, rotations=rotations)
        eval_images = evaluation.images
        val = sampler(eval_images, evaluation.labels, 1)
        test = sampler(eval_images, evaluation.labels, 2)
        info.update(train_characters=background.num_characters, test_characters=evaluation.num_characters)
    else:
        both = Omniglot.combine(background, evaluation)
        images = both.images
        if split == "vinyals":
            folder = Path(split_dir) if split_dir is not None else (Path(root) / "splits" / "vinyals"
                                                                    if root is not None else None)
            if folder is None:
                raise ValueError("the vinyals split needs split_dir= (the folder with train.txt, val.txt, "
                                 "test.txt)")
            ids = {part: vinyals_classes(both, folder / f"{part}.txt") for part in ("train", "val", "test")}
            train = sampler(images, both.labels, 0, ids["train"], OMNIGLOT_ROTATIONS)
            val = sampler(images, both.labels, 1, ids["val"], OMNIGLOT_ROTATIONS)
            test = sampler(images, both.labels, 2, ids["test"], OMNIGLOT_ROTATIONS)
            info.update({f"{part}_classes": int(v.numel()) for part, v in ids.items()})
        else:
            train_ids, test_ids = maml_split(both.num_characters, train_characters, seed)
            train_pool = rotation_classes(train_ids) if rotate else train_ids
            train = sampler(images, both.labels, 0, train_pool, rotations)
            val = sampler(images, both.labels, 1, test_ids)
            test = sampler(images, both.labels, 2, test_ids)
            info.update(train_characters=int(train_ids.numel()), test_characters=int(test_ids.numel()))
    preprocessing = {"image_size": image_size, "channels": 1, "grayscale": True, "resize": "lanczos",
                     "invert": True, "scale": 1 / 255, "mean": [0.0], "std": [1.0]}
    return Benchmark("omniglot", "classification", train, val, test, (1, image_size, image_size),
                     preprocessing, {"name": "conv4", "options": {"hidden": 64}}, info)


def _miniimagenet(root: str | Path | None, shapes: Shapes, split: str, seed: int, image_size: int,
                  options: dict[str, Any]) -> Benchmark:
    from attnmeta.data.miniimagenet import MINIIMAGENET_MEAN, MINIIMAGENET_STD, MiniImageNet

    if split not in ("default", "ravi"):
        raise ValueError(f"unknown miniimagenet split {split!r}; choose 'default' (Ravi & Larochelle)")
    if root is None:
        raise ValueError("miniimagenet needs root= (CSV split files and an images/ folder, or the "
                         "mini-imagenet-cache-{split}.pkl/.npz files)")
    sources = []
    for offset, part in enumerate(("train", "val", "test")):
        data = MiniImageNet(root, part, image_size=image_size, **options)
        sampler = EpisodeSampler(data.images, data.labels, *shapes[offset], seed=seed + offset)
        sources.append(NormalizedSource(sampler, MINIIMAGENET_MEAN, MINIIMAGENET_STD))
    preprocessing = {"image_size": image_size, "channels": 3, "grayscale": False, "resize": "bilinear",
                     "invert": False, "scale": 1 / 255, "mean": list(MINIIMAGENET_MEAN),
                     "std": list(MINIIMAGENET_STD)}
    train, val, test = sources
    return Benchmark("miniimagenet", "classification", train, val, test, (3, image_size, image_size),
                     preprocessing,
                     {"name": "conv4", "options": {"hidden": 32}}, {"split": "ravi"})


def _imagefolder(root: str | Path | None, shapes: Shapes, split: str, seed: int, image_size: int,
                 options: dict[str, Any]) -> Benchmark:
    """Your own images (``attnmeta.data.imagefolder``): uint8 storage, float conversion of the sampled
    examples (as Omniglot); the class split from ``split_file`` or the seeded default split."""
    from attnmeta.data.imagefolder import ImageFolder, check_episode_shapes, class_split

    split_file, channels = options.pop("split_file", None), options.pop("channels", 3)
    if options:
        raise TypeError(f"unknown imagefolder options {sorted(options)}; accepted: split_file, channels")
    if split != "default":
        raise ValueError(f"imagefolder has no named splits (got split {split!r}); give the class split as "
                         "split_file= (a JSON file), or leave both out for the seeded default split")
    if root is None:
        raise ValueError("imagefolder needs root= (--root): a folder holding one subfolder of images per "
                         "class")
    data = ImageFolder(root, image_size=image_size, channels=channels)
    parts = class_split(data.classes, split_file, seed)
    ids = check_episode_shapes(data, parts, shapes)
    train, val, test = (EpisodeSampler(data.images, data.labels, *shapes[i], classes=ids[part], seed=seed + i,
                                       batch_transform=uint8_to_unit)
                        for i, part in enumerate(("train", "val", "test")))
    preprocessing = {"image_size": image_size, "channels": channels, "grayscale": channels == 1,
                     "resize": "bilinear", "invert": False, "scale": 1 / 255, "mean": [0.0] * channels,
                     "std": [1.0] * channels}
    info = {"split": "file" if split_file is not None else "default", "images": len(data),
            **{f"{part}_classes": len(names) for part, names in parts.items()}}
    return Benchmark("imagefolder", "classification", train, val, test, (channels, image_size, image_size),
                     preprocessing, {"name": "conv4", "options": {"hidden": 64}}, info)


def _clinc150(root: str | Path | None, shapes: Shapes, split: str, seed: int,
              options: dict[str, Any]) -> Benchmark:
    """CLINC150 intents: ``split`` ``"default"`` (alias ``"domain"``: 6 train / 1 val / 3 test domains) or
    ``"random"`` (90 / 15 / 45 random intents). The tokenizer and the lexical encoder's initial idf come from
    the meta-train utterances only; the checkpoint carries the tokenizer, so a predictor takes strings.
    Options: ``download``, ``max_words`` (24), ``pieces`` (8), ``buckets`` (4096), ``encoder``
    (``"lexical"`` or ``"attention"``), ``inputs`` (``"tokens"``, or ``"utf8"``: each text's UTF-8 bytes
    ``[max_bytes]`` for pretrained encoders, ``attnmeta.nn.sentence``; default backbone ``minilm``),
    ``max_bytes`` (utf8 width; default: the longest utterance, rounded up to 8)."""
    from attnmeta.data.text import clinc150_domain_split, load_clinc150, random_class_split
    from attnmeta.nn.text import TextTokenizer, corpus_idf

    download = options.pop("download", False)
    max_words, pieces = options.pop("max_words", 24), options.pop("pieces", 8)
    buckets, encoder = options.pop("buckets", 1 << 12), options.pop("encoder", "lexical")
    inputs, max_bytes = options.pop("inputs", "tokens"), options.pop("max_bytes", None)
    if options:
        raise TypeError(f"unknown clinc150 options {sorted(options)}; accepted: download, max_words, pieces, "
                        "buckets, encoder, inputs, max_bytes")
    if inputs not in ("tokens", "utf8"):
        raise ValueError(f"clinc150 inputs must be 'tokens' or 'utf8' (raw text bytes), got {inputs!r}")
    if root is None:
        raise ValueError("clinc150 needs root= (the folder with data_full.json and domains.json of "
                         "github.com/clinc/oos-eval); pass download=True to fetch them there")
    if split not in ("default", "domain", "random"):
        raise ValueError(f"unknown clinc150 split {split!r}; choose 'default' (alias 'domain') or 'random'")
    data = load_clinc150(root, download=download)
    parts = (clinc150_domain_split(data) if split != "random" else
             random_class_split(data.num_classes, {"train": 90, "val": 15, "test": 45}, seed=seed))
    if inputs == "utf8":
        return _clinc150_utf8(data, parts, shapes, split, seed, max_bytes)
    tokenizer = TextTokenizer.fit(data.subset(parts["train"]).texts, max_words=max_words, pieces=pieces,
                                  word_buckets=buckets, ngram_buckets=buckets)
    tokens = tokenizer.encode(data.texts)
    samplers = [EpisodeSampler(tokens, data.labels, *shapes[i], classes=parts[part], seed=seed + i)
                for i, part in enumerate(("train", "val", "test"))]
    backbone: dict[str, Any] = {"num_embeddings": tokenizer.num_embeddings, "encoder": encoder}
    if encoder == "lexical":
        train_rows = torch.isin(data.labels, torch.tensor(parts["train"]))
        idf = corpus_idf(tokens[train_rows], tokenizer.num_embeddings)
        backbone["idf"] = [round(v, 5) for v in idf.tolist()]
    preprocessing = {"text": True, "tokenizer": tokenizer.to_dict()}
    train, val, test = samplers
    return Benchmark("clinc150", "classification", train, val, test, (max_words, pieces), preprocessing,
                     {"name": "text", "options": backbone},
                     {"split": split, **{f"{k}_intents": len(v) for k, v in parts.items()}})


def _clinc150_utf8(data: Any, parts: dict[str, list[int]], shapes: Shapes, split: str, seed: int,
                   max_bytes: int | None) -> Benchmark:
    """CLINC150 with raw-text inputs: UTF-8 byte rows (the same rows, labels and episodes as the tokens)."""
    from attnmeta.nn.sentence import TEXT_INPUTS, encode_utf8, utf8_width

    width = utf8_width(data.texts) if max_bytes is None else int(max_bytes)
    rows = encode_utf8(data.texts, width)
    samplers = [EpisodeSampler(rows, data.labels, *shapes[i], classes=parts[part], seed=seed + i)
                for i, part in enumerate(("train", "val", "test"))]
    train, val, test = samplers
    return Benchmark("clinc150", "classification", train, val, test, (width,),
                     {"text": True, "text_inputs": TEXT_INPUTS, "max_bytes": width},
                     {"name": "minilm", "options": {}},
                     {"split": split, "inputs": TEXT_INPUTS,
                      **{f"{k}_intents": len(v) for k, v in parts.items()}})
