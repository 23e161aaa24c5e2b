"""`attnmeta detect RUN --support DIR --images DIR --out DIR` and `attnmeta predict` on a detection run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import attnmeta
from attnmeta.cli import main
from attnmeta.predictor_inputs import read_query_folder, read_support_folder
from attnmeta.train.config import RunConfig
from attnmeta.train.trainer import train
from detection_run_helpers import coco_config, draw_crop, draw_scene, error_of, write_coco


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-step attention-detector run on RGB images (64 px scenes, 16 px crops)."""
    root = write_coco(tmp_path_factory.mktemp("coco"))
    run_dir = tmp_path_factory.mktemp("runs") / "attn"
    options = {"split_file": str(root / "split.json"), "support_size": 16, "mode": "RGB"}
    train(coco_config(root, run_dir, steps=1, eval_every=1, eval_episodes=1, test_episodes=1,
                      benchmark_options=options), quiet=True)
    return run_dir


def _support(folder: Path, crops: dict[str, list[Image.Image]]) -> Path:
    for label, images in crops.items():
        (folder / label).mkdir(parents=True)
        for i, image in enumerate(images):
            image.save(folder / label / f"crop{i}.png")
    return folder


def _images(folder: Path, scenes: dict[str, Image.Image]) -> Path:
    folder.mkdir(parents=True)
    for name, image in scenes.items():
        image.save(folder / name)
    return folder


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """``--support`` (red: 2 crops, blue: 2 crops of other sizes) and ``--images`` (two scenes, a non-image
    file and a hidden file, both skipped)."""
    crops = {"red": [draw_crop(0), draw_crop(0, side=24)],
             "blue": [draw_crop(2, side=12), draw_crop(2, side=20, height=18)]}
    support = _support(tmp_path / "support", crops)
    images = _images(tmp_path / "images", {"a.png": draw_scene([(0, 4, 4, 18), (2, 36, 30, 22)]),
                                           "b.jpg": draw_scene([(2, 10, 40, 16)], size=(80, 70))})
    (images / "notes.txt").write_text("not an image")
    draw_scene([]).save(images / ".hidden.png")
    return support, images


def _detect(run: Path, support: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["detect", str(run), "--support", str(support), "--images", str(images), "--out", str(out), *extra]


def test_detect_writes_detections_json_and_one_png_per_image(run: Path, folders, tmp_path: Path, capsys):
    support, images = folders
    out = tmp_path / "found"
    assert main(_detect(run, support, images, out, "--score-threshold", "0", "--max-detections", "3")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png.png", "b.jpg.png", "detections.json"]
    record = json.loads((out / "detections.json").read_text())
    assert sorted(record) == ["a.png", "b.jpg"]
    total = 0
    for name, boxes in record.items():
        assert 1 <= len(boxes) <= 3, name  # threshold 0: boxes in every image, at most --max-detections
        for box in boxes:
            assert sorted(box) == ["box", "label", "score"] and box["label"] in ("red", "blue")
            assert 0.0 <= box["score"] <= 1.0 and round(box["score"], 4) == box["score"]
            assert len(box["box"]) == 4 and all(round(v, 1) == v for v in box["box"])
        total += len(boxes)
    assert capsys.readouterr().out.startswith(f"{total} boxes in 2 images (score >= 0.0); ")

    # the same boxes as the Python API gives for the same folders
    crops, labels = read_support_folder(support)
    scenes, files = read_query_folder(images, "--images")
    found = attnmeta.load(run, score_threshold=0.0, max_detections=3).fit(crops, labels).detect(scenes)
    assert record == {f.name: [{"label": label, "score": round(score, 4), "box": [round(v, 1) for v in box]}
                               for label, score, box in boxes] for f, boxes in zip(files, found)}

    # drawn copies: RGB, small images enlarged (x4 for 64 px, x3 for 70 px) so that captions stay legible
    with Image.open(out / "a.png.png") as a, Image.open(out / "b.jpg.png") as b:
        assert (a.mode, a.size, b.mode, b.size) == ("RGB", (256, 256), "RGB", (240, 210))


def test_detect_into_an_existing_empty_folder_and_the_default_threshold(run: Path, folders, tmp_path: Path,
                                                                        capsys):
    support, images = folders
    out = tmp_path / "empty"
    out.mkdir()
    assert main(_detect(run, support, images, out)) == 0
    record = json.loads((out / "detections.json").read_text())
    assert all(box["score"] >= 0.3 and len(boxes) <= 20 for boxes in record.values() for box in boxes)
    assert "(score >= 0.3)" in capsys.readouterr().out


def test_images_with_the_same_stem_get_a_png_each(run: Path, folders, tmp_path: Path):
    support, _ = folders
    images = _images(tmp_path / "same-stem", {"a.png": draw_scene([(0, 4, 4, 18)]),
                                              "a.jpg": draw_scene([(2, 30, 30, 18)], size=(80, 70))})
    out = tmp_path / "found"
    assert main(_detect(run, support, images, out)) == 0
    assert sorted(json.loads((out / "detections.json").read_text())) == ["a.jpg", "a.png"]
    assert len(list(out.glob("*.png"))) == 2


def test_a_non_empty_out_is_refused_and_left_alone(run: Path, folders, tmp_path: Path, capsys):
    support, images = folders
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "detections.json").write_text("{}")
    assert error_of(_detect(run, support, images, out), capsys) == (
        2, f"attnmeta detect: error: --out {str(out)!r} exists and is not an empty folder; name a new or "
           "empty folder (nothing there is overwritten)\n")
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "keep.txt"]
    assert (out / "keep.txt").read_text() == "precious" and (out / "detections.json").read_text() == "{}"

    file = tmp_path / "a-file"
    file.write_text("x")
    assert error_of(_detect(run, support, images, file), capsys) == (
        2, f"attnmeta detect: error: --out {str(file)!r} exists and is not an empty folder; name a new or "
           "empty folder (nothing there is overwritten)\n")
    assert file.read_text() == "x"


