"""Fine-grained and texture few-shot benchmarks: ``cub``, ``aircraft``, ``flowers`` and ``dtd``.

Each is one official release with a fixed class split written down once in ``splits/<name>.json`` (packaged
with attnmeta; ``fine_grained_files.read_split``):

- ``cub``: CUB-200-2011 (``CUB_200_2011.tgz`` -> ``CUB_200_2011/images/<class folder>/*.jpg``, ``images.txt``,
  ``classes.txt``); the split of Chen et al. 2019 (A Closer Look at Few-shot Classification): of the 200
  classes in ``classes.txt`` order, 0-based index ``i % 2 == 0`` train (100), ``i % 4 == 1`` val (50),
  ``i % 4 == 3`` test (50).
- ``aircraft``: FGVC-Aircraft 2013b (``fgvc-aircraft-2013b.tar.gz`` -> ``fgvc-aircraft-2013b/data/``:
  ``images/*.jpg``, ``variants.txt``, ``images_variant_{train,val,test}.txt``); the 100 variants with
  Meta-Dataset's split, 70 / 15 / 15. As in Meta-Dataset, each image is cropped to its box of
  ``images_box.txt`` (``PIL.Image.crop`` of ``xmin ymin xmax ymax`` as written) when that file is there (it
  also removes the 20-pixel copyright banner); ``crop=False`` keeps whole images.
- ``flowers``: VGG Flowers-102 (``102flowers.tgz`` -> ``jpg/image_<i>.jpg``, plus ``imagelabels.mat``, read
  without SciPy); Meta-Dataset's split, 71 / 15 / 16.
- ``dtd``: Describable Textures r1.0.1 (``dtd-r1.0.1.tar.gz`` -> ``dtd/images/<class>/*.jpg``), 47 classes;
  Meta-Dataset's split, 33 / 7 / 7.

``root`` holds the extracted folder (or is that folder itself) or the archive, which is then extracted into
``root`` (``download.safe_extract_tar``: regular files and folders only, no absolute path, ``..`` or link).
``download=True`` fetches the missing archive (and Flowers' ``imagelabels.mat``) and verifies its checksum
(``RELEASES``); no checksum of the FGVC-Aircraft archive could be verified, so ``aircraft`` refuses to
download: put the archive in ``root`` yourself. Every image is decoded with Pillow, converted to RGB, resized
to ``image_size`` x ``image_size`` (bilinear, aspect ratio not kept; default 84) and kept as one uint8 tensor,
cached in ``<name>-<s>px.safetensors`` (``cache_dir``, default ``root``; tensors only, never pickle). A cache
that is damaged or does not hold what the files give is rebuilt with a warning; one made from other files
(sizes, times, crop) is rebuilt silently. Model inputs are ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from attnmeta.data.benchmarks import Benchmark, NormalizedSource
from attnmeta.data.download import download_file, safe_extract_tar
from attnmeta.data.fine_grained_files import (
    SPLIT_DIR,
    SPLITS,
    Entry,
    list_aircraft,
    list_cub,
    list_dtd,
    list_flowers,
    read_split,
)
from attnmeta.data.safe_io import MAX_MEMBER_BYTES, MissingDataError, decode_image, tar_read_errors
from attnmeta.data.tensor_cache import load_tensor_cache, save_tensor_cache
from attnmeta.errors import DataError, UserError
from attnmeta.tasks.sampler import EpisodeSampler

__all__ = ["FINE_GRAINED", "RELEASES", "Release", "FineGrained", "IMAGENET_MEAN", "IMAGENET_STD",
           "fine_grained_split", "fine_grained_benchmark"]

FINE_GRAINED = ("cub", "aircraft", "flowers", "dtd")
#: ImageNet per-channel (RGB) statistics of pixels in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CACHE_FORMAT = "attnmeta-fine-grained-v1"


@dataclass(frozen=True)
class Release:
    """An official release: ``folder`` (below ``root``) holds ``files``; ``archive`` from ``url`` extracts to
    it; ``checksums`` (``{"md5": ...}``; empty: none verified, no download); ``extras``: other files of
    ``folder`` fetched on their own, ``(name, url, checksums)``."""

    title: str
    folder: str
    files: tuple[str, ...]
    archive: str
    url: str
    checksums: dict[str, str]
    extras: tuple[tuple[str, str, dict[str, str]], ...] = ()
    paper: str = "Meta-Dataset (Triantafillou et al. 2020)"


_FLOWERS = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
RELEASES: dict[str, Release] = {
    "cub": Release("CUB-200-2011", "CUB_200_2011", ("classes.txt", "images.txt", "images"),
                   "CUB_200_2011.tgz",
                   "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                   {"md5": "97eceeb196236b17998738112f37df78"}, paper="Chen et al. 2019"),
    "aircraft": Release("FGVC-Aircraft 2013b", "fgvc-aircraft-2013b/data",
                        ("variants.txt", "images_variant_train.txt", "images_variant_val.txt",
                         "images_variant_test.txt", "images"), "fgvc-aircraft-2013b.tar.gz",
                        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                        {}),
    "flowers": Release("VGG Flowers-102", ".", ("jpg", "imagelabels.mat"), "102flowers.tgz",
                       _FLOWERS + "102flowers.tgz", {"md5": "52808999861908f626f3c1f4e79d11fa"},
                       (("imagelabels.mat", _FLOWERS + "imagelabels.mat",
                         {"md5": "e0620be6f572b9609742df49c70aed4d"}),)),
    "dtd": Release("DTD r1.0.1", "dtd", ("images",), "dtd-r1.0.1.tar.gz",
                   "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                   {"md5": "fff73e5086ae6bdbea199a49dfb8a4c1",
                    "sha256": "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205"}),
}


def _get(release: Release) -> str:
    sums = ", ".join(f"{k} {v}" for k, v in release.checksums.items())
    extras = "".join(f" and {name} from {url}" for name, url, _ in release.extras)
    return f"get {release.archive} from {release.url}{f' ({sums})' if sums else ''}{extras}"


def _find(release: Release, root: Path) -> Path | None:
    """The folder holding the release's files: ``root/<folder>``, or ``root`` (or a folder between) itself."""
    parts = Path(release.folder).parts
    for k in range(len(parts), -1, -1):
        folder = root.joinpath(*parts[len(parts) - k:])
        if all((folder / f).exists() for f in release.files):
            return folder
    return None


