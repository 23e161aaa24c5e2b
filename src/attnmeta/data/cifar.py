"""CIFAR-FS and FC100: few-shot benchmarks made of CIFAR-100's 100 classes of 32x32 colour images.

- ``cifar-fs`` (Bertinetto et al. 2019, R2D2): 64 train / 16 val / 20 test fine classes, the class lists of
  the R2D2 repository (github.com/bertinetto/r2d2; as also shipped by torchmeta), ``CIFAR_FS_SPLIT``.
- ``fc100`` (Oreshkin et al. 2018, TADAM): split by superclass so that train, val and test share no
  superclass: 12 superclasses (60 classes) train, 4 (20) val, 4 (20) test, ``FC100_SUPERCLASSES``.

Data: CIFAR-100's *binary* release ``cifar-100-binary.tar.gz`` (``CIFAR100_URL``, md5 ``CIFAR100_MD5``) in
``root``, either extracted (``root/cifar-100-binary/train.bin`` and ``test.bin``; ``root`` may also be that
folder itself) or as the archive, which is read in memory without extracting anything (only its
``train.bin`` and ``test.bin`` regular-file members are read). The pickled Python release is never read.
Each record is 3074 bytes: coarse label, fine label, then 3072 pixels as R, G and B planes of 32x32 (row
major). Both files are pooled (600 images per class); fine label ids follow CIFAR-100's alphabetical class
order (``CIFAR100_FINE``); each record's coarse label is checked against its class's superclass. The label
name files of the release are not needed.

``download=True`` downloads the archive into ``root`` when neither the folder nor the archive is there, and
verifies the md5 of the archive (downloaded or already present). A local archive without ``download`` is
read as it is (its records are checked, not its checksum).

Decoded images are uint8 ``[n, 3, s, s]`` in memory (resized from 32 px with antialiased bilinear
interpolation when ``image_size`` is not 32, as miniImageNet). When reading the archive or resizing, they
are cached in ``cifar100-<s>px.safetensors`` (``cache_dir``, default ``root``; tensors only, no pickle); a
cache that is unreadable or does not match what was written is rebuilt (with a warning), one made from
another source file is rebuilt silently, and a folder that cannot be written is skipped with a warning.
Model inputs are ``(x / 255 - CIFAR100_MEAN) / CIFAR100_STD`` per channel (MetaOptNet's statistics).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnmeta.data.benchmarks import Benchmark, NormalizedSource
from attnmeta.data.download import download_file
from attnmeta.data.safe_io import MissingDataError, tar_read_errors
from attnmeta.data.tensor_cache import load_tensor_cache, save_tensor_cache
from attnmeta.errors import DataError, UserError
from attnmeta.tasks.sampler import EpisodeSampler

__all__ = ["CIFAR100", "CIFAR100_URL", "CIFAR100_MD5", "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR100_COARSE",
           "CIFAR100_FINE", "FINE_TO_COARSE", "CIFAR_FS_SPLIT", "FC100_SUPERCLASSES", "RECORD_BYTES",
           "decode_records", "cifar_split", "cifar_benchmark"]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
CIFAR100_MD5 = "03b5dce01913d631647c71ecec9e9cb8"
ARCHIVE = "cifar-100-binary.tar.gz"
FOLDER = "cifar-100-binary"
FILES = ("train.bin", "test.bin")
#: Bytes of one record: coarse label, fine label, 3 x 32 x 32 pixels.
RECORD_BYTES = 2 + 3 * 32 * 32
#: Largest archive member read into memory (train.bin has 50,000 records, 153.7 MB).
MAX_MEMBER_BYTES = 256 << 20
#: Per-channel (RGB) mean and standard deviation of pixels in [0, 1] (MetaOptNet's, for CIFAR-FS / FC100).
CIFAR100_MEAN = (129.37731888 / 255.0, 124.10583864 / 255.0, 112.47758569 / 255.0)
CIFAR100_STD = (68.20947949 / 255.0, 65.43124043 / 255.0, 70.45866994 / 255.0)

#: The 20 superclasses in CIFAR-100's coarse label order, each with its 5 fine classes.
SUPERCLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("aquatic_mammals", ("beaver", "dolphin", "otter", "seal", "whale")),
    ("fish", ("aquarium_fish", "flatfish", "ray", "shark", "trout")),
    ("flowers", ("orchid", "poppy", "rose", "sunflower", "tulip")),
    ("food_containers", ("bottle", "bowl", "can", "cup", "plate")),
    ("fruit_and_vegetables", ("apple", "mushroom", "orange", "pear", "sweet_pepper")),
    ("household_electrical_devices", ("clock", "keyboard", "lamp", "telephone", "television")),
    ("household_furniture", ("bed", "chair", "couch", "table", "wardrobe")),
    ("insects", ("bee", "beetle", "butterfly", "caterpillar", "cockroach")),
    ("large_carnivores", ("bear", "leopard", "lion", "tiger", "wolf")),
    ("large_man-made_outdoor_things", ("bridge", "castle", "house", "road", "skyscraper")),
    ("large_natural_outdoor_scenes", ("cloud", "forest", "mountain", "plain", "sea")),
    ("large_omnivores_and_herbivores", ("camel", "cattle", "chimpanzee", "elephant", "kangaroo")),
    ("medium_mammals", ("fox", "porcupine", "possum", "raccoon", "skunk")),
    ("non-insect_invertebrates", ("crab", "lobster", "snail", "spider", "worm")),
    ("people", ("baby", "boy", "girl", "man", "woman")),
    ("reptiles", ("crocodile", "dinosaur", "lizard", "snake", "turtle")),
    ("small_mammals", ("hamster", "mouse", "rabbit", "shrew", "squirrel")),
    ("trees", ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree")),
    ("vehicles_1", ("bicycle", "bus", "motorcycle", "pickup_truck", "train")),
    ("vehicles_2", ("lawn_mower", "rocket", "streetcar", "tank", "tractor")),
)
CIFAR100_COARSE: tuple[str, ...] = tuple(name for name, _ in SUPERCLASSES)
#: Fine class names in CIFAR-100's label order (alphabetical).
CIFAR100_FINE: tuple[str, ...] = tuple(sorted(fine for _, members in SUPERCLASSES for fine in members))
#: Coarse label of each fine label.
FINE_TO_COARSE: tuple[int, ...] = tuple(
    next(c for c, (_, members) in enumerate(SUPERCLASSES) if fine in members) for fine in CIFAR100_FINE)

#: CIFAR-FS classes per split (Bertinetto et al. 2019; the R2D2 repository's split files).
CIFAR_FS_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip", "bottle",
              "bowl", "can", "cup", "plate", "apple", "mushroom", "orange", "pear", "clock", "keyboard",
              "chair", "couch", "bee", "caterpillar", "cockroach", "bear", "lion", "tiger", "wolf", "bridge",
              "castle", "house", "road", "skyscraper", "cloud", "forest", "mountain", "elephant", "kangaroo",
              "porcupine", "possum", "raccoon", "skunk", "lobster", "spider", "boy", "girl", "dinosaur",
              "lizard", "snake", "turtle", "hamster", "mouse", "rabbit", "shrew", "squirrel", "oak_tree",
              "palm_tree", "pine_tree", "willow_tree", "bus", "train", "lawn_mower", "streetcar", "tank"),
    "val": ("beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea",
            "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor"),
    "test": ("whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard",
             "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle", "pickup_truck",
             "rocket"),
}
#: FC100 superclasses (coarse label ids) per split (Oreshkin et al. 2018, TADAM).
FC100_SUPERCLASSES: dict[str, tuple[int, ...]] = {
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19), "val": (8, 11, 13, 16), "test": (0, 7, 12, 14)}
SPLITS = ("train", "val", "test")
_GET = f"get {ARCHIVE} from {CIFAR100_URL} (md5 {CIFAR100_MD5})"
_REDOWNLOAD = f"delete it and download the archive again (--download, or from {CIFAR100_URL})"
_CACHE_FORMAT = "attnmeta-cifar100-v1"
_CACHE_KEYS = ("images", "fine", "coarse")


def decode_records(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Records of a CIFAR-100 ``.bin`` file -> uint8 images ``[n, 3, 32, 32]``, fine ``[n]``, coarse ``[n]``.

    A size that is not a positive multiple of ``RECORD_BYTES``, a label out of range or a coarse label that
    is not the fine class's superclass raises ``DataError`` naming ``where``."""
    if not raw or len(raw) % RECORD_BYTES:
        raise DataError(f"{where} has {len(raw)} bytes, not a positive multiple of the {RECORD_BYTES}-byte "
                        f"CIFAR-100 record (the file is truncated or corrupt); {_REDOWNLOAD}")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    coarse, fine = records[:, 0], records[:, 1]
    for kind, labels, count in (("coarse", coarse, len(CIFAR100_COARSE)), ("fine", fine, len(CIFAR100_FINE))):
        bad = np.flatnonzero(labels >= count)
        if bad.size:
            raise DataError(f"{where}: record {int(bad[0])} has {kind} label {int(labels[bad[0]])}, outside "
                            f"0..{count - 1} (not CIFAR-100's binary release, or corrupt); {_REDOWNLOAD}")
    bad = np.flatnonzero(np.asarray(FINE_TO_COARSE, dtype=np.uint8)[fine] != coarse)
    if bad.size:
        i, f = int(bad[0]), int(fine[bad[0]])
        raise DataError(f"{where}: record {i} has coarse label {int(coarse[i])}, but its fine class {f} "
                        f"({CIFAR100_FINE[f]}) belongs to superclass {FINE_TO_COARSE[f]} "
                        f"({CIFAR100_COARSE[FINE_TO_COARSE[f]]}); the file is corrupt: {_REDOWNLOAD}")
    return records[:, 2:].reshape(-1, 3, 32, 32), fine, coarse


