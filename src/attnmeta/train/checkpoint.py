"""Checkpoints that survive a kill at any moment and load without unpickling code.

A checkpoint is a folder ``step-00000100/`` holding

- ``weights.safetensors``: the learner's parameters and buffers;
- ``state.safetensors`` + ``state.json``: everything else (step, optimizer, RNG states, sampler position,
  run metadata). Nested state is stored as JSON with every tensor / numpy array replaced by a reference
  into the safetensors file, so loading never runs pickle;
- ``manifest.json``: size and SHA-256 of each file, written last.

Writes are atomic: the folder is written under a temporary name, every file is fsync'ed, then the folder
is renamed into place. A truncated or corrupted checkpoint fails its manifest check and raises
``CheckpointError``; it is never loaded silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from attnmeta.errors import UserError

FORMAT_VERSION = 1
FILES = ("weights.safetensors", "state.safetensors", "state.json")
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, corrupted or does not fit the model."""


# -- nested state <-> (JSON, tensors) -----------------------------------------------------------------
def encode_state(state: Any) -> tuple[Any, dict[str, Tensor]]:
    """Split nested state into a JSON-able tree and a flat ``{key: tensor}`` dict (no pickle needed)."""
    tensors: dict[str, Tensor] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value.detach().cpu().clone().contiguous()
            return {"__tensor__": key}
        if isinstance(value, np.ndarray):
            key = f"t{len(tensors)}"
            tensors[key] = torch.from_numpy(
                value.astype(np.int64) if value.dtype.kind in "ui" else value.copy()
            )
            return {"__ndarray__": key, "dtype": str(value.dtype)}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                return {"__intkeys__": [[k, encode(v)] for k, v in value.items()]}
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(
            f"cannot store a {type(value).__name__} in a checkpoint; use tensors, arrays, "
            "numbers, strings, lists, tuples and dicts"
        )

    return encode(state), tensors


def decode_state(tree: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of ``encode_state``."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy().astype(tree["dtype"])
        if "__tuple__" in tree:
            return tuple(decode_state(v, tensors) for v in tree["__tuple__"])
        if "__intkeys__" in tree:
            return {k: decode_state(v, tensors) for k, v in tree["__intkeys__"]}
        return {k: decode_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode_state(v, tensors) for v in tree]
    return tree


# -- atomic file helpers ------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and ``os.replace`` (no half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to ``path`` atomically (``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(value, indent=2))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- one checkpoint -----------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, weights: dict[str, Tensor], state: dict[str, Any]) -> Path:
    """Atomically write a checkpoint folder at ``path`` (replacing an existing one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_files(tmp, weights, state)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and error.strerror:
            raise CheckpointError(
                f"could not write checkpoint {str(path)!r}: {error.strerror}; the earlier checkpoints are "
                "intact (free space or fix the folder, then continue with --resume)"
            ) from None
        raise
    old = None
    if path.exists():
        old = path.with_name(f".old-{path.name}-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _write_files(tmp: Path, weights: dict[str, Tensor], state: dict[str, Any]) -> None:
    """The checkpoint's files in the temporary folder ``tmp``, fsync'ed, manifest last."""
    tree, tensors = encode_state(state)
    save_file(
        {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()},
        str(tmp / "weights.safetensors"),
    )
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(tree))
    manifest = {
        "format": FORMAT_VERSION,
        "files": {
            name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in FILES
        },
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    for name in (*FILES, "manifest.json"):
        _fsync_file(tmp / name)
    _fsync_dir(tmp)


def verify_checkpoint(path: str | Path) -> None:
    """Raise ``CheckpointError`` unless every file matches the manifest's size and checksum."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a folder")
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no readable manifest.json: it is incomplete or "
            "corrupted; resume from an earlier checkpoint or delete this folder"
        ) from None
    for name in FILES:
        file = path / name
        expected = files.get(name)
        if expected is None or not file.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} is missing {name}; it is incomplete")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint file {str(file)!r} is truncated or changed: {size} bytes, the "
                f"manifest says {expected['bytes']}; use an earlier checkpoint"
            )
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(
                f"checkpoint file {str(file)!r} is corrupted (SHA-256 differs from the "
                "manifest); use an earlier checkpoint"
            )


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Verify and load ``(weights, state)`` from a checkpoint folder."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        weights = load_file(str(path / "weights.safetensors"))
        tensors = load_file(str(path / "state.safetensors"))
    except SafetensorError as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a malformed safetensors file ({error}); use an earlier "
            "checkpoint"
        ) from None
    try:
        state = decode_state(json.loads((path / "state.json").read_text()), tensors)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        detail = f"no tensor {error}" if isinstance(error, KeyError) else " ".join(str(error).split())
        raise CheckpointError(
            f"checkpoint {str(path)!r} has a damaged state.json ({detail}); use an earlier checkpoint"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} has a damaged state.json (not a mapping)")
    return weights, state


