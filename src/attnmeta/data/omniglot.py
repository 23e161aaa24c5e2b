"""Omniglot (Lake et al. 2015): 1,623 handwritten characters of 50 alphabets, 20 drawings each.

Reads the official archives ``images_background.zip`` (30 alphabets, 964 characters) and
``images_evaluation.zip`` (20 alphabets, 659 characters), or their extracted folders, with the layout
``images_<set>/<Alphabet>/characterNN/XXXX_YY.png``. The 105x105 1-bit drawings are decoded once, resized
with an antialiasing (Lanczos) filter and stored as one uint8 tensor in a cache file, so later runs load in
well under a second.

Archives are read in memory, never extracted. Every file inside ``images_<set>/`` must follow that layout
(anything else, e.g. ``images_background/../../x.png``, is refused with a ``DataError`` naming the member);
directories, hidden files (``.DS_Store``) and entries outside ``images_<set>/`` (``__MACOSX/``, a readme) are
ignored. Damaged archives, members and PNGs and unreadable caches raise one-line ``DataError``s naming the
file (see ``attnmeta.data.safe_io``). ``download=True`` verifies the official md5 and sha256 before moving
a download into place; archives already on disk are not checked (re-packed copies are fine).

Pixel convention: **ink = 255, background = 0** (the official PNGs are black ink on white; we invert them,
as Prototypical Networks' code does, so that zero padding and max-pooling treat the background as empty).
Pass ``invert=False`` for the raw convention (ink = 0). Models see ``images.float() / 255``.

Class splits:

- Lake's split: ``Omniglot(root, background=True)`` / ``background=False``.
- Vinyals et al. (2016): 1,028 / 172 / 423 characters, each of the four 90-degree rotations its own class,
  read from split files with lines ``Alphabet/characterNN/rotDDD`` (``vinyals_classes``). attnmeta does not
  ship these files: get ``train.txt``/``val.txt``/``test.txt`` from the Prototypical Networks repository
  (``github.com/jakesnell/prototypical-networks``, ``data/omniglot/splits/vinyals``). They index
  characters of both archives, so load ``Omniglot.combined(root)``.
- MAML (Finn et al. 2017): 1,200 training characters drawn at random, the remaining 423 for testing
  (``maml_split``).

Rotation augmentation as new classes follows ``attnmeta.tasks.EpisodeSampler``: augmented class id
``= character_id * len(rotations) + rotation_index`` with ``OMNIGLOT_ROTATIONS = (0, 90, 180, 270)``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from attnmeta.data.safe_io import (
    MissingDataError,
    decode_image,
    download_verified,
    load_cache,
    open_zip,
    read_member,
    read_text,
    save_cache,
)
from attnmeta.errors import DataError

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip"
#: Official md5 checksums of the archives in the Omniglot repository (as listed by torchvision).
OMNIGLOT_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
#: Official sha256 of the same archives (as listed by TensorFlow Datasets, ``url_checksums/omniglot.txt``).
#: Both digests are checked on every download; local archives are not checked (re-packed copies are fine).
OMNIGLOT_SHA256 = {
    "images_background": "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    "images_evaluation": "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
}
#: Rotations (degrees, counter-clockwise) that make new classes in the Vinyals / MAML protocols.
OMNIGLOT_ROTATIONS = (0, 90, 180, 270)
_CACHE_VERSION = 1
#: A drawing's path below ``images_<set>/``: ``<Alphabet>/characterNN/XXXX_YY.png``.
_DRAWING = re.compile(r"[^/\\.\x00-\x1f][^/\\\x00-\x1f]*/character\d+/\d{4}_\d{2}\.png")
_JUNK = ("Thumbs.db", "desktop.ini")
_ARCHIVE_FIX = ("the archive is damaged: delete it and download it again (download=True), or copy the "
                "official archive there")


def default_cache_dir() -> Path:
    """``$ATTNMETA_CACHE`` if set, else ``~/.cache/attnmeta``."""
    return Path(os.environ.get("ATTNMETA_CACHE", Path.home() / ".cache" / "attnmeta"))


class Omniglot:
    """One Omniglot archive (or both, see ``combined``) as in-memory tensors.

    Args:
        root: folder holding ``images_background.zip`` / ``images_evaluation.zip`` or the extracted
            ``images_background/`` / ``images_evaluation/`` folders.
        background: ``True`` for the background set (training alphabets of Lake's split), ``False`` for
            the evaluation set.
        image_size: side of the square output images in pixels (28 is the standard benchmark).
        download: fetch the missing archive from the official repository; its md5 and sha256 are verified
            before it is moved into place (a local archive is never checked against them).
        cache_dir: where decoded tensors are cached (default ``default_cache_dir()/omniglot``).
        invert: ``True`` (default) stores ink as 255 and background as 0; ``False`` keeps the raw PNG values.

    Attributes:
        images: uint8 ``[n, 1, image_size, image_size]``.
        labels: int64 ``[n]``, the character id (index into ``characters``).
        characters: ``"Alphabet/characterNN"`` per character id, sorted.
        alphabets: alphabet names, sorted.
        character_alphabet: int64 ``[n_characters]``, index into ``alphabets`` of each character.
    """

    images: Tensor
    labels: Tensor
    characters: list[str]
    alphabets: list[str]
    character_alphabet: Tensor
    source: Path | None  # None for a combined or pre-loaded set
    cache_file: Path | None

    def __init__(self, root: str | Path, background: bool = True, image_size: int = 28,
                 download: bool = False, cache_dir: str | Path | None = None, invert: bool = True) -> None:
        if not isinstance(background, bool):
            raise TypeError(f"background must be True or False, got {background!r}; "
                            "use Omniglot.combined(root) for both sets")
        _check_image_size(image_size)
        set_name = "images_background" if background else "images_evaluation"
        source = _find_source(Path(root), set_name, download)
        cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "omniglot"
        pixels = "inv" if invert else "raw"
        cache_file = cache_root / f"{set_name}_{image_size}px_{pixels}_{_identity(source)}.pt"
        if cache_file.exists():
            stored = load_cache(cache_file, lambda stored: _cache_problem(stored, image_size))
        else:
            stored = _decode(source, set_name, image_size, invert)
            save_cache(stored, cache_file)
        self._set(stored["images"], stored["labels"], list(stored["characters"]), image_size, invert,
                  [set_name])
        self.source = source
        self.cache_file = cache_file

    def _set(self, images: Tensor, labels: Tensor, characters: list[str], image_size: int, invert: bool,
             sets: list[str]) -> None:
        self.images, self.labels, self.characters = images, labels, characters
        self.alphabets = sorted({c.split("/")[0] for c in characters})
        index = {a: i for i, a in enumerate(self.alphabets)}
        self.character_alphabet = torch.tensor([index[c.split("/")[0]] for c in characters], dtype=torch.long)
        self.image_size, self.invert, self.sets = image_size, invert, sets

    @classmethod
    def combined(cls, root: str | Path, image_size: int = 28, download: bool = False,
                 cache_dir: str | Path | None = None, invert: bool = True) -> Omniglot:
        """Both archives (32,460 images, 1,623 characters): background characters first, then evaluation.

        Needed for the Vinyals and MAML splits, which mix alphabets of both sets.
        """
        return cls.combine(*(cls(root, background=b, image_size=image_size, download=download,
                                 cache_dir=cache_dir, invert=invert) for b in (True, False)))

    @classmethod
    def combine(cls, background: Omniglot, evaluation: Omniglot) -> Omniglot:
        """Concatenate two loaded sets; the second one's character ids follow the first one's."""
        same_kind = background.images.shape[1:] == evaluation.images.shape[1:]
        if not same_kind or background.invert != evaluation.invert:
            raise ValueError("cannot combine Omniglot sets of different image sizes or pixel conventions")
        offset = background.num_characters
        return cls.from_tensors(torch.cat([background.images, evaluation.images]),
                                torch.cat([background.labels, evaluation.labels + offset]),
                                background.characters + evaluation.characters, background.invert,
                                background.sets + evaluation.sets)

    @classmethod
    def from_tensors(cls, images: Tensor, labels: Tensor, characters: Sequence[str], invert: bool = True,
                     sets: Sequence[str] = ("tensors",)) -> Omniglot:
        """Wrap decoded uint8 images ``[n, 1, s, s]`` and character ids ``[n]`` (e.g. from a cache file)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be uint8 [n, 1, s, s], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1] or int(labels.max()) >= len(characters):
            raise ValueError("labels must be [n] character ids, each below len(characters)")
        out = cls.__new__(cls)
        out._set(images, labels.long(), list(characters), int(images.shape[-1]), invert, list(sets))
        out.source, out.cache_file = None, None
        return out

    @property
    def num_characters(self) -> int:
        return len(self.characters)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __repr__(self) -> str:
        return (f"Omniglot({'+'.join(self.sets)}, {len(self)} images, {self.num_characters} characters, "
                f"{len(self.alphabets)} alphabets, {self.image_size}px)")

    def float_images(self) -> Tensor:
        """Images as float32 in [0, 1], ``[n, 1, s, s]`` (the model input)."""
        return self.images.float().div_(255.0)

    def character_ids(self, names: Sequence[str]) -> Tensor:
        """Character ids of ``"Alphabet/characterNN"`` names (``ValueError`` for an unknown name)."""
        index = {c: i for i, c in enumerate(self.characters)}
        missing = [n for n in names if n not in index]
        if missing:
            raise ValueError(f"unknown Omniglot characters {missing[:3]} (of {len(missing)}); this data "
                             f"holds {'+'.join(self.sets)}: load Omniglot.combined(root) for splits that mix "
                             "both sets")
        return torch.tensor([index[n] for n in names], dtype=torch.long)


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not 4 <= image_size <= 105:
        raise ValueError(f"image_size must be an int in [4, 105] pixels, got {image_size!r}; 28 is standard")


