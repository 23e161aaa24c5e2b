"""The few-shot predictor API (`attnmeta.load`, fit, predict, predict_proba) and `attnmeta predict`."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnmeta
from attnmeta.cli import main
from attnmeta.tasks import Sinusoid
from attnmeta.tasks.episode import Task
from attnmeta.train import CheckpointManager, RunConfig, train
from attnmeta.train.trainer import BenchmarkParts, build_learner

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "custom_learner.py")
OMNIGLOT_PREPROCESSING = {
    "image_size": 28,
    "channels": 1,
    "grayscale": True,
    "resize": "lanczos",
    "invert": True,
    "scale": 1 / 255,
    "mean": [0.0],
    "std": [1.0],
}


def _image_run(tmp_path: Path, algo: str = "protonet", ways: int = 5) -> Path:
    """A run folder holding one checkpoint of a (seeded, untrained) Omniglot-shaped learner."""
    config = RunConfig(
        benchmark="omniglot",
        algo=algo,
        ways=ways,
        backbone="conv4",
        backbone_options={"hidden": 8},
        run_dir=str(tmp_path / "run"),
    ).resolved()
    run_info = {
        "benchmark": "omniglot",
        "task_type": "classification",
        "input_shape": [1, 28, 28],
        "preprocessing": OMNIGLOT_PREPROCESSING,
        "default_backbone": {"name": "conv4", "options": {}},
        "ways": ways,
        "max_ways": ways if algo != "protonet" else None,
        "algo": algo,
        "any_ways": True,
    }
    parts = BenchmarkParts(
        "omniglot",
        "classification",
        None,
        None,
        None,
        (1, 28, 28),
        OMNIGLOT_PREPROCESSING,
        run_info["default_backbone"],
    )
    learner = build_learner(config, parts)
    CheckpointManager(tmp_path / "run" / "checkpoints").save(
        1, learner.state_dict(), {"step": 1, "config": config.to_dict(), "run": run_info}
    )
    return tmp_path / "run"


def _drawings(n: int, seed: int = 0) -> list[Image.Image]:
    """Distinct 105x105 black-on-white strokes, like raw Omniglot PNGs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pixels = np.full((105, 105), 255, dtype=np.uint8)
        for _ in range(3):
            r, c = rng.integers(10, 90, size=2)
            pixels[r : r + 12, c : c + 40] = 0
        out.append(Image.fromarray(pixels, "L").convert("1"))
    return out


def test_fit_predict_in_the_users_label_space(tmp_path):
    clf = attnmeta.load(_image_run(tmp_path))
    images = _drawings(6)
    labels = ["zeta", "alpha", "mu", "zeta", "alpha", "mu"]
    clf.fit(images, labels)
    assert clf.classes_ == ["alpha", "mu", "zeta"]
    proba = clf.predict_proba(images)
    assert proba.shape == (6, 3) and np.allclose(proba.sum(1), 1.0)
    # Column j of predict_proba is classes_[j]: predict == classes_[argmax].
    assert clf.predict(images) == [clf.classes_[j] for j in proba.argmax(1)]


def test_one_shot_queries_equal_to_support_are_recognised(tmp_path):
    clf = attnmeta.load(_image_run(tmp_path))
    images = _drawings(4, seed=1)
    labels = [("cls", 3), ("cls", 1), ("cls", 2), ("cls", 0)]  # any hashable (sortable) labels
    clf.fit(images, labels)
    assert clf.classes_ == [("cls", 0), ("cls", 1), ("cls", 2), ("cls", 3)]
    assert clf.predict(images) == labels
    # Unsortable labels keep first-appearance order.
    clf.fit(images, ["b", 2, ("t",), 1.5])
    assert clf.classes_ == ["b", 2, ("t",), 1.5] and clf.predict(images[::-1]) == [1.5, ("t",), 2, "b"]


def test_input_kinds_give_the_training_pixels(tmp_path):
    clf = attnmeta.load(_image_run(tmp_path))
    image = _drawings(1)[0]
    # The documented Omniglot pipeline: grayscale, LANCZOS to 28x28 on uint8, ink = 255, / 255.
    expected = torch.from_numpy(
        255 - np.asarray(image.convert("L").resize((28, 28), Image.Resampling.LANCZOS))
    )
    expected = expected.float().div(255.0)[None]
    raw = np.array(image.convert("L"))
    for kind in (image, raw, raw[:, :, None], torch.from_numpy(raw)[None], image.convert("RGB")):
        assert torch.equal(clf._prepare_image(kind, "x"), expected)
    small = 255 - expected[0].mul(255).round().to(torch.uint8).numpy()
    assert torch.equal(
        clf._prepare_images(np.stack([small, small]), "batch"), torch.stack([expected, expected])
    )
    as_float = clf._prepare_image(raw.astype(np.float32)[::3, ::3] / 255.0, "x")
    assert as_float.shape == (1, 28, 28) and 0.0 <= float(as_float.min()) and float(as_float.max()) <= 1.0