def _locate(name: str, root: Path, download: bool) -> Path:
    """Find the release's folder in ``root``, downloading and extracting the archive when needed."""
    release = RELEASES[name]
    found = _find(release, root)
    if found is not None:
        return found
    archive = root / release.archive
    if download:
        if not release.checksums:
            raise MissingDataError(
                f"{release.title} not found in {root}, and attnmeta knows no verified checksum of "
                f"{release.archive}, so --download (download=True) does not fetch it: download it yourself "
                f"from {release.url} into {root} (attnmeta then extracts it)")
        download_file(release.url, archive, md5=release.checksums.get("md5"),
                      sha256=release.checksums.get("sha256"))
        for extra, url, checksums in release.extras:
            download_file(url, root / extra, md5=checksums.get("md5"), sha256=checksums.get("sha256"))
    if archive.is_file():
        _extract(archive, root, release)
        found = _find(release, root)
        if found is not None:
            return found
    folder = root / release.folder
    lacking = next((folder / f for f in release.files if not (folder / f).exists()), folder)
    where = f"{lacking} is missing" if root.is_dir() and any(root.iterdir()) else f"nothing in {root}"
    raise MissingDataError(f"{release.title} not found ({where}): expected {', '.join(release.files)} in "
                           f"{folder}, or "
                           f"{archive}; {_get(release)} into {root}, or pass --download (download=True)")


def _extract(archive: Path, root: Path, release: Release) -> None:
    unreadable = (f"{archive} is not a readable .tar.gz archive (truncated or damaged); delete it and "
                  f"download it again (--download, or from {release.url})")
    with tar_read_errors(unreadable):
        try:
            safe_extract_tar(archive, root)
        except ValueError as error:  # a link, special file or path out of root (download.safe_extract_tar)
            raise DataError(str(error)) from None


