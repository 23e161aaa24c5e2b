"""Safe reading of user data: zip archives (in memory, never extracted), images, text, caches, downloads.

Every problem with a file's *content* raises :class:`attnmeta.errors.DataError` with one line naming the file
(and archive member or line), what is wrong and what to do; no raw ``zipfile`` / ``zlib`` / PIL / pickle /
``UnicodeDecodeError`` escapes. Errors of the environment (permission denied, disk full) stay ``OSError``.

Caches hold decoded tensors only: they are written atomically (temporary file, then ``os.replace``) and read
with ``torch.load(weights_only=True)``, which never runs code from the file. A cache that cannot be read or
does not hold what attnmeta wrote is *not* deleted or rebuilt silently: the error names it and asks the user
to delete it (it may sit in a folder the user chose, and an unreadable cache is worth a look).
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from attnmeta.data.download import download_file, file_digest
from attnmeta.errors import ENVIRONMENT_ERRNOS, DataError

__all__ = ["MissingDataError", "open_zip", "read_member", "decode_image", "read_text", "load_cache",
           "save_cache", "download_verified"]

#: Largest archive member read into memory (a zip bomb declares gigabytes).
MAX_MEMBER_BYTES = 64 << 20


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder does not exist (also a ``FileNotFoundError``, for callers catching that)."""


def _environment(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS


def open_zip(path: Path, fix: str) -> zipfile.ZipFile:
    """Open a zip archive; a truncated or non-zip file raises ``DataError`` ending with ``fix``."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as error:
        detail = "truncated, or not a zip file" if "not a zip file" in str(error) else "damaged zip structure"
        raise DataError(f"{path} is not a readable zip archive ({detail}); {fix}") from None


def _member_problem(error: BaseException) -> str:
    if isinstance(error, RuntimeError) and "encrypted" in str(error):
        return "it is encrypted"
    if isinstance(error, NotImplementedError):
        return "unsupported compression method"
    if "CRC" in str(error):
        return "CRC-32 check failed"
    return "its compressed data is damaged"


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path, fix: str) -> bytes:
    """Bytes of one member; a damaged (CRC, zlib), encrypted or oversized member raises ``DataError``."""
    where = f"{archive}: member {info.filename}"
    if info.file_size > MAX_MEMBER_BYTES:
        raise DataError(f"{where} declares {info.file_size} bytes, more than the {MAX_MEMBER_BYTES} accepted "
                        f"for one file; {fix}")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError) as error:
        raise DataError(f"{where} is corrupt ({_member_problem(error)}); {fix}") from None


def _image_problem(error: BaseException) -> str:
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image file PIL can identify"
    if "truncated" in str(error).lower():
        return "the image data is truncated"
    if isinstance(error, Image.DecompressionBombError):
        return "its pixel count is implausibly large"
    return "the image data is damaged"


def decode_image(content: bytes, where: str, mode: str, size: int, resample: Image.Resampling,
                 fix: str, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Decode image bytes to a ``mode`` (``"L"``/``"RGB"``) uint8 array resized to ``size`` x ``size``
    (after cropping to ``box``, ``(left, upper, right, lower)`` pixels as ``PIL.Image.crop``, when given)."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            converted = image.convert(mode)
            if box is not None:
                converted = converted.crop(box)
            if converted.size != (size, size):
                converted = converted.resize((size, size), resample)
            return np.asarray(converted, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as error:
        raise DataError(f"{where}: cannot decode the image ({_image_problem(error)}); {fix}") from None


@contextmanager
def tar_read_errors(unreadable: str) -> Iterator[None]:
    """Reading a ``.tar.gz`` archive inside: a damaged one (``gzip.BadGzipFile``, a truncated stream, a
    ``tarfile`` error) raises ``DataError(unreadable)``; ``DataError`` and errors of the environment pass."""
    try:
        yield
    except DataError:
        raise
    except OSError as error:
        if error.errno in ENVIRONMENT_ERRNOS:
            raise
        raise DataError(unreadable) from None
    except (tarfile.TarError, EOFError, zlib.error):
        raise DataError(unreadable) from None


def read_text(path: Path, what: str = "the file") -> str:
    """A UTF-8 text file (an optional BOM is dropped); invalid UTF-8 raises ``DataError`` with its line."""
    content = path.read_bytes()
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte 0x{content[error.start]:02x}); save {what} "
                        "with UTF-8 encoding") from None


def _cache_problem(error: BaseException) -> str:
    if "Weights only load failed" in str(error):
        return "it holds Python objects other than tensors, which are never unpickled"
    return "it is truncated or damaged"


def load_cache(path: Path, check: Callable[[dict], str | None]) -> dict:
    """Load a cache written by ``save_cache``; ``check(stored)`` returns a problem or ``None``.

    An unreadable or unexpected cache raises ``DataError`` naming it and asking to delete it.
    """
    fix = "delete it and run again to rebuild it from the source data"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # anything a damaged file makes torch.load raise is a data problem
        if _environment(error):
            raise
        raise DataError(f"cache file {path} is unreadable ({_cache_problem(error)}); {fix}") from None
    problem = check(stored) if isinstance(stored, dict) else "it does not hold a dict"
    if problem:
        raise DataError(f"cache file {path} is not a valid attnmeta cache ({problem}); {fix}")
    return stored


def save_cache(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download_verified(url: str, destination: Path, checksums: dict[str, str], fix: str) -> Path:
    """Download ``url`` to ``destination``, verifying ``checksums`` (``{"md5": hex, "sha256": hex}``) first.

    The file is moved into place only when every digest matches; a bad download is deleted and raises
    ``DataError`` saying so.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + ".", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        download_file(url, tmp)
        for algorithm, expected in checksums.items():
            actual = file_digest(tmp, algorithm)
            if actual != expected.lower():
                raise DataError(f"checksum mismatch for {destination} (downloaded from {url}): {algorithm} "
                                f"is {actual}, expected {expected}; the download was deleted. Try to "
                                f"download it again later, or {fix}")
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    return destination


SPLIT_PARTS = ("train", "val", "test")


def parse_split_file(path: Path, fix: str, missing: str) -> Any:
    """The JSON value of a class-split file, not yet checked. A missing file is a ``MissingDataError``
    (``missing``: what to pass instead), invalid JSON a ``DataError`` ending in ``fix``."""
    import json

    if not path.is_file():
        raise MissingDataError(f"split file {str(path)!r} does not exist; {missing}")
    try:
        return json.loads(read_text(path, "the split file"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); {fix}") from None


def read_split_json(path: Path, fix: str, missing: str) -> dict[str, Any]:
    """The JSON object of a class-split file ``{"train": [...], "val": [...], "test": [...]}`` (exactly
    those keys; their entries are checked by the caller). A missing file is a ``MissingDataError``
    (``missing``: what to pass instead), invalid JSON or other keys a ``DataError`` ending in ``fix``."""
    stored = parse_split_file(path, fix, missing)
    if not isinstance(stored, dict) or sorted(stored) != sorted(SPLIT_PARTS):
        keys = sorted(stored) if isinstance(stored, dict) else type(stored).__name__
        raise DataError(f"split file {str(path)!r} holds {keys}; {fix}")
    return stored