def _read_archive(archive: Path) -> list[bytes]:
    """``train.bin`` and ``test.bin`` of the archive, read in memory (nothing is extracted)."""
    wanted = {f"{FOLDER}/{name}": name for name in FILES}
    found: dict[str, bytes] = {}
    unreadable = f"{archive} is not a readable .tar.gz archive (truncated or damaged); {_REDOWNLOAD}"
    with tar_read_errors(unreadable), tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = wanted.get(member.name.removeprefix("./"))
            if name is None or name in found:
                continue
            if not member.isfile():
                raise DataError(f"{archive}: member {member.name} is a link or not a regular file; the "
                                f"archive is not the official one: {_REDOWNLOAD}")
            if member.size > MAX_MEMBER_BYTES:
                raise DataError(f"{archive}: member {member.name} declares {member.size} bytes, more "
                                f"than the {MAX_MEMBER_BYTES} accepted; {_REDOWNLOAD}")
            handle = tar.extractfile(member)
            assert handle is not None, "regular members have contents"
            found[name] = handle.read()
    missing = [f"{FOLDER}/{name}" for name in FILES if name not in found]
    if missing:
        raise DataError(f"{archive} has no member {missing[0]}; it is not CIFAR-100's binary release: "
                        f"{_REDOWNLOAD}")
    return [found[name] for name in FILES]


