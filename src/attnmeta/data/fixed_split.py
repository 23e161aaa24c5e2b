"""Helpers of the benchmarks with a fixed class split and large sources (``quickdraw``, ``tiered-imagenet``).

- ``read_split_object``: a class-split JSON file, the packaged ones in ``splits/`` (which may also carry
  ``"note"`` and ``"source"`` strings) or one the user passes as ``split_file=``.
- ``check_split_names``: every split non-empty, names unique and in one split only.
- ``check_episode_shapes``: each split has ``ways`` classes with ``shots + queries`` images each.
- ``load_tensor_cache`` / ``save_tensor_cache``: decoded uint8 images as a safetensors file (tensors and
  string metadata only, never pickle), written atomically; a damaged cache is rebuilt with a warning, one made
  from other source files is rebuilt silently, an unwritable folder only warns.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from attnmeta.data.safe_io import MissingDataError, read_text
from attnmeta.errors import ENVIRONMENT_ERRNOS, DataError, UserError

__all__ = ["SPLIT_DIR", "SPLITS", "read_split_object", "check_split_names", "check_episode_shapes",
           "load_tensor_cache", "save_tensor_cache"]

#: Folder of the packaged split files.
SPLIT_DIR = Path(__file__).resolve().parent / "splits"
SPLITS = ("train", "val", "test")
#: Keys a split file may hold besides the splits (documentation of the packaged files).
_INFO_KEYS = ("note", "source")


def read_split_object(path: str | Path, fix: str) -> dict[str, Any]:
    """``{"train": ..., "val": ..., "test": ...}`` of a split JSON file (optional ``note`` / ``source``
    strings dropped). A missing file, invalid JSON or other keys raise a one-line error ending in ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"split file {str(path)!r} does not exist; {fix}")
    try:
        stored = json.loads(read_text(path, "the split file"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); {fix}") from None
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


def load_tensor_cache(path: Path, fmt: str, stamp: str, what: str, source: str,
                      check: Callable[[dict[str, Tensor], dict[str, str]], str | None]
                      ) -> tuple[dict[str, Tensor], dict[str, str]] | None:
    """Tensors and metadata of a cache written by ``save_tensor_cache`` with the same ``fmt`` and ``stamp``.

    ``None`` when there is no such file, when it was made from other sources (silently) or when it is
    damaged or ``check(tensors, metadata)`` names a problem (with a warning naming ``what``, ``source``)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("source") != stamp or meta.get("format") != fmt:
                return None  # made from other source files: rebuilt without a warning
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # whatever a damaged safetensors file makes the reader raise
        if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
            raise
        problem: str | None = "it is truncated or damaged"
    else:
        problem = check(tensors, meta)
    if problem is not None:
        warnings.warn(f"cache file {path} is not a valid {what} cache ({problem}); rebuilding it from "
                      f"{source}", stacklevel=3)
        return None
    return tensors, meta


def save_tensor_cache(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str], what: str) -> bool:
    """Write ``tensors`` atomically (temporary file, then rename); ``False`` (with a warning) when the folder
    cannot be written."""
    from safetensors.torch import save_file

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
        os.close(fd)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
        return True
    except OSError as error:
        warnings.warn(f"could not write the {what} cache {path} ({error.strerror or error}); continuing "
                      "without it (pass cache_dir= to put it elsewhere)", stacklevel=3)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
