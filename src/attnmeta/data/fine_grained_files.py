"""File layouts of the fine-grained benchmarks (``attnmeta.data.fine_grained``): which image file of each
official release belongs to which class, and the packaged class splits.

Each ``list_<name>(folder, ...)`` returns the release's class names (in the release's own order) and one
``(class name, image file, crop box or None)`` entry per image; a malformed annotation line raises a one-line
``DataError`` naming the file and line. ``read_mat_vector`` reads one numeric variable of a MATLAB 5 ``.mat``
file (Flowers-102's ``imagelabels.mat``; plain or zlib-compressed elements) without SciPy.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from attnmeta.data.imagefolder import IMAGEFOLDER_SUFFIXES
from attnmeta.data.safe_io import MissingDataError, read_text
from attnmeta.errors import DataError

__all__ = ["SPLIT_DIR", "SPLITS", "Box", "Entry", "read_split", "list_cub", "list_aircraft", "list_flowers",
           "list_dtd", "read_mat_vector"]

#: Folder of the packaged class-split files ``<benchmark>.json``.
SPLIT_DIR = Path(__file__).resolve().parent / "splits"
SPLITS = ("train", "val", "test")
Box = tuple[int, int, int, int]
Entry = tuple[str, Path, Box | None]


def read_split(name: str) -> dict[str, list[str]]:
    """Class names per split (``train`` / ``val`` / ``test``) of the packaged ``splits/<name>.json``."""
    path = SPLIT_DIR / f"{name}.json"
    stored = json.loads(read_text(path, "the split file"))
    parts = {part: list(stored[part]) for part in SPLITS}
    names = [c for part in SPLITS for c in parts[part]]
    if len(names) != len(set(names)) or not all(isinstance(c, str) for c in names):
        raise DataError(f"packaged split file {path} lists a class twice or a non-string; reinstall attnmeta")
    return parts


def _lines(path: Path, fix: str) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of the non-blank lines of an annotation file."""
    if not path.is_file():
        raise MissingDataError(f"{path} is missing; {fix}")
    return [(n, line.strip()) for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]


def list_cub(folder: Path, fix: str) -> tuple[list[str], list[Entry]]:
    """CUB-200-2011: ``classes.txt`` (``<id> <class folder>``) and ``images.txt``
    (``<id> <class folder>/<file>``, under ``images/``)."""
    classes = []
    for n, line in _lines(folder / "classes.txt", fix):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{folder / 'classes.txt'}:{n}: expected '<class id> <class folder>', got "
                            f"{line!r}; {fix}")
        classes.append(parts[1])
    known = set(classes)
    entries: list[Entry] = []
    for n, line in _lines(folder / "images.txt", fix):
        parts = line.split(maxsplit=1)
        folder_name = parts[1].split("/", 1)[0] if len(parts) == 2 else ""
        if len(parts) != 2 or "/" not in parts[1] or ".." in Path(parts[1]).parts:
            raise DataError(f"{folder / 'images.txt'}:{n}: expected '<image id> <class folder>/<file>', got "
                            f"{line!r}; {fix}")
        if folder_name not in known:
            raise DataError(f"{folder / 'images.txt'}:{n}: image {parts[1]!r} is in class folder "
                            f"{folder_name!r}, which classes.txt does not list; {fix}")
        entries.append((folder_name, folder / "images" / parts[1], None))
    return classes, entries


def _boxes(path: Path, fix: str) -> dict[str, Box]:
    boxes = {}
    for n, line in _lines(path, fix):
        parts = line.split()
        if len(parts) != 5 or not all(p.isdigit() for p in parts[1:]) or not (
                int(parts[3]) > int(parts[1]) and int(parts[4]) > int(parts[2])):
            raise DataError(f"{path}:{n}: expected '<image id> <xmin> <ymin> <xmax> <ymax>' with xmax > xmin "
                            f"and ymax > ymin, got {line!r}; {fix}")
        boxes[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]))
    return boxes