class FineGrained:
    """The images of one fine-grained release (``name`` in ``FINE_GRAINED``) in memory.

    Attributes:
        images: uint8 ``[n, 3, image_size, image_size]``. labels: int64 ``[n]``, index into ``classes``.
        classes: the split file's class names, sorted. source: the folder read. cache_file: the cache used
            or written (``None``: none). split: class names per split.
    """

    def __init__(self, name: str, root: str | Path, *, image_size: int = 84, download: bool = False,
                 cache: bool = True, cache_dir: str | Path | None = None, crop: bool = True) -> None:
        if name not in RELEASES:
            raise ValueError(f"unknown fine-grained benchmark {name!r}; choose one of "
                             f"{', '.join(FINE_GRAINED)}")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or not 8 <= image_size <= 512:
            raise UserError(f"image_size must be an int in [8, 512] pixels, got {image_size!r}; 84 is usual")
        self.name, self.image_size, self.crop = name, image_size, bool(crop)
        release = RELEASES[name]
        root = Path(root)
        self.source = _locate(name, root, download)
        if name == "aircraft":  # Meta-Dataset's crop needs the boxes: without them, whole images
            self.crop = self.crop and (self.source / "images_box.txt").is_file()
        self.split = read_split(name)
        self.classes = sorted(c for part in SPLITS for c in self.split[part])
        entries = self._entries(release)
        self.files = [path for _, path, _ in entries]
        stamp = _stamp(entries, self.crop)
        folder = Path(cache_dir) if cache_dir is not None else root
        suffix = "" if name != "aircraft" or self.crop else "-uncropped"
        self.cache_file = folder / f"{name}-{image_size}px{suffix}.safetensors" if cache else None
        if self.cache_file is not None:
            loaded = load_tensor_cache(self.cache_file, _CACHE_FORMAT, stamp, name, str(self.source),
                                       self._cache_problem, ("images", "labels"))
            if loaded is not None:
                self.images = loaded[0]["images"]
                return
        fix = f"the file is damaged: extract it again from {release.archive} ({release.url})"
        images = np.empty((len(entries), 3, image_size, image_size), dtype=np.uint8)
        for i, (_, path, box) in enumerate(entries):
            pixels = decode_image(_read(path, release), f"image file {str(path)!r}", "RGB", image_size,
                                  Image.Resampling.BILINEAR, fix, box)
            images[i] = np.moveaxis(pixels, -1, 0)
        self.images = torch.from_numpy(images)
        if self.cache_file is not None and not save_tensor_cache(
                self.cache_file, {"images": self.images, "labels": self.labels},
                {"format": _CACHE_FORMAT, "source": stamp}, name):
            self.cache_file = None

    def _entries(self, release: Release) -> list[Entry]:
        """The release's images, checked against the split file (every class in it, no other class)."""
        fix = f"it is not the official {release.title} release: {_get(release)}"
        if self.name == "cub":
            found, entries = list_cub(self.source, fix)
        elif self.name == "aircraft":
            found, entries = list_aircraft(self.source, self.crop, fix)
        elif self.name == "flowers":
            found, entries = list_flowers(self.source, self.classes, fix)
        else:
            found, entries = list_dtd(self.source, fix)
        index = {c: i for i, c in enumerate(self.classes)}
        other = next((c for c in found if c not in index), None)
        if other is not None:
            raise DataError(f"class {other!r} of {self.source} is not in the packaged {self.name} split file "
                            f"({SPLIT_DIR / (self.name + '.json')}); {fix}")
        self.labels = torch.tensor([index[c] for c, _, _ in entries], dtype=torch.long)
        counts = self.counts()
        empty = next((c for c in self.classes if counts[index[c]] == 0), None)
        if empty is not None:
            part = next(p for p in SPLITS if empty in self.split[p])
            raise DataError(f"class {empty!r} ({part} split) has no images in {self.source}; the data is "
                            f"incomplete: {_get(release)}")
        return entries

    def _cache_problem(self, stored: dict[str, torch.Tensor], meta: dict[str, str]) -> str | None:
        """What is wrong with a loaded cache of these files (``None``: nothing)."""
        images, labels, size, n = stored["images"], stored["labels"], self.image_size, len(self.labels)
        if images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, size, size):
            return f"images are not uint8 [{n}, 3, {size}, {size}]"
        if labels.dtype != torch.int64 or not torch.equal(labels, self.labels):
            return "its labels are not those of the files"
        return None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __repr__(self) -> str:
        return f"FineGrained({self.name!r}, {str(self.source)!r}, {len(self)} images, {self.image_size}px)"

    def counts(self) -> list[int]:
        """Images per class, in ``classes`` order."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def _read(path: Path, release: Release) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MissingDataError(f"image file {str(path)!r} is missing; the release is incomplete: extract "
                               f"{release.archive} again ({release.url})") from None
    if size > MAX_MEMBER_BYTES:
        raise DataError(f"image file {str(path)!r} has {size} bytes, more than the {MAX_MEMBER_BYTES} "
                        f"accepted for one image; it is not part of {release.title}")
    return path.read_bytes()


def _stamp(entries: list[Entry], crop: bool) -> str:
    """Digest of every image file's path, size, time and crop box: a cache is valid for these files only."""
    digest = hashlib.sha256(f"crop={crop}".encode())
    for cls, path, box in entries:
        try:
            stat = path.stat()
            state = f"{stat.st_size}:{stat.st_mtime_ns}"
        except FileNotFoundError:
            state = "missing"
        digest.update(f"\n{cls}|{path.name}|{state}|{box}".encode())
    return digest.hexdigest()