def _find_source(root: Path, set_name: str, download: bool) -> Path:
    folder, archive = root / set_name, root / f"{set_name}.zip"
    if folder.is_dir():
        return folder
    if archive.is_file():
        return archive
    if download:
        checksums = {"md5": OMNIGLOT_MD5[set_name], "sha256": OMNIGLOT_SHA256[set_name]}
        return download_verified(OMNIGLOT_URL.format(name=set_name), archive, checksums,
                                 "copy the official archive there")
    raise MissingDataError(
        f"Omniglot {set_name} not found: expected {archive} or the folder {folder}. Pass download=True to "
        f"fetch it from {OMNIGLOT_URL.format(name=set_name)}, or copy the official archive there")


def _identity(source: Path) -> str:
    """Short content fingerprint of an archive (sha256 of its bytes) or a folder (paths and sizes)."""
    if source.is_file():
        with open(source, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()[:16]
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*.png")):
        digest.update(f"{path.relative_to(source).as_posix()}:{path.stat().st_size};".encode())
    return digest.hexdigest()[:16]


def _drawing(name: str, set_name: str, where: str) -> str | None:
    """``Alphabet/characterNN/XXXX_YY.png`` of a drawing's path, ``None`` for an entry to ignore.

    Ignored (as before): directories, entries outside ``images_<set>/`` (e.g. ``__MACOSX/``, a readme),
    hidden files (``.DS_Store``) and the Windows files ``Thumbs.db`` / ``desktop.ini``. Refused: unsafe paths
    anywhere, and any other file inside ``images_<set>/`` that does not follow the layout (so nothing is
    silently skipped or misnamed).
    """
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or ":" in parts[0]:
        raise DataError(f"{where} {name!r} has an unsafe path (absolute, '..' or backslash); this is not a "
                        "genuine Omniglot archive: delete it and download it again (download=True)")
    if name.endswith("/") or parts[0] != set_name or parts[-1].startswith(".") or parts[-1] in _JUNK:
        return None
    relative = "/".join(parts[1:])
    if not _DRAWING.fullmatch(relative):
        raise DataError(f"{where} {name!r} does not follow the layout {set_name}/<Alphabet>/characterNN/"
                        "XXXX_YY.png; use the official archive (download=True) or repack it with that layout")
    return relative


def _members(source: Path, set_name: str) -> list[tuple[str, bytes, str]]:
    """``(Alphabet/characterNN/file.png, bytes, where)`` for every drawing, sorted by name."""
    if source.is_dir():
        paths = sorted(p for p in source.glob("*/*/*.png") if not p.name.startswith("."))
        where = f"{source.parent}: file"
        names = [_drawing(f"{set_name}/{p.relative_to(source).as_posix()}", set_name, where) for p in paths]
        return [(n, p.read_bytes(), str(p)) for n, p in zip(names, paths) if n is not None]
    out, seen = [], set()
    with open_zip(source, "delete it and download it again (download=True), or copy the official archive "
                          "there") as zf:
        for info in zf.infolist():
            name = _drawing(info.filename, set_name, f"{source}: member")
            if name is None:
                continue
            if name in seen:
                raise DataError(f"{source}: member {info.filename!r} appears twice; {_ARCHIVE_FIX}")
            seen.add(name)
            content = read_member(zf, info, source, _ARCHIVE_FIX)
            out.append((name, content, f"{source}: member {info.filename}"))
    return sorted(out, key=lambda item: item[0])


def _decode(source: Path, set_name: str, image_size: int, invert: bool) -> dict:
    members = _members(source, set_name)
    if not members:
        raise DataError(f"{source} holds no {set_name}/<Alphabet>/characterNN/*.png drawings; "
                        "is it the official Omniglot archive?")
    images = np.empty((len(members), 1, image_size, image_size), dtype=np.uint8)
    characters: list[str] = []
    labels = np.empty(len(members), dtype=np.int64)
    fix = _ARCHIVE_FIX if source.is_file() else "replace it with the official drawing"
    for i, (name, content, where) in enumerate(members):
        character = name.rsplit("/", 1)[0]
        if not characters or characters[-1] != character:
            characters.append(character)
        labels[i] = len(characters) - 1
        pixels = decode_image(content, where, "L", image_size, Image.Resampling.LANCZOS, fix)
        images[i, 0] = 255 - pixels if invert else pixels
    return {"version": _CACHE_VERSION, "images": torch.from_numpy(images), "labels": torch.from_numpy(labels),
            "characters": characters}


def _cache_problem(stored: dict, image_size: int) -> str | None:
    """What is wrong with a loaded cache dict (``None`` when it is what ``_decode`` writes)."""
    images, labels, characters = stored.get("images"), stored.get("labels"), stored.get("characters")
    if stored.get("version") != _CACHE_VERSION:
        return f"version {stored.get('version')!r}, expected {_CACHE_VERSION}"
    if (not isinstance(images, Tensor) or images.dtype != torch.uint8
            or tuple(images.shape[1:]) != (1, image_size, image_size) or images.shape[0] == 0):
        return f"images are not uint8 [n, 1, {image_size}, {image_size}]"
    if not isinstance(characters, list) or not characters or not all(
            isinstance(c, str) and c.count("/") == 1 for c in characters):
        return "characters is not a list of 'Alphabet/characterNN' names"
    if (not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != images.shape[:1]
            or int(labels.min()) < 0 or int(labels.max()) >= len(characters)):
        return "labels are not int64 [n] character ids"
    return None


def read_vinyals_split(path: str | Path) -> list[tuple[str, int]]:
    """Parse a Vinyals split file: ``(Alphabet/characterNN, rotation_degrees)`` per line, in file order."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(
            f"Vinyals split file {path} not found; get train.txt/val.txt/test.txt from "
            "github.com/jakesnell/prototypical-networks (data/omniglot/splits/vinyals) and pass their folder")
    out = []
    for number, line in enumerate(read_text(path, "the split file").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        if len(parts) != 3 or not parts[2].startswith("rot") or not parts[2][3:].isdigit():
            raise DataError(f"{path}:{number}: expected 'Alphabet/characterNN/rotDDD', got {line!r}")
        degrees = int(parts[2][3:])
        if degrees not in OMNIGLOT_ROTATIONS:
            raise DataError(f"{path}:{number}: rotation must be one of {OMNIGLOT_ROTATIONS}, got {degrees}")
        out.append(("/".join(parts[:2]), degrees))
    return out


def vinyals_classes(data: Omniglot, split_file: str | Path) -> Tensor:
    """Augmented class ids (``character_id * 4 + rotation_index``) of a Vinyals split file, in file order.

    Use with ``EpisodeSampler(data.images, data.labels, ..., rotations=OMNIGLOT_ROTATIONS, classes=ids)``.
    """
    entries = read_vinyals_split(split_file)
    characters = data.character_ids([c for c, _ in entries])
    rotation_index = torch.tensor([OMNIGLOT_ROTATIONS.index(d) for _, d in entries], dtype=torch.long)
    return characters * len(OMNIGLOT_ROTATIONS) + rotation_index


def maml_split(num_characters: int = 1623, train_characters: int = 1200,
               seed: int = 0) -> tuple[Tensor, Tensor]:
    """MAML's rule: a seeded random ``train_characters`` of all characters for training, the rest for testing.

    Returns sorted int64 character ids ``(train, test)`` of ``Omniglot.combined`` data.
    """
    if not 0 < train_characters < num_characters:
        raise ValueError(f"train_characters must be in (0, {num_characters}), got {train_characters}")
    order = torch.randperm(num_characters, generator=torch.Generator().manual_seed(seed))
    return order[:train_characters].sort().values, order[train_characters:].sort().values


def rotation_classes(character_ids: Tensor, rotations: Sequence[int] = OMNIGLOT_ROTATIONS) -> Tensor:
    """Augmented class ids of every rotation of ``character_ids`` (``id * len(rotations) + r``), sorted."""
    r = len(rotations)
    return (character_ids.view(-1, 1) * r + torch.arange(r).view(1, -1)).reshape(-1).sort().values

