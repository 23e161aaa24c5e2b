"""Safe download, checksum verification and archive extraction helpers.

Nothing here runs at import or test time; loaders call these only with ``download=True``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path


def file_digest(path: str | Path, algorithm: str = "md5", chunk_bytes: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (``algorithm`` is any name ``hashlib.new`` accepts)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str | Path, *, md5: str | None = None, sha256: str | None = None,
                    source: str = "") -> None:
    """Raise ``ValueError`` naming the file when its md5/sha256 differs from the expected value."""
    path = Path(path)
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual.lower() != expected.lower():
            where = f" from {source}" if source else ""
            raise ValueError(
                f"checksum mismatch for {path}: {algorithm} is {actual}, expected {expected}. The file is "
                f"corrupt or not the official one; delete it and download it again{where} (download=True), "
                "or place the official archive there yourself")


def download_file(url: str, destination: str | Path, *, md5: str | None = None, sha256: str | None = None,
                  timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` (atomically, via a temporary file) and verify its checksum.

    An existing file with the right checksum is kept. A mismatch raises ``ValueError`` and leaves no file.
    """
    destination = Path(destination)
    if destination.exists():
        verify_checksum(destination, md5=md5, sha256=sha256, source=url)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            shutil.copyfileobj(response, out)
        try:
            verify_checksum(tmp_name, md5=md5, sha256=sha256, source=url)
        except ValueError as error:
            raise ValueError(str(error).replace(tmp_name, f"{destination} (downloaded from {url})")) from None
        os.replace(tmp_name, destination)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return destination


def safe_extract_zip(archive: str | Path, target_dir: str | Path) -> Path:
    """Extract ``archive`` into ``target_dir``, refusing any member that would land outside it.

    Absolute paths, ``..`` components and symbolic links are rejected with ``ValueError`` before anything
    is written, so a crafted archive cannot overwrite files elsewhere.
    """
    target = Path(target_dir).resolve()
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for member in members:
            name = member.filename
            is_symlink = (member.external_attr >> 16) & 0o170000 == 0o120000
            destination = (target / name).resolve()
            if (name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name
                    or is_symlink or not destination.is_relative_to(target)):
                raise ValueError(
                    f"refusing to extract {archive}: member {name!r} would be written outside {target} "
                    "(absolute path, '..' or link); the archive is not a genuine data archive, delete it")
        target.mkdir(parents=True, exist_ok=True)
        for member in members:
            zf.extract(member, target)
    return target


def safe_extract_tar(archive: str | Path, target_dir: str | Path, chunk_bytes: int = 1 << 20) -> Path:
    """Extract a (gzip-compressed or plain) tar ``archive`` into ``target_dir``: regular files and folders
    only.

    Every member is checked before anything is written: an absolute path, a ``..`` component, a link
    (symbolic or hard), a device or any other special member raises ``ValueError``, so a crafted archive
    cannot write outside ``target_dir``. Files are written by copying their bytes (no owner, mode or time
    taken from the archive); an unreadable archive raises ``tarfile.TarError`` / ``OSError`` / ``EOFError``.
    """
    import tarfile

    target = Path(target_dir).resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            name = member.name
            destination = (target / name).resolve()
            if (name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name
                    or not (member.isfile() or member.isdir()) or not destination.is_relative_to(target)):
                raise ValueError(
                    f"refusing to extract {archive}: member {name!r} would be written outside {target} or "
                    "is a link or special file (absolute path, '..', link, device); the archive is not a "
                    "genuine data archive, delete it")
        target.mkdir(parents=True, exist_ok=True)
        for member in members:
            destination = target / member.name
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None, "regular members have contents"
            with source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out, chunk_bytes)
    return target
