"""Few-shot detection runs in the one trainer: run files, exact resume, baselines, `attnmeta eval`, config
errors, and the predictor (`attnmeta.load` -> FewShotDetector). `attnmeta detect` is in test_detect_cli.py.

Everything runs on a tiny COCO-format data set written into a temporary folder (detection_run_helpers.py);
only the last test needs the shared Omniglot archives.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import attnmeta
from attnmeta.cli import _train_config, build_parser, main
from attnmeta.detector import FewShotDetector
from attnmeta.learners.detection.registry import valid_detector_options
from attnmeta.train.checkpoint import CheckpointManager
from attnmeta.train.config import RunConfig
from attnmeta.train.detection_run import METRIC_NOTE
from attnmeta.train.trainer import final_weights, train
from detection_run_helpers import (
    TINY_DETECTOR,
    coco_config,
    draw_crop,
    draw_scene,
    error_of,
    write_coco,
)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def run(coco_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step attention-detector run on grey ("L") images, shared by the tests below (they only add
    eval files to it)."""
    run_dir = tmp_path_factory.mktemp("runs") / "attn"
    train(coco_config(coco_root, run_dir, steps=2, eval_every=1), quiet=True)
    return run_dir


# -- the run folder --------------------------------------------------------------------------------------
def test_a_detection_run_writes_config_run_info_metrics_and_summary(run: Path):
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["benchmark"], config["algo"], config["ways"], config["shots"], config["queries"]) == (
        "coco", "attention-detector", 2, 1, 2)
    assert config["algo_options"] == TINY_DETECTOR
    info = json.loads((run / "run.json").read_text())
    assert info["task_type"] == "detection" and info["benchmark"] == "coco"
    assert info["input_shape"] == [1, 64, 64]
    assert info["preprocessing"] == {"mode": "L", "support_size": 16, "image_size": 64, "invert": False}

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert "map50" in rows[0]
    val = [r for r in rows if r["phase"] == "val"]
    assert [int(r["step"]) for r in val] == [1, 2]
    assert all(0.0 <= float(r["map50"]) <= 1.0 for r in val)

    summary = json.loads((run / "summary.json").read_text())
    test = summary["test"]
    assert test["metric"] == "map50" and test["n"] == 2 and 0.0 <= test["mean"] <= 1.0
    assert summary["map"]["metric"] == "map" and summary["map"]["n"] == 2
    assert 0.0 <= summary["map"]["mean"] <= test["mean"] + 1e-9  # mAP@[.5:.95] <= mAP@0.5
    assert summary["ms_per_image"] > 0
    assert summary["trained"] is True and summary["steps"] == 2
    assert summary["metric_note"] == METRIC_NOTE
    assert summary["best"]["metric"] == "map50"
    assert CheckpointManager(run / "checkpoints").latest_valid() is not None


def test_a_resumed_detection_run_ends_with_bit_identical_weights(coco_root: Path, tmp_path: Path):
    straight = train(coco_config(coco_root, tmp_path / "straight", steps=4), quiet=True)
    train(coco_config(coco_root, tmp_path / "split", steps=2), quiet=True)
    resumed = train(coco_config(coco_root, tmp_path / "split", steps=4), quiet=True, resume=True)
    a, b = final_weights(straight.run_dir), final_weights(resumed.run_dir)
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    timing = "seconds_per_task"
    for key in ("test", "map"):
        assert {k: v for k, v in resumed.summary[key].items() if k != timing} == {
            k: v for k, v in straight.summary[key].items() if k != timing}
    assert resumed.summary["steps"] == straight.summary["steps"] == 4