def fine_grained_split(name: str) -> dict[str, list[str]]:
    """Class names per split (``train``, ``val``, ``test``) of benchmark ``name`` (its packaged split file).
    """
    if name not in RELEASES:
        raise ValueError(f"unknown fine-grained benchmark {name!r}; choose one of {', '.join(FINE_GRAINED)}")
    return read_split(name)


def fine_grained_benchmark(name: str, root: str | Path | None, shapes: tuple[tuple[int, int, int], ...],
                           split: str, seed: int, image_size: int, options: dict[str, Any]) -> Benchmark:
    """``make_benchmark("cub" | "aircraft" | "flowers" | "dtd", ...)``: normalized episodes of the fixed
    split.

    ``shapes``: ``(ways, shots, queries)`` of the train, val and test sources. Options: ``download``,
    ``cache`` (default True), ``cache_dir``, ``data`` (a loaded ``FineGrained``, reused as is);
    ``aircraft`` also ``crop`` (default True: crop to the bounding boxes)."""
    release = RELEASES[name]
    data = options.pop("data", None)
    download, cache = options.pop("download", False), options.pop("cache", True)
    cache_dir = options.pop("cache_dir", None)
    crop = options.pop("crop", True) if name == "aircraft" else True
    if options:
        extra = ", crop" if name == "aircraft" else ""
        raise TypeError(f"unknown {name} options {sorted(options)}; accepted: download, cache, cache_dir, "
                        f"data{extra}")
    if split != "default":
        raise ValueError(f"unknown {name} split {split!r}; {name} has only 'default' (the split of "
                         f"{release.paper}, splits/{name}.json)")
    if data is None:
        if root is None:
            raise ValueError(f"{name} needs root= (--root): the folder with {release.folder}/ or "
                             f"{release.archive} ({release.title}, {release.url}); pass download=True "
                             "(--download) to fetch it")
        data = FineGrained(name, root, image_size=image_size, download=bool(download), cache=bool(cache),
                           cache_dir=cache_dir, crop=bool(crop))
    index = {c: i for i, c in enumerate(data.classes)}
    counts = data.counts()
    sources = []
    for offset, part in enumerate(SPLITS):
        ways, shots, queries = shapes[offset]
        names = data.split[part]
        if len(names) < ways:
            raise UserError(f"the {name} {part} split has {len(names)} classes, fewer than ways = {ways}; "
                            "lower --ways")
        short = next((c for c in names if counts[index[c]] < shots + queries), None)
        if short is not None:
            raise DataError(f"class {short!r} ({part} split) has {counts[index[short]]} images in "
                            f"{data.source}, fewer than shots + queries = {shots + queries}; lower "
                            "--shots/--queries")
        ids = torch.tensor(sorted(index[c] for c in names))
        sampler = EpisodeSampler(data.images, data.labels, ways, shots, queries, classes=ids,
                                 seed=seed + offset)
        sources.append(NormalizedSource(sampler, IMAGENET_MEAN, IMAGENET_STD))
    size = data.image_size
    preprocessing = {"image_size": size, "channels": 3, "grayscale": False, "resize": "bilinear",
                     "invert": False, "scale": 1 / 255, "mean": list(IMAGENET_MEAN),
                     "std": list(IMAGENET_STD)}
    info = {"split": "chen" if name == "cub" else "meta-dataset", "images": len(data),
            "source": str(data.source),
            "crop": data.crop if name == "aircraft" else None,
            **{f"{part}_classes": len(data.split[part]) for part in SPLITS}}
    train, val, test = sources
    return Benchmark(name, "classification", train, val, test, (3, size, size), preprocessing,
                     {"name": "conv4", "options": {"hidden": 64}}, info)