def list_aircraft(folder: Path, crop: bool, fix: str) -> tuple[list[str], list[Entry]]:
    """FGVC-Aircraft 2013b (``folder``: its ``data/``): ``variants.txt`` and
    ``images_variant_{train,val,test}.txt`` (``<image id> <variant>``, images ``images/<id>.jpg``), cropped
    to ``images_box.txt`` when ``crop`` and that file is there."""
    classes = [line for _, line in _lines(folder / "variants.txt", fix)]
    known = set(classes)
    box_file = folder / "images_box.txt"
    boxes = _boxes(box_file, fix) if crop and box_file.is_file() else None
    entries: list[Entry] = []
    for part in SPLITS:
        path = folder / f"images_variant_{part}.txt"
        for n, line in _lines(path, fix):
            image_id, _, variant = line.partition(" ")
            if not variant or not image_id.isalnum():
                raise DataError(f"{path}:{n}: expected '<image id> <variant>', got {line!r}; {fix}")
            if variant not in known:
                raise DataError(f"{path}:{n}: variant {variant!r} is not in variants.txt; {fix}")
            if boxes is not None and image_id not in boxes:
                raise DataError(f"{box_file} has no box for image {image_id} ({path}:{n}); {fix}")
            entries.append((variant, folder / "images" / f"{image_id}.jpg",
                            None if boxes is None else boxes[image_id]))
    return classes, entries


def list_flowers(folder: Path, names: list[str], fix: str) -> tuple[list[str], list[Entry]]:
    """VGG Flowers-102: label ``k`` (1-102) of ``imagelabels.mat`` for ``jpg/image_<i:05d>.jpg``; ``names``:
    the split file's ``'<k:03d>.<name>'`` class names."""
    by_label = {int(name.split(".", 1)[0]): name for name in names}
    path = folder / "imagelabels.mat"
    labels = read_mat_vector(path, "labels", fix)
    bad = [int(v) for v in labels if v != int(v) or int(v) not in by_label]
    if bad:
        raise DataError(f"{path}: label {bad[0]} is not a Flowers-102 class (1-{len(by_label)}); {fix}")
    entries: list[Entry] = [(by_label[int(v)], folder / "jpg" / f"image_{i + 1:05d}.jpg", None)
                            for i, v in enumerate(labels)]
    return [by_label[k] for k in sorted(by_label)], entries


def list_dtd(folder: Path, fix: str) -> tuple[list[str], list[Entry]]:
    """DTD: ``images/<class>/<file>`` (hidden files such as ``waffled/.directory`` skipped)."""
    images = folder / "images"
    if not images.is_dir():
        raise MissingDataError(f"{images} is missing; {fix}")
    classes = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[Entry] = [
        (name, path, None) for name in classes for path in sorted((images / name).iterdir())
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGEFOLDER_SUFFIXES]
    return classes, entries


#: MATLAB 5 numeric storage types -> numpy type codes.
_MAT_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15


def _elements(body: bytes, order: str) -> list[tuple[int, bytes]]:
    """The ``(type, data)`` sub-elements of a MATLAB 5 matrix (small 4-byte elements included)."""
    out, pos = [], 0
    while pos + 8 <= len(body):
        first, second = struct.unpack_from(order + "II", body, pos)
        if first >> 16:  # small data element: size and type in the first 4 bytes, data in the next 4
            out.append((first & 0xFFFF, body[pos + 4:pos + 4 + (first >> 16)]))
            pos += 8
        else:
            out.append((first, body[pos + 8:pos + 8 + second]))
            pos += 8 + second + (-second % 8)
    return out


def read_mat_vector(path: Path, variable: str, fix: str) -> np.ndarray:
    """The values (flattened, float64) of numeric ``variable`` in a MATLAB 5 ``.mat`` file."""
    if not path.is_file():
        raise MissingDataError(f"{path} is missing; {fix}")
    raw = path.read_bytes()
    if len(raw) < 128 or raw[126:128] not in (b"IM", b"MI"):
        raise DataError(f"{path} is not a MATLAB 5 .mat file; {fix}")
    order, pos = ("<" if raw[126:128] == b"IM" else ">"), 128
    try:
        while pos + 8 <= len(raw):
            kind, size = struct.unpack_from(order + "II", raw, pos)
            body, pos = raw[pos + 8:pos + 8 + size], pos + 8 + size
            if kind == _MI_COMPRESSED:
                body = zlib.decompress(body)
                kind, size = struct.unpack_from(order + "II", body, 0)
                body = body[8:8 + size]
            if kind != _MI_MATRIX:
                continue
            parts = _elements(body, order)
            if len(parts) >= 4 and parts[2][1].decode("ascii", "replace") == variable:
                code = _MAT_TYPES.get(parts[3][0])
                if code is None:
                    raise DataError(f"{path}: variable {variable!r} is not a numeric array; {fix}")
                return np.frombuffer(parts[3][1], dtype=order + code).astype(np.float64)
    except DataError:
        raise
    except (zlib.error, struct.error, ValueError):  # ValueError: a data size that is not whole values
        raise DataError(f"{path} is truncated or damaged (MATLAB 5 element at byte {pos}); {fix}") from None
    raise DataError(f"{path} holds no variable {variable!r}; {fix}")