def test_template_matching_takes_no_step_but_tests_and_loads(coco_root: Path, tmp_path: Path, capsys):
    run_dir = tmp_path / "tm"
    result = train(coco_config(coco_root, run_dir, algo="template-matching", algo_options={}, steps=3),
                   quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["trained"] is False and summary["steps"] == 0
    assert summary["test"]["metric"] == "map50" and summary["test"]["n"] == 2
    assert summary["map"]["n"] == 2 and "ms_per_image" in summary
    assert CheckpointManager(run_dir / "checkpoints").latest_valid() is not None

    capsys.readouterr()
    assert main(["eval", str(run_dir), "--episodes", "2", "--quiet"]) == 0
    assert "mAP@0.5" in capsys.readouterr().out
    assert (run_dir / "eval-2w1s2q-2ep-seed0.json").is_file()
    detector = attnmeta.load(run_dir)
    assert isinstance(detector, FewShotDetector) and not list(detector.learner.parameters())
    crops = [draw_crop(0), draw_crop(1)]
    found = detector.fit(crops, ["a", "b"]).detect([draw_scene([(0, 4, 4, 20), (1, 36, 30, 20)])])
    assert len(found) == 1 and all(label in ("a", "b") for label, _, _ in found[0])


def test_protonet_windows_trains_a_couple_of_steps(coco_root: Path, tmp_path: Path):
    options = {"hidden": 8, "window_size": 16, "sizes": [16, 24]}
    result = train(coco_config(coco_root, tmp_path / "pw", algo="protonet-windows", algo_options=options,
                               steps=2), quiet=True)
    summary = result.summary
    assert summary["trained"] is True and summary["steps"] == 2 and summary["test"]["n"] == 2
    with open(tmp_path / "pw" / "metrics.csv", newline="") as f:
        train_rows = [r for r in csv.DictReader(f) if r["phase"] == "train"]
    assert [int(r["step"]) for r in train_rows][-1] == 2
    assert np.isfinite(float(train_rows[-1]["loss"]))


@pytest.mark.parametrize(("algo", "options"), [
    ("transfer-detector", {"hidden": 16, "finetune_steps": 5, "finetune_scenes": 4, "sizes": [10, 24]}),
    ("prototype-detector", {"hidden": 16, "train_scenes": 2, "scenes": 4, "sizes": [10, 24]}),
])
def test_base_trained_detectors_train_and_the_predictor_uses_them(coco_root: Path, tmp_path: Path, algo: str,
                                                                  options: dict):
    config = coco_config(coco_root, tmp_path / algo, algo=algo, algo_options=options, steps=2)
    result = train(config, quiet=True)
    assert result.summary["trained"] is True and result.summary["steps"] == 2
    detector = attnmeta.load(tmp_path / algo, score_threshold=0.0, max_detections=2)
    detector.fit([draw_crop(0), draw_crop(3)], ["a", "b"])
    found = detector.detect([draw_scene([(0, 4, 4, 18)]), draw_scene([(3, 10, 40, 16)], size=(80, 70))])
    assert [len(boxes) for boxes in found] == [2, 2]
    assert all(label in ("a", "b") and 0 < score < 1 for boxes in found for label, score, _ in boxes)


def test_one_way_episodes_are_allowed_for_detection(coco_root: Path, tmp_path: Path):
    result = train(coco_config(coco_root, tmp_path / "one", ways=1, steps=1, eval_episodes=1,
                               test_episodes=1), quiet=True)
    assert result.summary["ways"] == 1 and result.summary["test"]["n"] == 1


def test_eval_needs_only_the_test_split_to_fill_its_episodes(coco_root: Path, tmp_path: Path, capsys):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [1], "val": [2], "test": [3, 4, 5, 6]}))
    options = {"split_file": str(split), "support_size": 16, "mode": "L"}
    run_dir = tmp_path / "one-way"
    train(coco_config(coco_root, run_dir, ways=1, steps=1, eval_episodes=1, test_episodes=1,
                      benchmark_options=options), quiet=True)
    assert main(["eval", str(run_dir), "--ways", "2", "--episodes", "1", "--quiet"]) == 0, (
        capsys.readouterr().err)
    assert json.loads((run_dir / "eval-2w1s2q-1ep-seed0.json").read_text())["ways"] == 2