def test_clear_errors(tmp_path):
    clf = attnmeta.load(_image_run(tmp_path))
    images = _drawings(3)
    with pytest.raises(ValueError, match="call fit"):
        clf.predict(images)
    with pytest.raises(ValueError, match=r"only one class \('a'\); few-shot classification needs"):
        clf.fit(images, ["a", "a", "a"])
    with pytest.raises(ValueError, match="fit got 3 support images but 2 labels"):
        clf.fit(images, ["a", "b"])
    rgb = np.zeros((3, 28, 28), dtype=np.uint8)
    with pytest.raises(
        ValueError, match=r"support\[0\] has 3 channels but this model takes 1-channel \(grayscale\)"
    ):
        clf.fit([rgb, rgb], ["a", "b"])
    with pytest.raises(TypeError, match="must be a PIL image, an image file path, a numpy array or a torch "
                                        "tensor, got dict"):
        clf.fit([{}, {}], ["a", "b"])
    with pytest.raises(ValueError, match=r"support\[0\]: image file 'x.png' does not exist"):
        clf.fit(["x.png", "y.png"], ["a", "b"])
    with pytest.raises(TypeError, match="uint8 or integer .* or float"):
        clf.fit([np.zeros((28, 28), dtype=np.complex64)] * 2, ["a", "b"])
    with pytest.raises(ValueError, match="neither a run folder"):
        attnmeta.load(tmp_path / "nowhere")


def test_head_learner_limits_the_number_of_classes(tmp_path):
    clf = attnmeta.load(_image_run(tmp_path, algo="maml", ways=2))
    images = _drawings(3)
    with pytest.raises(ValueError, match="has 2 outputs and can classify at most 2 classes"):
        clf.fit(images, ["a", "b", "c"])
    clf.fit(images[:2], ["a", "b"])
    assert clf.predict_proba(images).shape == (3, 2)


def test_regression_run_fit_predict(tmp_path, capsys):
    config = RunConfig(
        benchmark="sinusoid",
        algo="ridge",
        imports=[EXAMPLE],
        steps=60,
        meta_batch=4,
        lr=3e-3,
        eval_every=30,
        eval_episodes=10,
        test_episodes=10,
        run_dir=str(tmp_path / "run"),
        plot=False,
        threads=1,
    )
    train(config, quiet=True, print_fn=lambda _: None)
    model = attnmeta.load(tmp_path / "run")
    tasks = Sinusoid(10, 50).fixed_tasks(20, seed=5)
    mse, zero = [], []
    for task in tasks:
        model.fit(task.support_x.numpy()[:, 0], task.support_y.numpy())
        predicted = model.predict(task.query_x.numpy())
        assert predicted.shape == (50, 1)
        direct = model.learner.predict(Task(task.support_x, task.support_y, task.query_x, task.query_y))
        np.testing.assert_allclose(predicted, direct.double().numpy(), rtol=1e-6, atol=1e-6)
        mse.append(float(((predicted - task.query_y.numpy()) ** 2).mean()))
        zero.append(float((task.query_y.numpy() ** 2).mean()))
    assert np.mean(mse) < 0.5 * np.mean(zero)
    with pytest.raises(ValueError, match="fit got 3 x values but 2 y values"):
        model.fit([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="predict_proba is for classification"):
        model.predict_proba([0.0])
    # A checkpoint folder loads as well as its run folder.
    ckpt = CheckpointManager(tmp_path / "run" / "checkpoints").latest_valid()
    again = attnmeta.load(ckpt).fit([0.0, 1.0], [0.0, 1.0])
    assert again.predict([0.5]).shape == (1, 1)
    assert main(["predict", str(tmp_path / "run"), "--support", "s", "--query", "q"]) == 2
    assert "is a regression run; `attnmeta predict` labels images" in capsys.readouterr().err


def test_cli_predict_on_raw_omniglot_pngs(tmp_path, shared_data, capsys):
    run = _image_run(tmp_path)
    support, query = tmp_path / "support", tmp_path / "query"
    with zipfile.ZipFile(shared_data / "omniglot" / "images_evaluation.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        characters = sorted({n.rsplit("/", 1)[0] for n in names})[:3]
        for character in characters:
            files = [n for n in names if n.startswith(character + "/")][:2]
            label = character.replace("/", "_")
            (support / label).mkdir(parents=True)
            query.mkdir(exist_ok=True)
            for i, name in enumerate(files):
                image = Image.open(io.BytesIO(archive.read(name)))
                assert image.size == (105, 105)
                target = support / label / "a.png" if i == 0 else query / f"{label}.png"
                image.save(target)
    assert main(["predict", str(run), "--support", str(support), "--query", str(query)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    labels = {p.name for p in support.iterdir()}
    for line in lines:
        file, label, probability = line.split("\t")
        assert file.endswith(".png") and label in labels and 0.0 < float(probability) <= 1.0