def test_bad_detect_inputs_are_one_line_and_write_nothing(run: Path, folders, tmp_path: Path, capsys):
    support, images = folders
    out = tmp_path / "out"
    unequal = _support(tmp_path / "unequal", {"red": [draw_crop(0), draw_crop(0)], "blue": [draw_crop(2)]})
    assert error_of(_detect(run, unequal, images, out), capsys) == (
        2, "attnmeta detect: error: every label needs the same number of support images, got 'blue': 1, "
           "'red': 2\n")
    small = _images(tmp_path / "small", {"tiny.png": draw_scene([], size=(20, 10))})
    assert error_of(_detect(run, support, small, out), capsys) == (
        2, "attnmeta detect: error: images[0] is 20x10 pixels, smaller than the 16x16 support crops this run "
           "detects; pass larger images\n")
    assert error_of(_detect(run, tmp_path / "nowhere", images, out), capsys) == (
        2, f"attnmeta detect: error: --support {str(tmp_path / 'nowhere')!r} is not a folder\n")
    empty = tmp_path / "no-images"
    empty.mkdir()
    code, err = error_of(_detect(run, support, empty, out), capsys)
    assert code == 2 and err.startswith(f"attnmeta detect: error: --images {str(empty)!r} holds no images (")
    assert error_of(_detect(run, support, images, out, "--score-threshold", "2"), capsys) == (
        2, "attnmeta detect: error: score_threshold must lie in [0, 1] and max_detections be >= 1, got 2.0 "
           "and 20\n")
    assert not out.exists()


def test_predict_on_a_detection_run_and_detect_on_another_run(run: Path, folders, tmp_path: Path, capsys):
    support, images = folders
    assert error_of(["predict", str(run), "--support", str(support), "--query", str(images)], capsys) == (
        2, f"attnmeta predict: error: {str(run)!r} is a detection run; find its classes in images with "
           "`attnmeta detect RUN --support DIR --images DIR --out DIR`\n")

    other = tmp_path / "sinusoid"
    train(RunConfig(benchmark="sinusoid", algo="maml", steps=1, meta_batch=1, eval_every=1, eval_episodes=1,
                    test_episodes=1, threads=1, plot=False, run_dir=str(other)), quiet=True)
    out = tmp_path / "out"
    assert error_of(_detect(other, support, images, out), capsys) == (
        2, f"attnmeta detect: error: {str(other)!r} is not a detection run; use `attnmeta predict` for "
           "classification\n")
    assert not out.exists()


def test_detect_documents_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--support", "--images", "--out", "--score-threshold",
                                        "--max-detections", "detections.json"))
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "    detect " in capsys.readouterr().out
