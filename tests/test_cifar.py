"""CIFAR-FS and FC100 (attnmeta.data.cifar) on small archives written in CIFAR-100's binary format."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnmeta
import attnmeta.data.cifar as cifar
from attnmeta.cli import main
from attnmeta.data import make_benchmark
from attnmeta.data.cifar import (
    CIFAR100,
    CIFAR100_COARSE,
    CIFAR100_FINE,
    CIFAR100_MD5,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR_FS_SPLIT,
    FC100_SUPERCLASSES,
    FINE_TO_COARSE,
    RECORD_BYTES,
    cifar_split,
    decode_records,
)
from attnmeta.errors import DataError, UserError
from synthetic import one_line_error

TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1  # pooled: 4 images of each of the 100 classes


def _record(coarse: int, fine: int, image: np.ndarray) -> bytes:
    """One record: coarse label, fine label, the R, G and B planes of a uint8 [3, 32, 32] image."""
    return bytes([coarse, fine]) + np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def _image(fine: int, k: int) -> np.ndarray:
    """Red plane = the class id, green = the example's index, blue = 255 - class id."""
    image = np.empty((3, 32, 32), dtype=np.uint8)
    image[0], image[1], image[2] = fine, 10 * k, 255 - fine
    return image


def _bin(per_class: int, first: int) -> bytes:
    return b"".join(_record(FINE_TO_COARSE[f], f, _image(f, first + k))
                    for k in range(per_class) for f in range(100))


def _release_files() -> dict[str, bytes]:
    return {"train.bin": _bin(TRAIN_PER_CLASS, 0), "test.bin": _bin(TEST_PER_CLASS, TRAIN_PER_CLASS),
            "fine_label_names.txt": "\n".join(CIFAR100_FINE).encode() + b"\n",
            "coarse_label_names.txt": "\n".join(CIFAR100_COARSE).encode() + b"\n"}


def _write_folder(root: Path, files: dict[str, bytes] | None = None) -> Path:
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    for name, content in (files or _release_files()).items():
        (folder / name).write_bytes(content)
    return root


def _write_archive(root: Path, files: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "cifar-100-binary.tar.gz", "w:gz") as tar:
        for name, content in (files or _release_files()).items():
            info = tarfile.TarInfo(f"cifar-100-binary/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return root


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("cifar") / "extracted")


def _bench(name: str, root: Path, **kwargs):
    return make_benchmark(name, root=root, **{"ways": 5, "shots": 1, "queries": 2, **kwargs})


def test_records_decode_to_the_right_pixels_and_labels():
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    image[0] = (np.arange(32 * 32) % 256).reshape(32, 32)  # red: row-major ramp
    image[1] = 7
    image[2, 0, 0], image[2, 31, 30] = 99, 201
    raw = _record(14, 2, image) + _record(0, 30, np.full((3, 32, 32), 5, dtype=np.uint8))  # baby, dolphin
    assert len(raw) == 2 * RECORD_BYTES
    images, fine, coarse = decode_records(raw, "x.bin")
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    assert fine.tolist() == [2, 30] and coarse.tolist() == [14, 0]
    assert images[0, 0, 1, 2] == 34 and images[0, 0, 31, 31] == (32 * 32 - 1) % 256
    assert (images[0, 1] == 7).all() and images[0, 2, 0, 0] == 99 and images[0, 2, 31, 30] == 201
    assert images[0, 2].sum() == 99 + 201 and (images[1] == 5).all()
    assert CIFAR100_FINE[2] == "baby" and CIFAR100_COARSE[14] == "people"


