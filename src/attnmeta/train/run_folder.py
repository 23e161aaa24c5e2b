"""A run folder on disk: the exclusive lock, what may be written where, and reading a run's config back.

Guarantees: a run folder is used by one process at a time (``RunLock``); a fresh run never writes into a
folder that holds anything (``check_fresh_run_dir``); ``config.yaml`` is replaced atomically and, when it is
missing or damaged, ``load_run_config`` falls back to the config stored in the newest valid checkpoint.
Loading never executes code: YAML is read with ``yaml.safe_load`` and the ``imports`` a run names are only
quoted, never imported.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import os
from pathlib import Path
from typing import Any

import yaml

from attnmeta.errors import UserError
from attnmeta.train.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, write_text_atomic
from attnmeta.train.config import RunConfig

LOCK_FILE = ".lock"
HISTORY_FILE = "history.log"


class RunExistsError(UserError):
    """The run folder already holds a run (or other files)."""


class RunLockedError(UserError):
    """Another process is using the run folder."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` for as long as a process trains in the folder.

    The lock is released by the kernel when the process ends, however it ends (``kill -9`` included), so a
    stale lock file never blocks a later ``--resume``. The file holds the owner's PID for the error message.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            owner = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(
                f"run folder {str(self.path.parent)!r} is in use by process {owner}; wait for it to finish "
                "(or stop it), or choose another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_fresh_run_dir(run_dir: Path) -> None:
    """Refuse to start a new run in a folder that holds anything: a run (suggest ``--resume``) or files."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunExistsError(f"--run-dir {str(run_dir)!r} is a file, not a folder; choose another --run-dir")
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if not entries:
        return
    if "checkpoints" in entries or "config.yaml" in entries:
        raise RunExistsError(
            f"run folder {str(run_dir)!r} already holds a run; continue it with "
            f"`attnmeta train --resume {run_dir}` or choose another --run-dir"
        )
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise RunExistsError(
        f"--run-dir {str(run_dir)!r} is not empty ({shown}) and is not an attnmeta run; choose a new or "
        "empty folder so that nothing in it is overwritten"
    )


def write_config(run_dir: Path, config: RunConfig) -> None:
    """Write ``config.yaml`` atomically (a kill leaves the old or the new file, never half of one)."""
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config.to_storable_dict(), sort_keys=False))


def append_history(run_dir: Path, line: str) -> None:
    """One timestamped line in the run's ``history.log`` (starts, resumes, overrides)."""
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    with open(run_dir / HISTORY_FILE, "a") as f:
        f.write(f"{stamp} {line}\n")


def load_run_config(run_dir: str | Path, *, report: Any = print) -> RunConfig:
    """The config of a run folder: ``config.yaml``, or the newest valid checkpoint's copy if that file is
    missing or damaged (reported through ``report``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run folder {str(run_dir)!r} does not exist; pass the folder written by `attnmeta train`"
        )
    path = run_dir / "config.yaml"
    problem = _read_config_yaml(path)
    if isinstance(problem, RunConfig):
        return problem
    latest = CheckpointManager(run_dir / "checkpoints").latest_valid(report=lambda _: None)
    if latest is None:
        if not path.exists() and not (run_dir / "checkpoints").is_dir():
            raise UserError(
                f"{str(run_dir)!r} is not a run folder (no config.yaml, no checkpoints/); pass the folder "
                "written by `attnmeta train`"
            )
        raise UserError(f"{problem}, and the run has no valid checkpoint holding a copy of its config")
    try:
        config = RunConfig.from_dict(load_checkpoint(latest)[1]["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{problem}; the config in {str(latest)!r} is unusable too ({error})") from None
    report(f"{problem}; using the config saved in {latest}")
    return config


def _read_config_yaml(path: Path) -> RunConfig | str:
    """The config in ``path``, or a one-line description of what is wrong with the file."""
    if not path.is_file():
        return f"{str(path)!r} is missing"
    try:
        values = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        return f"{str(path)!r} is not UTF-8 text"
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        return f"{str(path)!r} is not plain YAML{where}: {getattr(error, 'problem', None) or 'parse error'}"
    if not isinstance(values, dict):
        return f"{str(path)!r} is not a valid run config (not a mapping)"
    missing = [f.name for f in dataclasses.fields(RunConfig) if f.name not in values]
    if missing:  # `attnmeta train` writes every key: a partial file was cut or edited
        return f"{str(path)!r} is not a valid run config (incomplete: no {', '.join(missing[:3])}...)"
    try:
        return RunConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        return f"{str(path)!r} is not a valid run config ({' '.join(str(error).split())})"


def check_writable(folder: Path, what: str) -> None:
    """Fail fast, before a long computation, if ``folder`` cannot take new files."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"cannot write {what} in {str(folder)!r} ({error.strerror}); make the folder writable or copy "
            "the run to a writable place"
        ) from None
