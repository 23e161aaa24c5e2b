"""On-disk caches of a frozen sentence encoder's outputs, keyed by the SHA-256 of each text's UTF-8 bytes.

:class:`EmbeddingCache` holds one pooled embedding ``[D]`` per text; :class:`TokenStateCache` holds the
token states ``[L, D]`` (float16) that enter the layers being fine-tuned (``SentenceEncoder(...,
finetune_layers=K)``), so that only those layers run per step. Shards are ``.npz`` files read with
``allow_pickle=False`` (loading never executes code) and written atomically; a damaged shard is skipped and
its texts are encoded again.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path

import numpy as np

__all__ = ["EmbeddingCache", "TokenStateCache", "flush_at_exit"]


class EmbeddingCache:
    """Embeddings by the SHA-256 of each text's UTF-8 bytes: in memory, and in ``folder`` when given.

    On disk, ``shard-*.npz`` files hold ``keys`` (hex digests) and ``embeddings`` (float32 ``[m, D]``); they
    are read with ``allow_pickle=False`` and written atomically (``flush``, at exit, or every ``flush_every``
    new rows).
    """

    def __init__(self, folder: str | Path | None = None, *, flush_every: int = 1024) -> None:
        self.folder = None if folder is None else Path(folder).expanduser()
        self.flush_every = int(flush_every)
        self.rows: dict[str, np.ndarray] = {}
        self._pending: dict[str, np.ndarray] = {}
        self._loaded = False

    def _read_shard(self, data: np.lib.npyio.NpzFile) -> tuple[list[str], list[np.ndarray]]:
        return [str(k) for k in data["keys"].tolist()], list(data["embeddings"].astype(np.float32))

    def _shard_arrays(self, keys: list[str]) -> dict[str, np.ndarray]:
        return {"keys": np.array(keys), "embeddings": np.stack([self._pending[k] for k in keys])}

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.folder is None or not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys, rows = self._read_shard(data)
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard: its texts are simply encoded again
            for key, row in zip(keys, rows):
                self.rows.setdefault(key, row)

    def __len__(self) -> int:
        self._load()
        return len(self.rows)

    def get(self, key: str) -> np.ndarray | None:
        self._load()
        return self.rows.get(key)

    def put(self, key: str, row: np.ndarray) -> None:
        self._load()
        self.rows[key] = row
        if self.folder is not None:
            self._pending[key] = row
            if len(self._pending) >= self.flush_every:
                self.flush()

    def flush(self) -> None:
        """Write pending rows to one new shard (no-op without a folder or pending rows)."""
        if self.folder is None or not self._pending:
            return
        keys = sorted(self._pending)
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:24]
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"shard-{name}.npz"
        temporary = self.folder / f".tmp-{name}-{os.getpid()}.npz"
        np.savez(temporary, **self._shard_arrays(keys))  # type: ignore[arg-type]
        os.replace(temporary, target)
        self._pending.clear()


class TokenStateCache(EmbeddingCache):
    """Token states ``[L, D]`` (float16, ``L`` varies per text) by text digest; shards hold ``keys``,
    ``lengths`` (int64 ``[m]``) and ``states`` (float16 ``[sum L, D]``, the texts' rows one after another)."""

    def _read_shard(self, data: np.lib.npyio.NpzFile) -> tuple[list[str], list[np.ndarray]]:
        keys, lengths, states = data["keys"], data["lengths"], data["states"].astype(np.float16)
        if len(keys) != len(lengths) or int(lengths.sum()) != len(states) or (lengths < 1).any():
            raise ValueError("inconsistent token-state shard")
        return [str(k) for k in keys.tolist()], np.split(states, np.cumsum(lengths)[:-1])

    def _shard_arrays(self, keys: list[str]) -> dict[str, np.ndarray]:
        rows = [self._pending[k] for k in keys]
        return {"keys": np.array(keys), "lengths": np.array([len(r) for r in rows], dtype=np.int64),
                "states": np.concatenate(rows).astype(np.float16)}


def _flush(cache_ref: weakref.ref[EmbeddingCache]) -> None:
    cache = cache_ref()
    if cache is not None:
        try:
            cache.flush()
        except OSError:
            pass


def flush_at_exit(cache: EmbeddingCache) -> None:
    """Flush ``cache`` when the interpreter exits (unless it was garbage-collected before)."""
    import atexit

    atexit.register(_flush, weakref.ref(cache))
