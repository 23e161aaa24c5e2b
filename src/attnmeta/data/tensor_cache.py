"""Caches of decoded tensors as safetensors files (``cifar``, ``fine_grained``, ``tiered_imagenet``).

- ``load_tensor_cache``: the tensors and string metadata of a cache file (never pickle). One made from other
  source files (another ``source`` stamp or ``format``) is ignored silently; a damaged one, or one that
  ``check`` finds wrong, is ignored with a warning, so that the caller rebuilds it.
- ``save_tensor_cache``: write tensors and metadata atomically (temporary file, then rename); an unwritable
  folder only warns.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from attnmeta.errors import ENVIRONMENT_ERRNOS

__all__ = ["load_tensor_cache", "save_tensor_cache"]


def load_tensor_cache(path: Path, fmt: str, stamp: str, what: str, source: str,
                      check: Callable[[dict[str, Tensor], dict[str, str]], str | None],
                      keys: Sequence[str] | None = None) -> tuple[dict[str, Tensor], dict[str, str]] | None:
    """Tensors and metadata of a cache written by ``save_tensor_cache`` with the same ``fmt`` and ``stamp``
    (its ``"format"`` and ``"source"`` metadata).

    ``keys``: the tensors to read (default: all; a missing one makes the file damaged). ``None`` when there
    is no such file, when it was made from other sources (silently) or when it is damaged or
    ``check(tensors, metadata)`` names a problem (with a warning naming ``what`` and ``source``)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("source") != stamp or meta.get("format") != fmt:
                return None  # made from other source files: rebuilt without a warning
            tensors = {key: handle.get_tensor(key) for key in (handle.keys() if keys is None else keys)}
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
    """Write ``tensors`` atomically (temporary file, then rename); ``False`` (with a warning naming ``what``)
    when the folder cannot be written."""
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
