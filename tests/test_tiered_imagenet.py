"""tieredImageNet (attnmeta.data.tiered_imagenet) on tiny JPEGs in ImageNet's train/<wnid>/ layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import attnmeta.data.tiered_imagenet as tiered
from attnmeta.data import make_benchmark
from attnmeta.data.miniimagenet import MINIIMAGENET_MEAN, MINIIMAGENET_STD
from attnmeta.data.tiered_imagenet import TIERED_SPLIT_FILE, TieredImageNet, tiered_classes, tiered_split
from attnmeta.errors import DataError, UserError

SPLIT = {"train": {"n00000001": ["n01000001", "n01000002"], "n00000002": ["n01000003"]},
         "val": {"n00000003": ["n02000001", "n02000002", "n02000003"]},
         "test": {"n00000004": ["n03000001", "n03000002", "n03000003"]}}
WNIDS = sorted(w for groups in SPLIT.values() for members in groups.values() for w in members)
PER_CLASS = 8


def _color(wnid: str, k: int) -> tuple[int, int, int]:
    return (20 * WNIDS.index(wnid), 25 * k, 200)


def _write(root: Path, wnids: list[str] = WNIDS, per_class: int = PER_CLASS) -> Path:
    for wnid in wnids:
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for k in range(per_class):
            Image.new("RGB", (24, 18), _color(wnid, k)).save(folder / f"{wnid}_{k}.JPEG", quality=95)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = _write(tmp_path_factory.mktemp("tiered") / "imagenet")
    (root / "split.json").write_text(json.dumps(SPLIT))
    return root


def _bench(root: Path, cache_dir: Path, **kwargs):
    options = {"ways": 2, "shots": 1, "queries": 2, "split_file": root / "split.json", "max_per_class": 4,
               "image_size": 16, "cache_dir": cache_dir, **kwargs}
    return make_benchmark("tiered-imagenet", root=root, **options)


def test_packaged_split_is_ren_et_al():
    parts = tiered_split()
    assert [len(parts[p]) for p in ("train", "val", "test")] == [20, 6, 8]  # 34 high-level categories
    classes = tiered_classes()
    assert [len(classes[p]) for p in ("train", "val", "test")] == [351, 97, 160]
    every = [w for names in classes.values() for w in names]
    assert len(every) == len(set(every)) == 608
    categories = [c for groups in parts.values() for c in groups]
    assert len(set(categories)) == 34 and not set(categories) & set(every)
    assert "n01440764" in parts["test"]["n01473806"] and "n02099267" in parts["val"]["n02098550"]
    assert parts["train"]["n01524359"][0] == "n01530575"
    assert "few-shot-ssl-public" in json.loads(TIERED_SPLIT_FILE.read_text())["source"]


def test_seeded_selection_decoding_and_cache(data_root, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    data = TieredImageNet(data_root, "val", image_size=16, max_per_class=4, cache_dir=cache_dir,
                          split_file=data_root / "split.json")
    assert data.classes == ["n02000001", "n02000002", "n02000003"]
    assert data.counts == dict.fromkeys(data.classes, 4)
    assert data.available == dict.fromkeys(data.classes, 8)
    again = TieredImageNet(data_root, "val", image_size=16, max_per_class=4, cache_dir=cache_dir,
                           split_file=data_root / "split.json")
    other = TieredImageNet(data_root, "val", image_size=16, max_per_class=4, select_seed=1,
                           cache_dir=cache_dir, split_file=data_root / "split.json")
    assert again.files == data.files and other.files != data.files and again.cache_file == data.cache_file
    assert other.cache_file != data.cache_file
    assert all(names == sorted(names) and len(set(names)) == 4 for names in data.files.values())
    assert data.cache_file is not None and not data.cache_file.exists()  # nothing decoded yet
    images, labels = data.images, data.labels
    assert images.shape == (12, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for row, (wnid, name) in enumerate((w, n) for w, chosen in data.files.items() for n in chosen):
        k = int(name.split("_")[1].split(".")[0])
        expected = torch.tensor(_color(wnid, k), dtype=torch.float32)
        assert (images[row].float().mean((1, 2)) - expected).abs().max() <= 3  # flat JPEG colours
    assert data.cache_file.is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("images were decoded although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(tiered, "decode_image", no_decoding)
        assert torch.equal(again.images, images) and torch.equal(again.labels, labels)
    data.cache_file.write_bytes(data.cache_file.read_bytes()[:500])
    fresh = TieredImageNet(data_root, "val", image_size=16, max_per_class=4, cache_dir=cache_dir,
                           split_file=data_root / "split.json")
    with pytest.warns(UserWarning, match="is not a valid tieredImageNet cache .*truncated or damaged.*"
                                         "rebuilding"):
        assert torch.equal(fresh.images, images)
    assert TieredImageNet(data_root / "train", "val", image_size=16, max_per_class=4, cache=False,
                          split_file=data_root / "split.json").cache_file is None  # root = the train folder


def test_episodes_are_normalized_and_from_the_split(data_root, tmp_path):
    bench = _bench(data_root, tmp_path / "cache")
    assert bench.name == "tiered-imagenet" and bench.input_shape == (3, 16, 16)
    assert bench.preprocessing["mean"] == list(MINIIMAGENET_MEAN) and bench.preprocessing["invert"] is False
    assert bench.info["train_classes"] == 3 and bench.info["val_images"] == 12
    assert bench.info["split"] == "file"
    split_classes = tiered_classes(data_root / "split.json")
    for part in ("train", "val", "test"):
        task = getattr(bench, part).sample()
        assert task.support_x.shape == (2, 3, 16, 16) and task.query_x.shape == (4, 3, 16, 16)
        assert task.query_y.tolist() == [0, 0, 1, 1] and task.support_x.dtype == torch.float32
        assert set(task.classes.tolist()) <= set(range(len(split_classes[part])))
        blue = task.support_x[:, 2].mean((1, 2))
        expected = (200 / 255 - MINIIMAGENET_MEAN[2]) / MINIIMAGENET_STD[2]
        torch.testing.assert_close(blue, torch.full((2,), expected), atol=0.05, rtol=0)
    assert len(list((tmp_path / "cache").glob("tiered-imagenet-*-16px-*.safetensors"))) == 3


def _error(kind, root: Path, cache_dir: Path, **kwargs) -> str:
    with pytest.raises(kind) as info:
        _bench(root, cache_dir, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_missing_data(tmp_path, data_root):
    nowhere = tmp_path / "nowhere"
    assert _error(FileNotFoundError, nowhere, tmp_path) == (
        f"ImageNet folder {str(nowhere)!r} does not exist; expected ILSVRC-2012 training images as "
        "ROOT/train/<wnid>/*.JPEG: get ILSVRC2012_img_train.tar (ImageNet account needed, "
        "https://image-net.org/download-images.php), extract it and each <wnid>.tar in it into "
        "ROOT/train/<wnid>/, and pass ROOT as --root (root=)")
    partial = _write(tmp_path / "partial", WNIDS[:4])
    with pytest.raises(FileNotFoundError, match=r"^2 of the 3 tieredImageNet val classes have no folder in "
                       r".*partial/train \(e\.g\. n02000002\); expected ILSVRC-2012"):
        _bench(partial, tmp_path, split_file=data_root / "split.json")
    with pytest.raises(FileNotFoundError, match=r"^351 of the 351 tieredImageNet train classes have no "):
        make_benchmark("tiered-imagenet", root=partial, ways=5, shots=1, queries=1)
    with pytest.raises(ValueError, match="tiered-imagenet needs root= "):
        make_benchmark("tiered-imagenet", root=None, ways=5, shots=1, queries=1)


def test_bad_images_and_folders(tmp_path, data_root):
    root = _write(tmp_path / "corrupt")
    bad = root / "train" / "n01000002" / "n01000002_3.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])
    text = _error(DataError, root, tmp_path / "c1", split_file=data_root / "split.json", max_per_class=8)
    assert text.startswith(f"image file {str(bad)!r}: cannot decode the image")
    assert "replace or remove" in text
    root = _write(tmp_path / "empty", WNIDS, per_class=0)
    folder = root / "train" / "n01000001"
    assert _error(DataError, root, tmp_path / "c2", split_file=data_root / "split.json") == (
        f"class folder {str(folder)!r} holds no .JPEG images; extract its <wnid>.tar from "
        "ILSVRC2012_img_train.tar there, or remove the class from the split")


def test_bad_benchmark_arguments(data_root, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="the tiered-imagenet train split has 3 classes, fewer than ways = 4; "
                                        "lower --ways"):
        _bench(data_root, cache, ways=4)
    with pytest.raises(DataError, match=r"class 'n01000001' \(train split\) has 4 images in .*, fewer than "
                                        r"shots \+ queries = 5; lower --shots/--queries"):
        _bench(data_root, cache, shots=3)
    with pytest.raises(UserError, match="tiered-imagenet cannot --download: ImageNet needs an account"):
        _bench(data_root, cache, download=True)
    with pytest.raises(TypeError, match=r"unknown tiered-imagenet options \['channels'\]"):
        _bench(data_root, cache, channels=3)
    with pytest.raises(UserError, match="tiered-imagenet max_per_class must be an int >= 1, got 0"):
        _bench(data_root, cache, max_per_class=0)
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({**SPLIT, "test": {"n00000001": ["n03000001"]}}))
    with pytest.raises(DataError, match="category 'n00000001' is in more than one split"):
        _bench(data_root, cache, split_file=split_file)
    split_file.write_text(json.dumps({**SPLIT, "test": {"n00000004": ["cat"]}}))
    with pytest.raises(DataError, match="'test' holds 'cat', not a valid class name"):
        _bench(data_root, cache, split_file=split_file)
    split_file.write_text(json.dumps({**SPLIT, "test": {"n00000004": ["n01000001"]}}))
    with pytest.raises(DataError, match="class 'n01000001' is listed in both 'train' and 'test'"):
        _bench(data_root, cache, split_file=split_file)