def test_loader_pools_train_and_test_files(folder_root, tmp_path):
    data = CIFAR100(folder_root)
    assert data.images.shape == (400, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.counts() == [4] * 100 and data.cache_file is None  # nothing to cache: the plain folder
    assert data.fine_labels[:100].tolist() == list(range(100))
    assert data.coarse_labels.tolist() == [FINE_TO_COARSE[f] for f in data.fine_labels.tolist()]
    last = data.images[-1]  # test.bin's last record: class 99, example 3
    assert last[0].unique().tolist() == [99] and last[1].unique().tolist() == [30]
    assert last[2].unique().tolist() == [156]
    same = CIFAR100(folder_root / "cifar-100-binary")  # root may be the extracted folder itself
    assert torch.equal(same.images, data.images)
    small = CIFAR100(folder_root, image_size=16, cache_dir=tmp_path / "c")
    assert small.images.shape == (400, 3, 16, 16) and small.cache_file is not None
    assert torch.equal(small.images[:, 0].amax((1, 2)), data.images[:, 0, 0, 0])  # flat planes stay flat


def test_class_splits():
    assert len(CIFAR100_FINE) == len(set(CIFAR100_FINE)) == 100 and len(CIFAR100_COARSE) == 20
    assert np.bincount(FINE_TO_COARSE).tolist() == [5] * 20
    assert CIFAR100_FINE[:3] == ("apple", "aquarium_fish", "baby") and CIFAR100_FINE[-1] == "worm"
    for name, sizes in (("cifar-fs", [64, 16, 20]), ("fc100", [60, 20, 20])):
        parts = cifar_split(name)
        assert [len(parts[p]) for p in ("train", "val", "test")] == sizes
        assert sorted(sum(parts.values(), [])) == list(range(100))  # disjoint, every class used
    names = {p: {CIFAR100_FINE[i] for i in ids} for p, ids in cifar_split("cifar-fs").items()}
    assert names == {p: set(v) for p, v in CIFAR_FS_SPLIT.items()}
    assert {"whale", "sweet_pepper", "pickup_truck"} <= names["test"] and "otter" in names["val"]
    fc100 = cifar_split("fc100")
    for part, superclasses in FC100_SUPERCLASSES.items():
        assert {FINE_TO_COARSE[f] for f in fc100[part]} == set(superclasses)
    assert FC100_SUPERCLASSES["test"] == (0, 7, 12, 14) and FC100_SUPERCLASSES["val"] == (8, 11, 13, 16)
    assert [CIFAR100_COARSE[c] for c in FC100_SUPERCLASSES["test"]] == [
        "aquatic_mammals", "insects", "medium_mammals", "people"]


@pytest.mark.parametrize("name", ["cifar-fs", "fc100"])
def test_episodes_are_normalized_and_from_the_split(folder_root, name):
    bench = _bench(name, folder_root)
    assert bench.name == name and bench.input_shape == (3, 32, 32) and bench.task_type == "classification"
    assert bench.preprocessing["mean"] == list(CIFAR100_MEAN) and bench.preprocessing["resize"] == "bilinear"
    assert bench.default_backbone == {"name": "conv4", "options": {"hidden": 64}}
    parts = cifar_split(name)
    for part in ("train", "val", "test"):
        task = getattr(bench, part).sample()
        assert task.support_x.shape == (5, 3, 32, 32) and task.query_x.shape == (10, 3, 32, 32)
        assert task.support_x.dtype == torch.float32
        assert task.query_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        assert set(task.classes.tolist()) <= set(parts[part])
        red = task.support_x[:, 0, 5, 5]  # red plane = class id, normalized
        expected = (task.classes.float() / 255 - CIFAR100_MEAN[0]) / CIFAR100_STD[0]
        torch.testing.assert_close(red, expected)
    batch = bench.val.sample_batch(3)
    assert batch.support_x.shape == (3, 5, 3, 32, 32) and len(bench.test.fixed_tasks(4, seed=0)) == 4
    assert bench.info["train_classes"] == len(parts["train"]) and bench.info["images"] == 400
    resized = _bench(name, folder_root, image_size=20, cache=False)
    assert resized.input_shape == (3, 20, 20) and resized.train.sample().query_x.shape == (10, 3, 20, 20)


def test_archive_is_read_without_extracting_and_cached(folder_root, tmp_path, monkeypatch):
    root = _write_archive(tmp_path / "a")
    data = CIFAR100(root)
    assert data.source == root / "cifar-100-binary.tar.gz" and not (root / "cifar-100-binary").exists()
    assert torch.equal(data.images, CIFAR100(folder_root).images)
    cache = root / "cifar100-32px.safetensors"
    assert data.cache_file == cache and cache.is_file()

    def no_archive(path):
        raise AssertionError("the archive was read although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(cifar, "_read_archive", no_archive)
        again = CIFAR100(root)
    assert torch.equal(again.images, data.images) and torch.equal(again.fine_labels, data.fine_labels)
    assert torch.equal(again.coarse_labels, data.coarse_labels)
    # a damaged cache is detected and rebuilt
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="is not a valid CIFAR-100 cache .*truncated or damaged.*rebuilding"):
        rebuilt = CIFAR100(root)
    assert torch.equal(rebuilt.images, data.images)
    with monkeypatch.context() as patch:
        patch.setattr(cifar, "_read_archive", no_archive)
        assert torch.equal(CIFAR100(root).images, data.images)  # the rebuilt cache is valid again
    # a readable cache that does not hold what was written is rebuilt too
    from safetensors.torch import load_file, save_file

    stored = load_file(cache)
    stored["coarse"] = torch.zeros_like(stored["coarse"])
    save_file(stored, cache, metadata={"format": "attnmeta-cifar100-v1", "source": _stamp(root)})
    with pytest.warns(UserWarning, match="labels are not CIFAR-100 fine and coarse labels"):
        assert torch.equal(CIFAR100(root).coarse_labels, data.coarse_labels)
    assert torch.equal(CIFAR100(root, cache=False).images, data.images)


def _stamp(root: Path) -> str:
    archive = root / "cifar-100-binary.tar.gz"
    return f"{archive.name}:{archive.stat().st_size}:{archive.stat().st_mtime_ns}"


def _message(kind, *args, **kwargs) -> str:
    return one_line_error(kind, CIFAR100, *args, **kwargs)


def test_missing_data_and_wrong_checksum(tmp_path):
    text = _message(FileNotFoundError, tmp_path / "nowhere")
    assert text.startswith("CIFAR-100 binary release not found (nothing in ")
    assert "expected " in text and "cifar-100-binary/train.bin and test.bin, or " in text
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz" in text and text.endswith(
        "or pass --download (download=True)")
    partial = tmp_path / "partial"
    _write_folder(partial, {"train.bin": _bin(1, 0)})
    assert f"({partial / 'cifar-100-binary' / 'test.bin'} is missing)" in _message(FileNotFoundError, partial)
    fake = _write_archive(tmp_path / "fake")  # not the official archive: download=True checks its md5
    text = _message(ValueError, fake, download=True)
    assert text.startswith(f"checksum mismatch for {fake / 'cifar-100-binary.tar.gz'}: md5 is ")
    assert f"expected {CIFAR100_MD5}" in text and "download it again" in text
    with pytest.raises(ValueError, match=r"cifar-fs needs root= \(--root\)"):
        make_benchmark("cifar-fs", root=None, ways=5, shots=1, queries=1)


