"""The ``imagefolder`` benchmark: your own folder of class folders of images (attnmeta.data.imagefolder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnmeta
from attnmeta.cli import main
from attnmeta.data import make_benchmark
from attnmeta.data.imagefolder import ImageFolder, default_split
from attnmeta.errors import DataError, UserError

CLASSES = [f"class{i:02d}" for i in range(12)]


def _image(label: int, k: int, suffix: str) -> Image.Image:
    """A 20x24 picture of class ``label``: its own colour and bar position, example ``k`` shifted a little."""
    rng = np.random.default_rng(label * 100 + k)
    pixels = np.full((24, 20, 3), 255, dtype=np.uint8)
    colour = np.array([(label * 67) % 256, (label * 131) % 256, (label * 29) % 256], dtype=np.uint8)
    row = 2 + (label * 3) % 16 + int(rng.integers(0, 3))
    pixels[row:row + 5, 2 + k % 3:16] = colour
    image = Image.fromarray(pixels, "RGB")
    return image.convert("P") if suffix == ".gif" else image


def _folder(root: Path, classes: int = 12, per_class: int = 6) -> Path:
    suffixes = (".png", ".jpg", ".png", ".bmp", ".gif", ".webp")
    for label in range(classes):
        folder = root / CLASSES[label]
        folder.mkdir(parents=True)
        for k in range(per_class):
            suffix = suffixes[k % len(suffixes)] if label == 0 else ".png"
            _image(label, k, suffix).save(folder / f"img{k}{suffix}")
    (root / CLASSES[0] / ".DS_Store").write_bytes(b"junk")  # hidden: skipped
    (root / CLASSES[0] / "notes.txt").write_text("not an image")  # other suffix: skipped
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("images") / "data")


def _bench(root: Path, **kwargs):
    args = {"ways": 2, "shots": 1, "queries": 2, "image_size": 16, **kwargs}
    return make_benchmark("imagefolder", root=root, **args)


def test_loads_every_image_resized_in_the_chosen_mode(data_root):
    rgb = ImageFolder(data_root, image_size=16)
    assert rgb.images.shape == (72, 3, 16, 16) and rgb.images.dtype == torch.uint8
    assert rgb.classes == CLASSES and rgb.counts() == [6] * 12
    gray = ImageFolder(data_root, image_size=10, channels=1)
    assert gray.images.shape == (72, 1, 10, 10)


def test_episodes_shapes_labels_and_preprocessing(data_root):
    b = _bench(data_root)
    assert b.name == "imagefolder" and b.task_type == "classification" and b.input_shape == (3, 16, 16)
    assert b.default_backbone["name"] == "conv4"
    assert b.preprocessing["resize"] == "bilinear" and b.preprocessing["channels"] == 3
    task = b.train.sample()
    assert task.support_x.shape == (2, 3, 16, 16) and task.query_x.shape == (4, 3, 16, 16)
    assert task.support_x.dtype == torch.float32 and 0 <= float(task.support_x.min()) <= 1
    assert task.support_y.tolist() == [0, 1] and task.query_y.tolist() == [0, 0, 1, 1]
    batch = b.val.sample_batch(3)
    assert batch.support_x.shape == (3, 2, 3, 16, 16)
    gray = _bench(data_root, channels=1)
    assert gray.input_shape == (1, 16, 16) and gray.test.sample().query_x.shape == (4, 1, 16, 16)
    # seeded like the other image benchmarks: the same seed gives the same tasks
    again = _bench(data_root)
    assert torch.equal(again.train.sample().support_x, _bench(data_root).train.sample().support_x)


def test_default_split_is_disjoint_deterministic_and_seeded(data_root):
    parts = default_split(CLASSES, seed=0)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [8, 2, 2]
    assert sorted(sum(parts.values(), [])) == CLASSES
    assert default_split(list(reversed(CLASSES)), seed=0) == parts
    assert default_split(CLASSES, seed=1) != parts
    b = _bench(data_root)
    names = {p: {CLASSES[int(i)] for i in getattr(b, p).classes} for p in ("train", "val", "test")}
    assert names == {p: set(v) for p, v in parts.items()}


def test_split_file(data_root, tmp_path):
    split = {"train": CLASSES[:6], "val": CLASSES[6:9], "test": CLASSES[9:11]}  # class11 unused
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    b = _bench(data_root, split_file=str(path))
    for part in ("train", "val", "test"):
        assert [CLASSES[int(i)] for i in getattr(b, part).classes] == split[part]
    assert b.info["split"] == "file"


def _write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "split.json"
    path.write_text(content)
    return path


@pytest.mark.parametrize(("content", "message"), [
    (json.dumps({"train": ["class00", "class01"], "val": ["class01"], "test": ["class02"]}),
     "class 'class01' is listed in both 'train' and 'val'; keep it in one split only"),
    (json.dumps({"train": ["class00", "dog"], "val": ["class01"], "test": ["class02"]}),
     "class 'dog' (train) is not a class folder of the root; fix the name or add the folder"),
    (json.dumps({"train": ["class00"], "val": [], "test": ["class02"]}),
     "'val' must be a non-empty list of class folder names"),
    (json.dumps({"train": ["class00"], "test": ["class02"]}),
     "holds ['test', 'train']; it must be a JSON object"),
    ('{"train": [\n', ":2: invalid JSON"),
])
def test_bad_split_files(data_root, tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(DataError) as info:
        _bench(data_root, split_file=str(path))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_inputs_are_one_line_errors(data_root, tmp_path):
    def error(kind, **kwargs):
        with pytest.raises(kind) as info:
            _bench(**kwargs)
        text = str(info.value)
        assert "\n" not in text
        return text

    missing = tmp_path / "missing"
    assert error(DataError, root=missing) == (
        f"imagefolder root {str(missing)!r} does not exist; point --root (root=) at a folder holding one "
        "subfolder of images per class")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error(DataError, root=empty) == (f"imagefolder root {str(empty)!r} holds no class folders; point "
                                            "--root (root=) at a folder holding one subfolder of images per "
                                            "class")
    no_images = _folder(tmp_path / "no_images", classes=3)
    (no_images / "zzz").mkdir()
    assert error(DataError, root=no_images) == (
        f"class folder {str(no_images / 'zzz')!r} holds no images (.png, .jpg, .jpeg, .bmp, .gif, .webp); "
        "add images or remove the folder")
    broken = _folder(tmp_path / "broken", classes=3)
    bad = broken / "class01" / "img2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert error(DataError, root=broken) == (
        f"image file {str(bad)!r}: cannot decode the image (not an image file PIL can identify); replace or "
        "remove the file")
    few = _folder(tmp_path / "few", classes=4, per_class=3)
    split = _write(tmp_path, json.dumps({"train": ["class00", "class01"], "val": ["class02"],
                                         "test": ["class03"]}))
    assert error(DataError, root=few, split_file=str(split), ways=1, shots=2, queries=2) == (
        f"class 'class00' (train split) has 3 images, fewer than shots + queries = 4; add images to "
        f"{str(few / 'class00')!r} or lower --shots/--queries")
    assert error(UserError, root=data_root, ways=5) == (
        "the imagefolder val split has 2 classes, fewer than ways = 5; lower --ways or give that split more "
        "classes (split_file=)")
    two = _folder(tmp_path / "two", classes=2)
    assert error(DataError, root=two) == ("the default imagefolder split needs at least 3 class folders "
                                          "(train, val, test), found 2; add classes or pass split_file=")
    assert error(UserError, root=data_root, channels=2) == (
        "imagefolder option channels must be 1 (grayscale) or 3 (RGB), got 2")
    assert error(DataError, root=data_root, split_file=str(tmp_path / "nope.json")).startswith(
        f"split file {str(tmp_path / 'nope.json')!r} does not exist")


def _train(data_root: Path, split: Path, run: Path, steps: int, episodes: int) -> int:
    """A tiny 2-way 1-shot ProtoNets run through the CLI on ``data_root`` with the class split ``split``."""
    return main(["train", "imagefolder", "--root", str(data_root), "--algo", "protonet",
                 "--steps", str(steps), "--ways", "2", "--shots", "1", "--queries", "2", "--meta-batch", "1",
                 "--image-size", "16", "--eval-every", str(steps), "--eval-episodes", str(episodes),
                 "--test-episodes", str(episodes), "--threads", "1", "--set", "backbone_options.hidden=8",
                 "--set", f"benchmark_options.split_file={split}", "--set", "plot=false",
                 "--run-dir", str(run), "--quiet"])


def test_cli_train_and_predictor(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    split = _write(tmp_path, json.dumps({"train": CLASSES[:8], "val": CLASSES[8:10], "test": CLASSES[10:]}))
    assert _train(data_root, split, run, steps=3, episodes=4) == 0, capsys.readouterr().err
    assert main(["eval", str(run), "--episodes", "4", "--quiet"]) == 0  # rebuilt from the recorded config
    # a bad input through the CLI: one line, exit status 2
    assert main(["train", "imagefolder", "--root", str(tmp_path / "missing"), "--algo", "protonet",
                 "--run-dir", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "imagefolder root" in err and "does not exist" in err and "Traceback" not in err
    clf = attnmeta.load(run)
    support = [data_root / "class10" / f"img{k}.png" for k in range(2)] + \
              [data_root / "class11" / f"img{k}.png" for k in range(2)]
    clf.fit(support, ["a", "a", "b", "b"])
    queries = [Image.open(data_root / c / "img4.png").resize((50, 60)) for c in ("class10", "class11")]
    predicted = clf.predict(queries)
    assert len(predicted) == 2 and set(predicted) <= {"a", "b"}
    # the predictor makes the training pixels from the files: same resize, scale and channels
    folder = ImageFolder(data_root, image_size=16)
    row = folder.files.index(data_root / "class10" / "img0.png")
    prepared = clf._prepare_images([data_root / "class10" / "img0.png"], "support")
    assert torch.allclose(prepared[0], folder.images[row].float() / 255)


def test_eval_with_more_ways_than_the_validation_split_holds(data_root, tmp_path, capsys):
    """``attnmeta eval --ways N`` builds only the test episodes with N ways: training and validation keep the
    trained shape (validation has 2 classes here, the test split 4)."""
    run = tmp_path / "run"
    split = _write(tmp_path, json.dumps({"train": CLASSES[:6], "val": CLASSES[6:8], "test": CLASSES[8:]}))
    assert _train(data_root, split, run, steps=2, episodes=2) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", str(run), "--ways", "4", "--episodes", "3", "--quiet"]) == 0, capsys.readouterr().err
    assert "imagefolder  protonet  4" in capsys.readouterr().out
    assert (run / "eval-4w1s-3ep-seed0.json").is_file()
    assert main(["eval", str(run), "--ways", "5", "--episodes", "3", "--quiet"]) == 2
    assert capsys.readouterr().err == ("attnmeta eval: error: the imagefolder test split has 4 classes, "
                                       "fewer than ways = 5; lower --ways or give that split more classes "
                                       "(split_file=)\n")
