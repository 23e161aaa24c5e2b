"""Quick, Draw! (attnmeta.data.quickdraw) on small .npy files in the official numpy-bitmap layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import attnmeta.data.quickdraw as quickdraw
from attnmeta.cli import main
from attnmeta.data import make_benchmark
from attnmeta.data.quickdraw import QUICKDRAW_SPLIT_FILE, QuickDraw, quickdraw_split, read_bitmaps
from attnmeta.errors import DataError, UserError
from synthetic import one_line_error

SPLIT = {"train": ["cat", "The Eiffel Tower", "apple", "dog"], "val": ["ant", "bus", "eye"],
         "test": ["axe", "bee", "yoga"]}
PER_CLASS = 6


def _drawings(class_id: int, n: int) -> np.ndarray:
    """uint8 [n, 784]: pixel 0 = the class id, pixel 1 = the row, the rest 3 x class id."""
    rows = np.full((n, 784), 3 * class_id, dtype=np.uint8)
    rows[:, 0], rows[:, 1] = class_id, np.arange(n)
    return rows


def _write(root: Path, names: list[str] | None = None, n: int = PER_CLASS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted(names or [c for part in SPLIT.values() for c in part])):
        np.save(root / f"{name}.npy", _drawings(i, n))
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = _write(tmp_path_factory.mktemp("quickdraw") / "bitmaps")
    (root.parent / "split.json").write_text(json.dumps(SPLIT))
    return root


def _bench(root: Path, **kwargs):
    options = {"ways": 2, "shots": 1, "queries": 2, "split_file": root.parent / "split.json",
               "max_per_class": 4, **kwargs}
    return make_benchmark("quickdraw", root=root, **options)


def test_packaged_split_is_meta_datasets():
    parts = quickdraw_split()
    assert [len(parts[p]) for p in ("train", "val", "test")] == [241, 52, 52]
    every = [name for names in parts.values() for name in names]
    assert len(every) == len(set(every)) == 345  # disjoint, every class used once
    assert {"The Eiffel Tower", "police car", "spoon"} <= set(parts["train"])
    assert {"ant", "teddy-bear", "wristwatch"} <= set(parts["val"])
    assert {"angel", "yoga", "wine bottle"} <= set(parts["test"])
    stored = json.loads(QUICKDRAW_SPLIT_FILE.read_text())
    assert "meta-dataset" in stored["source"] and stored["train"][0] == "hedgehog"
    assert quickdraw.class_url("The Eiffel Tower") == (
        "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/The%20Eiffel%20Tower.npy")


def test_bitmaps_are_memory_mapped_without_pickle(tmp_path, monkeypatch):
    path = tmp_path / "cat.npy"
    np.save(path, _drawings(7, 50))
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(quickdraw.np, "load", spy)
    rows = read_bitmaps(path, 5)
    assert calls == [{"mmap_mode": "r", "allow_pickle": False}]
    assert rows.shape == (5, 28, 28) and rows.dtype == np.uint8
    assert rows[:, 0, 1].tolist() == [0, 1, 2, 3, 4] and (rows[:, 0, 0] == 7).all() and rows[2, 27, 27] == 21
    assert read_bitmaps(path, 1000).shape == (50, 28, 28)


def test_loader_counts_and_pixels(data_root):
    data = QuickDraw(data_root, SPLIT["val"] + SPLIT["train"], max_per_class=4)
    assert data.classes == sorted(SPLIT["val"] + SPLIT["train"]) and set(data.counts.values()) == {4}
    assert not hasattr(data, "images")  # headers only until load()
    data.load()
    assert data.images.shape == (28, 1, 28, 28) and data.labels.tolist() == [i // 4 for i in range(28)]
    assert data.images[:, 0, 0, 1].tolist() == [0, 1, 2, 3] * 7  # the first 4 drawings of each file


def test_episodes_from_the_split(data_root):
    bench = _bench(data_root)
    assert bench.name == "quickdraw" and bench.input_shape == (1, 28, 28)
    assert bench.preprocessing["invert"] is True and bench.preprocessing["channels"] == 1
    assert bench.info == {"split": "file", "images": 40, "max_per_class": 4, "train_classes": 4,
                          "val_classes": 3, "test_classes": 3}
    names = sorted(c for part in SPLIT.values() for c in part)
    for part in ("train", "val", "test"):
        task = getattr(bench, part).sample()
        assert task.support_x.shape == (2, 1, 28, 28) and task.query_x.shape == (4, 1, 28, 28)
        assert task.support_x.dtype == torch.float32 and float(task.query_x.max()) <= 1.0
        assert {names[c] for c in task.classes.tolist()} <= set(SPLIT[part])
        # pixel 0 holds the class id: scaled to [0, 1]
        torch.testing.assert_close(task.support_x[:, 0, 0, 0], task.classes.float() / 255)
    assert _bench(data_root, image_size=14).train.sample().query_x.shape == (4, 1, 14, 14)


def _error(kind, root: Path, **kwargs) -> str:
    return one_line_error(kind, _bench, root, **kwargs)


def test_missing_data(tmp_path, data_root):
    nowhere = tmp_path / "nowhere"
    text = _error(FileNotFoundError, nowhere, split_file=data_root.parent / "split.json")
    assert text.startswith(f"Quick, Draw! folder {str(nowhere)!r} does not exist; get the numpy bitmaps from "
                           "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/<name>.npy")
    partial = _write(tmp_path / "partial", ["cat", "dog"])
    with pytest.raises(FileNotFoundError, match=r"^8 of the 10 Quick, Draw! class files of the split are "
                       r"missing in .*partial \(e\.g\. 'The Eiffel Tower'\.npy, from https://storage\.googleapis"
                       r"\.com/quickdraw_dataset/full/numpy_bitmap/The%20Eiffel%20Tower\.npy\)"):
        _bench(partial, split_file=data_root.parent / "split.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"^345 of the 345 Quick, Draw! class files"):
        make_benchmark("quickdraw", root=empty, ways=5, shots=1, queries=1)
    with pytest.raises(ValueError, match="quickdraw needs root="):
        make_benchmark("quickdraw", root=None, ways=5, shots=1, queries=1)


@pytest.mark.parametrize("array, message", [
    (np.zeros((3, 784), dtype=np.float32),
     r"holds a float32 array of shape \[3, 784\], not uint8 \[N, 784\]"),
    (np.zeros((3, 28, 28), dtype=np.uint8), r"holds a uint8 array of shape \[3, 28, 28\], not uint8"),
    (np.zeros((0, 784), dtype=np.uint8),
     r"holds a uint8 array of shape \[0, 784\], not uint8 \[N, 784\] with N >= 1"),
    (np.array([{"x": 1}, None], dtype=object), r"holds a pickled object array \(object\), which is refused"),
])
def test_bad_class_files(tmp_path, data_root, array, message):
    root = _write(tmp_path / "bad")
    np.save(root / "apple.npy", array, allow_pickle=True)
    text = _error(DataError, root, split_file=data_root.parent / "split.json")
    assert text.startswith(str(root / "apple.npy")) and "delete it and download it again from " in text
    assert re.search(message, text)


def test_not_npy_and_truncated_files(tmp_path, data_root):
    split_file = data_root.parent / "split.json"
    root = _write(tmp_path / "pickle")
    (root / "cat.npy").write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 3)  # a pickle, never loaded
    assert _error(DataError, root, split_file=split_file).startswith(
        f"{root / 'cat.npy'} is not a .npy file (no valid numpy header; truncated or another format)")
    root = _write(tmp_path / "short")
    content = (root / "dog.npy").read_bytes()
    (root / "dog.npy").write_bytes(content[:-100])
    assert _error(DataError, root, split_file=split_file).startswith(
        f"{root / 'dog.npy'} is truncated (shorter than its header's shape)")


def test_bad_benchmark_arguments(data_root, tmp_path):
    with pytest.raises(UserError, match="the quickdraw val split has 3 classes, fewer than ways = 4; lower "
                                        "--ways"):
        _bench(data_root, ways=4)
    with pytest.raises(DataError, match=r"class 'cat' \(train split\) has 4 images in .*, fewer "
                                        r"than shots \+ queries = 5; lower --shots/--queries, or raise "
                                        "max_per_class"):
        _bench(data_root, shots=3)
    with pytest.raises(UserError, match=r"quickdraw cannot --download: the 345 class files are about 37 GB "
                                        "and have no checksums"):
        _bench(data_root, download=True)
    with pytest.raises(UserError, match="quickdraw max_per_class must be an int >= 1, got 0"):
        _bench(data_root, max_per_class=0)
    with pytest.raises(TypeError, match=r"unknown quickdraw options \['channels'\]"):
        _bench(data_root, channels=3)
    with pytest.raises(ValueError, match="unknown quickdraw split 'vinyals'"):
        _bench(data_root, split="vinyals")
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({**SPLIT, "test": ["cat"]}))
    with pytest.raises(DataError, match=r"class 'cat' is listed in both 'train' and 'test'; keep it in one"):
        _bench(data_root, split_file=bad)
    bad.write_text(json.dumps({"train": ["cat"]}))
    with pytest.raises(DataError, match=r"holds \['train'\], not the keys train, val and test"):
        _bench(data_root, split_file=bad)


def test_cli_train_and_bad_root(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "quickdraw", "--root", str(data_root), "--algo", "protonet", "--steps", "3",
                 "--ways", "2", "--shots", "1", "--queries", "2", "--meta-batch", "1", "--eval-every", "3",
                 "--eval-episodes", "4", "--test-episodes", "4", "--threads", "1",
                 "--set", "backbone_options.hidden=8", "--set", "plot=false",
                 "--set", f"benchmark_options.split_file={data_root.parent / 'split.json'}",
                 "--set", "benchmark_options.max_per_class=4", "--run-dir", str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (run / "summary.json").is_file()
    assert main(["train", "quickdraw", "--root", str(tmp_path / "missing"), "--algo", "protonet",
                 "--run-dir", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Quick, Draw! folder" in err and "does not exist" in err and "Traceback" not in err