def _resize(images: Tensor, size: int, chunk: int = 2048) -> Tensor:
    """uint8 ``[n, c, h, w]`` -> uint8 ``[n, c, size, size]`` (antialiased bilinear, as miniImageNet)."""
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = torch.nn.functional.interpolate(images[start:start + chunk].float(), size=(size, size),
                                               mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = part.round().clamp(0, 255).to(torch.uint8)
    return out


class CIFAR100:
    """CIFAR-100's 60,000 images (``train.bin`` records, then ``test.bin``'s) as in-memory tensors.

    Args:
        root: folder holding ``cifar-100-binary/`` or ``cifar-100-binary.tar.gz`` (or the
            ``cifar-100-binary`` folder itself).
        image_size: side of the output images (32 is standard).
        download: fetch the archive into ``root`` if missing; verify its md5 (module docstring).
        cache: cache decoded images (read from the archive or resized) as a safetensors file.
        cache_dir: folder of the cache (default ``root``).

    Attributes:
        images: uint8 ``[n, 3, image_size, image_size]``. fine_labels, coarse_labels: int64 ``[n]``.
        source: the folder or archive read. cache_file: the cache used or written (``None``: none).
    """

    def __init__(self, root: str | Path, *, image_size: int = 32, download: bool = False, cache: bool = True,
                 cache_dir: str | Path | None = None) -> None:
        if not isinstance(image_size, int) or isinstance(image_size, bool) or not 8 <= image_size <= 256:
            raise UserError(f"image_size must be an int in [8, 256] pixels, got {image_size!r}; 32 is "
                            "standard")
        root = Path(root)
        self.image_size = image_size
        folder = root if all((root / f).is_file() for f in FILES) else root / FOLDER
        archive = root / ARCHIVE
        have_folder = all((folder / f).is_file() for f in FILES)
        if download and not have_folder:
            download_file(CIFAR100_URL, archive, md5=CIFAR100_MD5)
        if have_folder:
            self.source = folder
            stamps = [folder / f for f in FILES]
        elif archive.is_file():
            self.source = archive
            stamps = [archive]
        else:
            lacking = next((folder / f for f in FILES if not (folder / f).is_file()), folder)
            where = f"{lacking} is missing" if folder.is_dir() else f"nothing in {root}"
            raise MissingDataError(f"CIFAR-100 binary release not found ({where}): expected {root / FOLDER}"
                                   f"/train.bin and test.bin, or {archive}; {_GET} into {root}, or pass "
                                   "--download (download=True)")
        stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in stamps)
        use_cache = cache and (self.source == archive or image_size != 32)
        cache_folder = Path(cache_dir) if cache_dir is not None else root
        self.cache_file = cache_folder / f"cifar100-{image_size}px.safetensors" if use_cache else None
        if self.cache_file is not None:
            loaded = load_tensor_cache(self.cache_file, _CACHE_FORMAT, stamp, "CIFAR-100", str(self.source),
                                       lambda stored, _: _cache_problem(stored, image_size), _CACHE_KEYS)
            if loaded is not None:
                stored = loaded[0]
                self.images = stored["images"]
                self.fine_labels, self.coarse_labels = stored["fine"].long(), stored["coarse"].long()
                return
        if self.source == archive:
            raws, names = _read_archive(archive), [f"{archive} (member {FOLDER}/{f})" for f in FILES]
        else:
            raws, names = [(folder / f).read_bytes() for f in FILES], [str(folder / f) for f in FILES]
        parts = [decode_records(raw, name) for raw, name in zip(raws, names)]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        self.images = images if image_size == 32 else _resize(images, image_size)
        self.fine_labels = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64))
        self.coarse_labels = torch.from_numpy(np.concatenate([p[2] for p in parts]).astype(np.int64))
        if self.cache_file is not None:
            tensors = {"images": self.images, "fine": self.fine_labels.to(torch.uint8),
                       "coarse": self.coarse_labels.to(torch.uint8)}
            if not save_tensor_cache(self.cache_file, tensors, {"format": _CACHE_FORMAT, "source": stamp},
                                     "CIFAR-100"):
                self.cache_file = None

    def __len__(self) -> int:
        return int(self.fine_labels.numel())

    def __repr__(self) -> str:
        return f"CIFAR100({str(self.source)!r}, {len(self)} images, {self.image_size}px)"

    def counts(self) -> list[int]:
        """Images per fine class, in ``CIFAR100_FINE`` order."""
        return torch.bincount(self.fine_labels, minlength=len(CIFAR100_FINE)).tolist()