def test_corrupt_files_give_one_line_errors(tmp_path):
    files = _release_files()
    truncated = _write_folder(tmp_path / "t", {**files, "train.bin": files["train.bin"][:-1]})
    bin_path = truncated / "cifar-100-binary" / "train.bin"
    size = len(files["train.bin"]) - 1
    assert _message(DataError, truncated) == (
        f"{bin_path} has {size} bytes, not a positive multiple of the 3074-byte CIFAR-100 record (the file "
        "is truncated or corrupt); delete it and download the archive again (--download, or from "
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz)")
    extra = _record(0, 100, _image(0, 0))
    bad_fine = _write_folder(tmp_path / "f", {**files, "test.bin": files["test.bin"] + extra})
    test_path = bad_fine / "cifar-100-binary" / "test.bin"
    assert _message(DataError, bad_fine).startswith(
        f"{test_path}: record 100 has fine label 100, outside 0..99 (not CIFAR-100's binary release, or "
        "corrupt)")
    bad_coarse = _write_folder(tmp_path / "c", {**files, "test.bin": _record(20, 0, _image(0, 0))})
    assert "record 0 has coarse label 20, outside 0..19" in _message(DataError, bad_coarse)
    mixed = _write_folder(tmp_path / "m", {**files, "test.bin": _record(3, 0, _image(0, 0))})  # apple: fruit
    assert _message(DataError, mixed).startswith(
        f"{mixed / 'cifar-100-binary' / 'test.bin'}: record 0 has coarse label 3, but its fine class 0 "
        "(apple) belongs to superclass 4 (fruit_and_vegetables); the file is corrupt")
    archive_root = _write_archive(tmp_path / "a", {**files, "train.bin": files["train.bin"][:-5]})
    assert _message(DataError, archive_root).startswith(
        f"{archive_root / 'cifar-100-binary.tar.gz'} (member cifar-100-binary/train.bin) has ")
    damaged = tmp_path / "d"
    damaged.mkdir()
    content = (_write_archive(tmp_path / "ok") / "cifar-100-binary.tar.gz").read_bytes()
    (damaged / "cifar-100-binary.tar.gz").write_bytes(content[: len(content) // 2])
    assert _message(DataError, damaged) == (
        f"{damaged / 'cifar-100-binary.tar.gz'} is not a readable .tar.gz archive (truncated or damaged); "
        "delete it and download the archive again (--download, or from "
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz)")
    other = _write_archive(tmp_path / "o", {"test.bin": files["test.bin"]})
    assert _message(DataError, other).startswith(
        f"{other / 'cifar-100-binary.tar.gz'} has no member cifar-100-binary/train.bin; it is not "
        "CIFAR-100's")
    linked = tmp_path / "l"
    linked.mkdir()
    with tarfile.open(linked / "cifar-100-binary.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-binary/train.bin")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    assert "member cifar-100-binary/train.bin is a link or not a regular file" in _message(DataError, linked)


def test_bad_benchmark_arguments(folder_root, tmp_path):
    with pytest.raises(UserError, match="the fc100 val split has 20 classes, fewer than ways = 21; lower "
                                        "--ways"):
        _bench("fc100", folder_root, ways=21)
    with pytest.raises(DataError, match=r"class 'apple' \(train split\) has 4 images in .*, fewer than "
                                        r"shots \+ queries = 5; lower --shots/--queries"):
        _bench("cifar-fs", folder_root, shots=3)
    with pytest.raises(ValueError, match="unknown cifar-fs split 'vinyals'"):
        _bench("cifar-fs", folder_root, split="vinyals")
    with pytest.raises(TypeError, match=r"unknown fc100 options \['channels'\]"):
        _bench("fc100", folder_root, channels=1)


def test_cli_train_eval_and_bad_root(folder_root, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "cifar-fs", "--root", str(folder_root), "--algo", "protonet", "--steps", "3",
                 "--ways", "2", "--shots", "1", "--queries", "2", "--meta-batch", "1", "--shift", "2",
                 "--eval-every", "3", "--eval-episodes", "4", "--test-episodes", "4", "--threads", "1",
                 "--set", "backbone_options.hidden=8", "--set", "plot=false", "--run-dir", str(run),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (run / "summary.json").is_file()
    assert main(["eval", str(run), "--episodes", "4", "--quiet"]) == 0  # rebuilt from the recorded config
    # the predictor normalizes new 32x32 RGB images as in training
    clf = attnmeta.load(run)
    pictures = [Image.fromarray(np.moveaxis(_image(f, k), 0, -1)) for f in (2, 98) for k in (0, 1)]
    clf.fit(pictures, ["baby", "baby", "woman", "woman"])
    prepared = clf._prepare_images(pictures[:1], "support")
    red = (2 / 255 - CIFAR100_MEAN[0]) / CIFAR100_STD[0]
    torch.testing.assert_close(prepared[0, 0, 0, 0], torch.tensor(red))
    assert set(clf.predict(pictures)) <= {"baby", "woman"}
    assert main(["train", "fc100", "--root", str(tmp_path / "missing"), "--algo", "protonet",
                 "--run-dir", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-100 binary release not found" in err and "Traceback" not in err
