"""The sentence encoder's on-disk caches (attnmeta.nn.sentence_cache): no extra needed."""

from __future__ import annotations

import numpy as np
import pytest

from attnmeta.nn.sentence_cache import EmbeddingCache, TokenStateCache


def test_embeddings_round_trip_through_a_shard(tmp_path):
    cache = EmbeddingCache(tmp_path)
    rows = {"a": np.arange(4, dtype=np.float32), "b": -np.arange(4, dtype=np.float32)}
    for key, row in rows.items():
        cache.put(key, row)
    cache.flush()
    assert len(list(tmp_path.glob("shard-*.npz"))) == 1
    again = EmbeddingCache(tmp_path)
    assert len(again) == 2 and all(np.array_equal(again.get(k), v) for k, v in rows.items())


def test_token_states_keep_each_texts_length_in_float16(tmp_path):
    rng = np.random.default_rng(0)
    rows = {f"text{i}": rng.normal(size=(length, 3)).astype(np.float16) for i, length in enumerate((1, 5, 2))}
    cache = TokenStateCache(tmp_path, flush_every=2)          # a shard after the second row, then one more
    for key, row in rows.items():
        cache.put(key, row)
    cache.flush()
    assert len(list(tmp_path.glob("shard-*.npz"))) == 2
    again = TokenStateCache(tmp_path)
    assert len(again) == 3
    for key, row in rows.items():
        got = again.get(key)
        assert got is not None and got.dtype == np.float16 and np.array_equal(got, row)


@pytest.mark.parametrize("arrays", [
    {"keys": np.array(["a", "b"]), "lengths": np.array([2, 2]), "states": np.zeros((3, 4))},   # 4 != 3 rows
    {"keys": np.array(["a"]), "lengths": np.array([0]), "states": np.zeros((0, 4))},           # empty text
    {"keys": np.array(["a"]), "states": np.zeros((1, 4))},                                      # no lengths
    {"keys": np.array([{"code": 1}], dtype=object), "lengths": np.array([1]), "states": np.zeros((1, 4))},
])
def test_a_damaged_or_pickled_token_shard_is_skipped(tmp_path, arrays):
    np.savez(tmp_path / "shard-bad.npz", **arrays)
    good = TokenStateCache(tmp_path / "good")
    good.put("c", np.ones((2, 4), dtype=np.float16))
    good.flush()
    next((tmp_path / "good").glob("shard-*.npz")).rename(tmp_path / "shard-good.npz")
    cache = TokenStateCache(tmp_path)
    assert cache.get("a") is None and cache.get("c") is not None   # the bad shard's texts are encoded again