def load_weights(module: torch.nn.Module, weights: dict[str, Tensor], source: str | Path) -> None:
    """``module.load_state_dict(weights)``, with one line saying what does not fit when it fails."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (first {v[0]!r})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if v]
        raise CheckpointError(
            f"checkpoint {str(source)!r} does not fit this model: {', '.join(parts)} tensors; it was trained "
            "with another algorithm, backbone or number of ways; use it with the run folder it came from"
        )
    module.load_state_dict(weights)


# -- a run's checkpoint folder ------------------------------------------------------------------------
class CheckpointManager:
    """The ``checkpoints/`` folder of a run: ``step-XXXXXXXX`` folders, ``best.json``, rotation.

    Args:
        directory: the folder (created if missing).
        keep_last: number of most recent checkpoints kept; the best one is kept in addition.
    """

    def __init__(self, directory: str | Path, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}"

    def steps(self) -> list[int]:
        """Steps of the checkpoint folders present (valid or not), ascending."""
        if not self.directory.is_dir():
            return []
        found = (_STEP_DIR.match(p.name) for p in self.directory.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(
        self,
        step: int,
        weights: dict[str, Tensor],
        state: dict[str, Any],
        *,
        best: dict[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step``; ``best`` (``{"metric": "mse", "value": 0.3}``) marks it best."""
        self._remove_stale_temporaries()
        path = save_checkpoint(self.path(step), weights, state)
        if best is not None:
            write_json_atomic(self.directory / "best.json", {"step": step, **best})
        self.rotate()
        return path

    def best(self) -> dict[str, Any] | None:
        """``{"step": ..., "metric": ..., "value": ...}`` of the best checkpoint, or ``None``."""
        file = self.directory / "best.json"
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text())
        except ValueError:
            raise CheckpointError(
                f"{str(file)!r} is corrupted; delete it to forget the best checkpoint"
            ) from None

    def best_path(self) -> Path | None:
        best = self.best()
        return None if best is None else self.path(int(best["step"]))

    def latest_valid(self, *, report: Any = print) -> Path | None:
        """Newest checkpoint that passes its manifest check; corrupt ones are reported via ``report``."""
        for step in reversed(self.steps()):
            try:
                verify_checkpoint(self.path(step))
                return self.path(step)
            except CheckpointError as error:
                report(f"skipping a bad checkpoint: {error}")
        return None

    def rotate(self) -> None:
        """Delete all but the last ``keep_last`` checkpoints and the best one."""
        steps = self.steps()
        best = self.best()
        keep = set(steps[-self.keep_last :])
        if best is not None:
            keep.add(int(best["step"]))
        for step in steps:
            if step not in keep:
                shutil.rmtree(self.path(step), ignore_errors=True)

    def discard_after(self, step: int) -> None:
        """Delete checkpoints newer than ``step`` (used when resuming from an older one)."""
        for s in self.steps():
            if s > step:
                shutil.rmtree(self.path(s), ignore_errors=True)

    def _remove_stale_temporaries(self) -> None:
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)


def run_checkpoint(run_dir: str | Path, which: str = "best", purpose: str = "to evaluate") -> Path:
    """The checkpoint of a run folder that evaluation uses: the best by validation (``which="best"``; the
    newest valid one when there is none) or the newest valid one (``which="latest"``). A folder without a
    valid checkpoint is a one-line ``UserError`` ("... has no valid checkpoint ``purpose``")."""
    from attnmeta.errors import UserError

    manager = CheckpointManager(Path(run_dir) / "checkpoints")
    path = manager.best_path() if which == "best" else None
    path = path if path is not None and path.is_dir() else manager.latest_valid()
    if path is None:
        raise UserError(f"run folder {str(run_dir)!r} has no valid checkpoint {purpose}")
    return path