def _cache_problem(stored: dict[str, Tensor], size: int) -> str | None:
    """What is wrong with a loaded cache (``None`` when it is what ``CIFAR100`` writes)."""
    images, fine, coarse = stored["images"], stored["fine"], stored["coarse"]
    n = fine.shape[0] if fine.ndim == 1 else -1
    if images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, size, size) or n < 1:
        return f"images are not uint8 [n, 3, {size}, {size}] with one fine label each"
    if fine.dtype != torch.uint8 or coarse.dtype != torch.uint8 or tuple(coarse.shape) != (n,):
        return "labels are not uint8 [n]"
    if int(fine.max()) >= len(CIFAR100_FINE) or not torch.equal(
            torch.tensor(FINE_TO_COARSE, dtype=torch.uint8)[fine.long()], coarse):
        return "labels are not CIFAR-100 fine and coarse labels"
    return None


def cifar_split(name: str) -> dict[str, list[int]]:
    """Fine class ids (``CIFAR100_FINE`` indices, sorted) of the train / val / test split of ``"cifar-fs"``
    or ``"fc100"``."""
    if name == "cifar-fs":
        return {part: sorted(CIFAR100_FINE.index(c) for c in CIFAR_FS_SPLIT[part]) for part in SPLITS}
    if name == "fc100":
        return {part: [f for f, c in enumerate(FINE_TO_COARSE) if c in FC100_SUPERCLASSES[part]]
                for part in SPLITS}
    raise ValueError(f"unknown CIFAR-100 benchmark {name!r}; choose 'cifar-fs' or 'fc100'")