# -- the CLI: train, eval, and errors ----------------------------------------------------------------------
def test_cli_trains_a_coco_run_and_evaluates_it(coco_root: Path, tmp_path: Path, capsys):
    run_dir = tmp_path / "cli"
    args = ["train", "coco", "--root", str(coco_root), "--ways", "2", "--shots", "1", "--queries", "2",
            "--steps", "2", "--eval-every", "2", "--eval-episodes", "2", "--test-episodes", "2",
            "--meta-batch", "1", "--image-size", "64", "--threads", "1", "--run-dir", str(run_dir),
            "--set", f"benchmark_options.split_file={coco_root / 'split.json'}",
            "--set", "benchmark_options.support_size=16", "--set", "benchmark_options.mode=RGB",
            "--set", "algo_options.hidden=16", "--set", "algo_options.scenes=2", "--set", "plot=false",
            "--quiet"]
    assert main(args) == 0  # no --algo: prototype-detector is the detection benchmarks' default
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("coco"))
    assert row.split()[:6] == ["coco", "prototype-detector", "2", "1", "2", "map50"]
    assert json.loads((run_dir / "run.json").read_text())["input_shape"] == [3, 64, 64]

    assert main(["eval", str(run_dir), "--episodes", "2", "--shots", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("mAP@0.5 ") and "+/-" in lines[0] and lines[0].endswith("%")
    assert lines[1].startswith("mAP@[.5:.95] ") and "+/-" in lines[1]
    assert lines[2].split() == ["episodes", "2"] and lines[3].startswith("ms per image")
    written = json.loads((run_dir / "eval-2w1s2q-2ep-seed0.json").read_text())
    assert (written["ways"], written["shots"], written["queries"], written["step"]) == (2, 1, 2, 2)
    assert written["metric_note"] == METRIC_NOTE and str(run_dir / "eval-2w1s2q-2ep-seed0.json") in out
    assert written["map50"]["n"] == 2 and len(written["map50"]["per_episode"]) == 2


def test_cli_default_learner_of_detection_benchmarks():
    for benchmark in ("coco", "omniglot-scenes"):
        args = build_parser().parse_args(["train", benchmark])
        assert _train_config(args).algo == "prototype-detector"


@pytest.mark.parametrize("flags, shown", [
    (["--transductive", "bd-cspn"], "--transductive"),
    (["--rotation-ensemble"], "--rotation-ensemble"),
    (["--oos"], "--oos"),
    (["--oos", "--rotation-ensemble"], "--rotation-ensemble, --oos"),
])
def test_eval_options_of_classification_are_one_line_errors(run: Path, flags: list[str], shown: str, capsys):
    before = sorted(p.name for p in run.iterdir())
    assert error_of(["eval", str(run), "--episodes", "1", *flags], capsys) == (
        2, f"attnmeta eval: error: {shown} do not apply to detection runs; use --ways, --shots, --queries "
           "(scenes), --episodes and --seed\n")
    assert sorted(p.name for p in run.iterdir()) == before


def test_eval_quiet_shows_no_progress_bar(run: Path, capsys):
    assert main(["eval", str(run), "--episodes", "1", "--seed", "3", "--quiet"]) == 0
    assert "eval:" not in capsys.readouterr().err


def test_eval_with_no_valid_episodes_is_one_line(run: Path, capsys):
    assert error_of(["eval", str(run), "--episodes", "-1"], capsys) == (
        2, "attnmeta eval: error: --episodes must be >= 1, got -1\n")


@pytest.mark.parametrize(("args", "message"), [
    (["train", "coco", "--algo", "protonet"],
     "benchmark 'coco' is detection: choose --algo attention-detector or protonet-windows or "
     "template-matching or transfer-detector or prototype-detector (not 'protonet')"),
    (["train", "omniglot-scenes", "--algo", "protonet"],
     "benchmark 'omniglot-scenes' is detection: choose --algo attention-detector or protonet-windows or "
     "template-matching or transfer-detector or prototype-detector (not 'protonet')"),
    (["train", "omniglot", "--algo", "attention-detector"],
     "learner 'attention-detector' is for the detection benchmarks (omniglot-scenes, coco), not 'omniglot'; "
     "choose another --algo or benchmark"),
    (["train", "navigation", "--algo", "template-matching"],
     "benchmark 'navigation' is meta-RL: choose --algo maml-rl or snail-rl (not 'template-matching')"),
    (["train", "coco", "--algo", "maml-rl"],
     "learner 'maml-rl' is for the meta-RL benchmarks (navigation, halfcheetah-dir, halfcheetah-vel), not "
     "'coco'; choose another --algo or benchmark"),
    (["train", "coco", "--set", "algo_options.bogus=1"],
     "config key 'algo_options': prototype-detector takes no option 'bogus'; valid: "
     + ", ".join(valid_detector_options("prototype-detector"))),
    (["train", "coco", "--algo", "template-matching", "--set", "algo_options.hidden=8"],
     "config key 'algo_options': template-matching takes no option 'hidden'; valid: "
     + ", ".join(valid_detector_options("template-matching"))),
    (["train", "coco", "--shift", "2"],
     "config key 'augment' is for classification runs; detection benchmark 'coco' does not use it: drop it"),
    (["train", "coco", "--ema", "0.99"],
     "config key 'ema_decay' is for classification runs; detection benchmark 'coco' does not use it: drop "
     "it"),
])
def test_bad_detection_configs_are_one_line(coco_root: Path, tmp_path: Path, args, message, capsys):
    full = [*args, "--root", str(coco_root), "--run-dir", str(tmp_path / "r"), "--quiet",
            "--set", f"benchmark_options.split_file={coco_root / 'split.json'}"]
    assert error_of(full, capsys) == (2, f"attnmeta train: error: {message}\n")
    assert not (tmp_path / "r").exists()


def test_valid_detector_options_name_the_constructor_arguments():
    assert {"hidden", "head_hidden", "heads", "key_size"} <= set(valid_detector_options("attention-detector"))
    assert "in_channels" not in valid_detector_options("protonet-windows")
    assert valid_detector_options("template-matching") == sorted(
        ["sizes", "min_distance", "nms_iou", "ink_threshold"])


def test_detection_runs_refuse_a_ready_made_bench(coco_root: Path, tmp_path: Path):
    from attnmeta.data.detection_benchmarks import make_detection_benchmark

    bench = make_detection_benchmark("coco", root=coco_root, ways=2, shots=1, queries=2, image_size=64,
                                     split_file=str(coco_root / "split.json"), support_size=16, mode="L")
    with pytest.raises(ValueError) as error:
        train(coco_config(coco_root, tmp_path / "b", steps=1), quiet=True, bench=bench)
    assert str(error.value) == "bench.task_type must be 'classification' or 'regression', got 'detection'"
    assert not (tmp_path / "b").exists()


# -- the predictor ------------------------------------------------------------------------------------
def test_load_gives_a_detector_that_finds_the_users_labels(run: Path):
    detector = attnmeta.load(run, score_threshold=0.0, max_detections=3)
    assert isinstance(detector, FewShotDetector)
    assert (detector.mode, detector.support_size, detector.invert) == ("L", 16, False)
    crops = [draw_crop(0), draw_crop(3), draw_crop(0, side=20), draw_crop(3, side=11)]
    labels = ["red square", 7, "red square", 7]
    assert detector.fit(crops, labels) is detector and detector.classes_ == ["red square", 7]
    images = [draw_scene([(0, 4, 4, 18), (3, 36, 30, 22)]),
              draw_scene([(3, 10, 40, 16)], size=(80, 70)),
              draw_scene([(0, 4, 60, 20)], size=(30, 90)),  # portrait
              np.asarray(draw_scene([(0, 30, 8, 20)]))]  # a uint8 array works as well as a PIL image
    found = detector.detect(images)
    assert len(found) == 4
    for boxes, (width, height) in zip(found, [(64, 64), (80, 70), (30, 90), (64, 64)]):
        assert 1 <= len(boxes) <= 3  # threshold 0: every image gets boxes, at most max_detections
        scores = [score for _, score, _ in boxes]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        for label, score, box in boxes:
            assert label in ("red square", 7) and isinstance(score, float)
            assert isinstance(box, tuple) and len(box) == 4 and all(isinstance(v, float) for v in box)
            x0, y0, x1, y1 = box
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height, box  # in the image's own pixels


def test_score_threshold_and_max_detections_bound_the_boxes(run: Path):
    crops, labels = [draw_crop(0), draw_crop(3)], ["a", "b"]
    scenes = [draw_scene([(0, 4, 4, 18), (3, 36, 30, 22)]), draw_scene([(3, 20, 20, 24)])]
    everything = attnmeta.load(run, score_threshold=0.0, max_detections=100).fit(crops, labels).detect(scenes)
    for threshold, most in ((0.0, 1), (0.3, 20), (0.05, 2)):
        kept = attnmeta.load(run, score_threshold=threshold, max_detections=most).fit(crops, labels)
        for boxes, full in zip(kept.detect(scenes), everything):
            assert len(boxes) <= most and all(score >= threshold for _, score, _ in boxes)
            assert boxes == [b for b in full if b[1] >= threshold][:most]


def test_support_crops_of_another_size_and_mode_are_accepted(run: Path):
    """An L run takes RGB crops of any size (converted like PIL's convert("L"), padded square, resized)."""
    detector = attnmeta.load(run, score_threshold=0.0, max_detections=5)
    rgb = [draw_crop(0, side=30), draw_crop(3, side=9, height=13)]
    scene = [draw_scene([(0, 4, 4, 18), (3, 36, 30, 22)], mode="RGB")]
    from_rgb = detector.fit(rgb, ["x", "y"]).detect(scene)
    crops = detector._support[0]
    assert crops.shape == (2, 1, 16, 16) and crops.dtype == torch.float32
    grey = [image.convert("L") for image in rgb]
    assert detector.fit(grey, ["x", "y"]).detect([scene[0].convert("L")]) == from_rgb
    tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 for image in rgb]
    assert detector.fit(tensors, ["x", "y"]).detect(scene) == from_rgb


def test_bad_detector_inputs_are_one_line_errors(run: Path):
    detector = attnmeta.load(run)
    with pytest.raises(ValueError) as before_fit:
        detector.detect([draw_scene([])])
    assert str(before_fit.value) == "call fit(support_images, labels) before detect()"
    for empty in ([], (), "crops"):
        with pytest.raises(ValueError) as error:
            detector.fit(empty, [])
        assert str(error.value) == "fit() needs a non-empty list of support images (one object each)"
    with pytest.raises(ValueError) as unequal:
        detector.fit([draw_crop(0), draw_crop(0), draw_crop(3)], ["a", "a", "b"])
    assert str(unequal.value) == "every label needs the same number of support images, got 'a': 2, 'b': 1"
    with pytest.raises(ValueError) as count:
        detector.fit([draw_crop(0), draw_crop(3)], ["a"])
    assert str(count.value) == "fit got 2 support images but 1 labels; pass one label per image"

    detector.fit([draw_crop(0), draw_crop(3)], ["a", "b"])
    with pytest.raises(ValueError) as small:
        detector.detect([draw_scene([]), draw_scene([], size=(40, 12))])
    assert str(small.value) == ("images[1] is 40x12 pixels, smaller than the 16x16 support crops this run "
                                "detects; pass larger images")
    with pytest.raises(ValueError) as no_images:
        detector.detect([])
    assert str(no_images.value) == "detect() needs a non-empty list of images"
    with pytest.raises(ValueError) as bad_options:
        attnmeta.load(run, score_threshold=1.5)
    assert str(bad_options.value) == (
        "score_threshold must lie in [0, 1] and max_detections be >= 1, got 1.5 and 20")


# -- omniglot-scenes on the shared data ------------------------------------------------------------------
def test_a_quick_omniglot_scenes_run_end_to_end(shared_data: Path, tmp_path: Path):
    root = shared_data / "omniglot"
    if not (root / "images_background.zip").is_file():
        pytest.skip(f"needs the Omniglot archives in {root}")
    config = RunConfig(benchmark="omniglot-scenes", root=str(root), algo="attention-detector",
                       algo_options=TINY_DETECTOR, ways=2, shots=1, queries=1, steps=2, eval_every=2,
                       eval_episodes=1, test_episodes=1, meta_batch=1, threads=1, plot=False,
                       benchmark_options={"support_size": 16}, image_size=64,
                       run_dir=str(tmp_path / "scenes"))
    summary = train(config, quiet=True).summary
    assert summary["test"]["metric"] == "map50" and summary["test"]["n"] == 1
    assert summary["trained"] is True and summary["steps"] == 2
    info = json.loads((tmp_path / "scenes" / "run.json").read_text())
    assert info["task_type"] == "detection" and info["input_shape"] == [1, 64, 64]
    assert info["preprocessing"] == {"mode": "L", "support_size": 16, "image_size": 64, "invert": True}
    detector = attnmeta.load(tmp_path / "scenes", score_threshold=0.0, max_detections=2)
    assert detector.invert is True
    ink = Image.new("L", (20, 20), 255)
    ink.paste(0, (5, 5, 15, 15))  # dark on light, as people draw
    found = detector.fit([ink], ["glyph"]).detect([Image.new("L", (64, 64), 255)])
    assert len(found) == 1 and len(found[0]) <= 2 and all(label == "glyph" for label, _, _ in found[0])
