"""Helpers of the benchmarks with a fixed class split and large sources (``quickdraw``, ``tiered-imagenet``).

- ``read_split_object``: a class-split JSON file, the packaged ones in ``splits/`` (which may also carry
  ``"note"`` and ``"source"`` strings) or one the user passes as ``split_file=``.
- ``check_split_names``: every split non-empty, names unique and in one split only.
- ``check_episode_shapes``: each split has ``ways`` classes with ``shots + queries`` images each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attnmeta.data.safe_io import parse_split_file
from attnmeta.errors import DataError, UserError

__all__ = ["SPLIT_DIR", "SPLITS", "read_split_object", "check_split_names", "check_episode_shapes"]

#: Folder of the packaged split files.
SPLIT_DIR = Path(__file__).resolve().parent / "splits"
SPLITS = ("train", "val", "test")
#: Keys a split file may hold besides the splits (documentation of the packaged files).
_INFO_KEYS = ("note", "source")


def read_split_object(path: str | Path, fix: str) -> dict[str, Any]:
    """``{"train": ..., "val": ..., "test": ...}`` of a split JSON file (optional ``note`` / ``source``
    strings dropped). A missing file, invalid JSON or other keys raise a one-line error ending in ``fix``."""
    path = Path(path)
    stored = parse_split_file(path, fix, fix)
    keys = sorted(k for k in stored if k not in _INFO_KEYS) if isinstance(stored, dict) else None
    if keys != sorted(SPLITS):
        held = keys if keys is not None else type(stored).__name__
        raise DataError(f"split file {str(path)!r} holds {held}, not the keys train, val and test; {fix}")
    return {part: stored[part] for part in SPLITS}


def check_split_names(parts: Mapping[str, Any], where: str, fix: str,
                      valid: Callable[[str], bool] = bool) -> dict[str, list[str]]:
    """Each split a non-empty list of names ``valid`` accepts, no name twice: the lists, as given."""
    seen: dict[str, str] = {}
    for part in SPLITS:
        names = parts[part]
        if not isinstance(names, list) or not names:
            raise DataError(f"{where}: {part!r} must be a non-empty list of class names; {fix}")
        for name in names:
            if not isinstance(name, str) or not valid(name):
                raise DataError(f"{where}: {part!r} holds {name!r}, not a valid class name; {fix}")
            if name in seen:
                twice = f"both {seen[name]!r} and {part!r}" if seen[name] != part else f"{part!r} twice"
                raise DataError(f"{where}: class {name!r} is listed in {twice}; keep it in one split only")
            seen[name] = part
    return {part: list(parts[part]) for part in SPLITS}


def check_episode_shapes(benchmark: str, parts: Mapping[str, Sequence[str]], counts: Mapping[str, int],
                         shapes: Sequence[tuple[int, int, int]], where: str, fix: str) -> None:
    """Each split (``shapes``: ``(ways, shots, queries)`` of train, val, test) has at least ``ways`` classes
    with ``shots + queries`` images (``counts``: usable images per class; ``fix``: how to get more)."""
    for part, (ways, shots, queries) in zip(SPLITS, shapes):
        names = parts[part]
        if len(names) < ways:
            raise UserError(f"the {benchmark} {part} split has {len(names)} classes, fewer than ways = "
                            f"{ways}; lower --ways")
        short = next((name for name in names if counts[name] < shots + queries), None)
        if short is not None:
            raise DataError(f"class {short!r} ({part} split) has {counts[short]} images in {where}, fewer "
                            f"than shots + queries = {shots + queries}; lower --shots/--queries, or {fix}")