def cifar_benchmark(name: str, root: str | Path | None, shapes: tuple[tuple[int, int, int], ...], split: str,
                    seed: int, image_size: int, options: dict[str, Any]) -> Benchmark:
    """``make_benchmark("cifar-fs" | "fc100", ...)``: normalized episodes of the fixed class split.

    ``shapes``: ``(ways, shots, queries)`` of the train, val and test sources. Options: ``download``,
    ``cache`` (default True), ``cache_dir``, ``data`` (a loaded ``CIFAR100``, reused as is)."""
    data = options.pop("data", None)
    download, cache = options.pop("download", False), options.pop("cache", True)
    cache_dir = options.pop("cache_dir", None)
    if options:
        raise TypeError(f"unknown {name} options {sorted(options)}; accepted: download, cache, cache_dir, "
                        "data")
    paper = "Bertinetto et al." if name == "cifar-fs" else "Oreshkin et al."
    if split != "default":
        raise ValueError(f"unknown {name} split {split!r}; {name} has only 'default' (the split of {paper})")
    if data is None:
        if root is None:
            raise ValueError(f"{name} needs root= (--root): the folder with {FOLDER}/ or {ARCHIVE} "
                             f"(CIFAR-100's binary release, {CIFAR100_URL}); pass download=True (--download) "
                             "to fetch it")
        data = CIFAR100(root, image_size=image_size, download=bool(download), cache=bool(cache),
                        cache_dir=cache_dir)
    parts = cifar_split(name)
    counts = data.counts()
    sources = []
    for offset, part in enumerate(SPLITS):
        ways, shots, queries = shapes[offset]
        if len(parts[part]) < ways:
            raise UserError(f"the {name} {part} split has {len(parts[part])} classes, fewer than ways = "
                            f"{ways}; lower --ways")
        short = next((c for c in parts[part] if counts[c] < shots + queries), None)
        if short is not None:
            raise DataError(f"class {CIFAR100_FINE[short]!r} ({part} split) has {counts[short]} images in "
                            f"{data.source}, fewer than shots + queries = {shots + queries}; lower "
                            f"--shots/--queries, or use the complete release ({_GET})")
        sampler = EpisodeSampler(data.images, data.fine_labels, ways, shots, queries,
                                 classes=torch.tensor(parts[part]), seed=seed + offset)
        sources.append(NormalizedSource(sampler, CIFAR100_MEAN, CIFAR100_STD))
    preprocessing = {"image_size": image_size, "channels": 3, "grayscale": False, "resize": "bilinear",
                     "invert": False, "scale": 1 / 255, "mean": list(CIFAR100_MEAN),
                     "std": list(CIFAR100_STD)}
    info = {"split": "bertinetto" if name == "cifar-fs" else "oreshkin", "images": len(data),
            "source": str(data.source), **{f"{part}_classes": len(ids) for part, ids in parts.items()}}
    train, val, test = sources
    return Benchmark(name, "classification", train, val, test, (3, image_size, image_size), preprocessing,
                     {"name": "conv4", "options": {"hidden": 64}}, info)
