"""Errors caused by the user's input or environment, and how the CLI tells them from bugs.

Convention: code that rejects bad input raises ``UserError`` (or a subclass, or a plain ``ValueError`` /
``TypeError`` from a ``raise`` statement in attnmeta's own code) with one line saying what was wrong and how
to fix it. The CLI prints such errors as one line and exits with status 2; anything else (a bug) keeps its
traceback. ``--debug`` (or ``ATTNMETA_DEBUG=1``) shows the traceback of every error.
"""

from __future__ import annotations

import dis
import errno
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_RAISE = dis.opmap["RAISE_VARARGS"]

#: ``OSError`` numbers that come from the user's environment (paths, permissions, disk), not from a bug.
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOENT", "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EISDIR", "ENOTDIR", "EEXIST",
                 "ENAMETOOLONG", "EFBIG", "ENOTEMPTY", "EIO")
    if hasattr(errno, name)
)


class UserError(ValueError):
    """Bad input or environment: one line saying what was wrong and what to do (CLI exit status 2)."""


class DataError(UserError):
    """A data file (archive, image, text, cache) is missing, corrupt or in the wrong format."""


def _raised_deliberately(error: BaseException) -> bool:
    """Whether ``error`` comes from a ``raise`` statement in attnmeta's own source (not from a library)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    try:
        inside = Path(code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False
    # The last instruction of the innermost frame is the ``raise`` itself, not a call that raised inside.
    return inside and 0 <= tb.tb_lasti < len(code.co_code) and code.co_code[tb.tb_lasti] == _RAISE


def is_user_error(error: BaseException) -> bool:
    """True for errors the CLI reports as one line: ``UserError``, attnmeta's own deliberate
    ``ValueError`` / ``TypeError``, and ``OSError`` from the environment (missing path, permission, full or
    read-only disk)."""
    if isinstance(error, UserError):
        return True
    if isinstance(error, OSError):
        return error.errno in ENVIRONMENT_ERRNOS or _raised_deliberately(error)
    if isinstance(error, (ValueError, TypeError)):
        return _raised_deliberately(error)
    return False


def one_line(error: BaseException) -> str:
    """The error as one line (OS errors name the file)."""
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        hints: dict[int | None, str] = {
            errno.ENOSPC: " (free some disk space, then resume the run with --resume)",
            errno.EROFS: " (write to another folder, e.g. --run-dir)",
            errno.EACCES: " (check the permissions, or write to another folder)"}
        hint = hints.get(error.errno, "")
        return f"{where}{error.strerror}{hint}"
    return " ".join(str(error).split()) or type(error).__name__
