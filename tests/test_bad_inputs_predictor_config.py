"""Issue 29 catalogue for the predictor, `attnmeta predict` and run configs: each bad input is one clear line.

One test per bad input (parametrized where natural), each asserting the exact message; the inputs that used
to fail but are fine (bool / integer arrays, image paths, ``1e-3`` floats) are checked to work.
"""

from __future__ import annotations

import inspect
import io
import math
import shutil
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from attnmeta import learners
from attnmeta.cli import main
from attnmeta.errors import DataError, is_user_error
from attnmeta.learners import registry
from attnmeta.predictor import FewShotPredictor
from attnmeta.predictor_inputs import read_query_folder, read_support_folder
from attnmeta.train.config import RunConfig, load_config_file, parse_overrides

PREPROCESSING = {"image_size": 28, "channels": 1, "resize": "lanczos", "invert": True, "mean": [0.0],
                 "std": [1.0]}


def _raises(kind: type[BaseException], call, *args, **kwargs) -> str:
    """The one-line message of the user error ``call(*args, **kwargs)`` raises."""
    with pytest.raises(kind) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and is_user_error(info.value), repr(info.value)
    return message


@pytest.fixture(scope="module")
def clf() -> FewShotPredictor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 8))
    learner = learners.build("protonet", model=model, task_type="classification")
    run = {"task_type": "classification", "input_shape": [1, 28, 28], "preprocessing": PREPROCESSING}
    return FewShotPredictor(learner, RunConfig(algo="protonet"), run)


@pytest.fixture(scope="module")
def regressor() -> FewShotPredictor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    learner = learners.build("maml", model=model, task_type="regression")
    return FewShotPredictor(learner, RunConfig(), {"task_type": "regression", "input_shape": [1]})


def _image(value: int = 0, size: int = 28) -> np.ndarray:
    image = np.full((size, size), 255, dtype=np.uint8)
    image[value % size : value % size + 5, 3:20] = 0
    return image


def _files(tmp_path: Path) -> dict[str, Path]:
    """An image file, a garbage one, a truncated PNG, a 16-bit PNG and a 1-bit PNG."""
    Image.fromarray(_image(3)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) * 80).astype(np.uint16)).save(tmp_path / "wide.png")
    Image.fromarray(_image(9) > 128).save(tmp_path / "bit.png")
    return {p.stem: p for p in tmp_path.glob("*.png")}


# -- predictor: images -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "kind", "message"),
    [
        (np.full((28, 28), np.nan, dtype=np.float32), ValueError,
         "support[1] has NaN or infinite pixels; replace them (e.g. np.nan_to_num) or drop the image"),
        (torch.full((1, 28, 28), math.inf), ValueError,
         "support[1] has NaN or infinite pixels; replace them (e.g. np.nan_to_num) or drop the image"),
        (np.zeros((0, 28), dtype=np.uint8), ValueError,
         "support[1] has shape (0, 28): an image needs at least one pixel"),
        (torch.zeros(1, 28, 0), ValueError,
         "support[1] has shape (1, 28, 0): an image needs at least one pixel"),
        (Image.new("L", (0, 5)), ValueError, "support[1] is a 0x5 image; an image needs at least one pixel"),
        (_image().astype(np.float32), ValueError,
         "support[1] has float pixels up to 255; float images must be in [0, 1]: divide 0..255 values by 255 "
         "(or pass them as uint8)"),
        (np.full((28, 28), -0.5), ValueError,
         "support[1] has negative pixels (min -0.5); pass raw pixels (floats in [0, 1] or uint8 0..255), not "
         "normalized ones: the model normalizes them itself"),
        (np.full((28, 28), 300, dtype=np.int64), ValueError,
         "support[1] has pixel values outside [0, 255] (min 300, max 300); pass 8-bit pixels (e.g. 16-bit "
         "images times 255 / 65535, as uint8)"),
        (np.full((28, 28), -1, dtype=np.int16), ValueError,
         "support[1] has pixel values outside [0, 255] (min -1, max -1); pass 8-bit pixels (e.g. 16-bit "
         "images times 255 / 65535, as uint8)"),
        (np.zeros((28, 28), dtype=np.complex64), TypeError,
         "support[1]: image arrays must be uint8 or integer (pixels 0..255), bool (0/1) or float (0..1), "
         "got complex64"),
        (np.zeros((1, 1, 28, 28), dtype=np.uint8), ValueError,
         "support[1] must have 2 (H, W) or 3 (C, H, W or H, W, C) dimensions, got shape (1, 1, 28, 28)"),
        (np.zeros((3, 28, 28), dtype=np.uint8), ValueError,
         "support[1] has 3 channels but this model takes 1-channel (grayscale) images; convert the images "
         "first"),
        (Image.fromarray(np.full((28, 28), 300.0, dtype=np.float32), "F"), ValueError,
         "support[1] is a float (mode F) PIL image with values outside [0, 255] (min 300, max 300); scale it "
         "to 0..255"),
        (Image.fromarray(np.full((28, 28), np.nan, dtype=np.float32), "F"), ValueError,
         "support[1] has NaN or infinite pixels; replace them (e.g. np.nan_to_num) or drop the image"),
        (Image.fromarray(np.full((28, 28), 1000, dtype=np.int32), "I"), ValueError,
         "support[1] has pixel values outside [0, 255] (min 1000, max 1000); pass 8-bit pixels (e.g. 16-bit "
         "images times 255 / 65535, as uint8)"),
        ({"pixels": 1}, TypeError,
         "support[1] must be a PIL image, an image file path, a numpy array or a torch tensor, got dict"),
    ],
    ids=["nan", "inf", "zero-rows", "zero-cols-tensor", "zero-size-pil", "float-0-255", "negative-float",
         "int-above-255", "int-negative", "complex", "4d", "channels", "pil-F-300", "pil-F-nan", "pil-I-1000",
         "dict"],
)
def test_bad_support_image(clf, bad, kind, message):
    assert _raises(kind, clf.fit, [_image(), bad], ["a", "b"]) == message


def test_bad_query_image_names_its_index(clf):
    clf.fit([_image(0), _image(10)], ["a", "b"])
    bad = np.ones((28, 28), dtype=np.float64)
    bad[4, 4] = np.nan
    expected = "query[2] has NaN or infinite pixels; replace them (e.g. np.nan_to_num) or drop the image"
    assert _raises(ValueError, clf.predict, [_image(), _image(), bad]) == expected
    assert _raises(ValueError, clf.predict_proba, [_image(), _image(), bad]) == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.png", "support[0]: image file '{dir}/missing.png' does not exist"),
        ("", "support[0]: image file '{dir}' is not a file"),
        ("garbage.png", "support[0]: cannot read image file '{dir}/garbage.png' (not an image format PIL can "
                        "read); replace or remove it"),
        ("truncated.png", "support[0]: cannot read image file '{dir}/truncated.png' (image file is "
                          "truncated); replace or remove it"),
        ("wide.png", "support[0] has pixel values outside [0, 255] (min 0, max 62640); pass 8-bit pixels "
                     "(e.g. 16-bit images times 255 / 65535, as uint8)"),
    ],
)
def test_bad_image_file_names_the_file(clf, tmp_path, name, message):
    _files(tmp_path)
    path = tmp_path / name if name else tmp_path
    error = _raises(ValueError, clf.fit, [path, _image()], ["a", "b"])
    assert error == message.format(dir=tmp_path)
    if name in ("garbage.png", "truncated.png", "missing.png"):
        with pytest.raises(DataError):
            clf.fit([str(path), _image()], ["a", "b"])


def test_a_file_pil_warns_about_is_still_one_line(clf, tmp_path):
    # a TIFF cut after its header: PIL warns "Corrupt EXIF data" before it fails; the warnings would print
    # extra lines above `attnmeta predict`'s one-line error
    buffer = io.BytesIO()
    Image.new("I", (11, 7)).save(buffer, format="TIFF")
    (tmp_path / "cut.tif").write_bytes(buffer.getvalue()[:8])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        error = _raises(ValueError, clf.fit, [tmp_path / "cut.tif", _image()], ["a", "b"])
    assert error == (f"support[0]: cannot read image file '{tmp_path}/cut.tif' (not an image format PIL can "
                     "read); replace or remove it")
    assert not caught


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([], "query: pass a non-empty list of images (PIL images, file paths, numpy arrays or tensors), "
             "got an empty list"),
        ("a.png", "query: pass a non-empty list of images (PIL images, file paths, numpy arrays or tensors), "
                  "got str"),
        (Path("a.png"), "query: pass a non-empty list of images (PIL images, file paths, numpy arrays or "
                        "tensors), got PosixPath"),
        (torch.zeros(28), "query: pass a list of images or a batch of shape [n, C, H, W] / [n, H, W, C] / "
                          "[n, H, W], got shape (28,)"),
    ],
    ids=["empty", "one-path", "one-Path", "1d"],
)
def test_bad_query_collection(clf, query, message):
    clf.fit([_image(0), _image(10)], ["a", "b"])
    assert _raises(ValueError, clf.predict, query) == message


def test_predict_before_fit():
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 4))
    learner = learners.build("protonet", model=model, task_type="classification")
    fresh = FewShotPredictor(learner, RunConfig(algo="protonet"),
                             {"task_type": "classification", "input_shape": [1, 28, 28],
                              "preprocessing": PREPROCESSING})
    assert _raises(ValueError, fresh.predict, [_image()]) == "call fit(support, labels) before predict"


# -- predictor: support set and labels ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("support", "labels", "kind", "message"),
    [
        ([], [], ValueError, "fit got an empty support set; pass images of at least two classes, with their "
                             "labels"),
        ((_image() for _ in range(2)), ["a", "b"], TypeError,
         "support must be a list of images (one per label), got generator"),
        ("ab", ["a", "b"], TypeError, "support must be a list of images (one per label), got str"),
        ([_image()] * 3, ["a", "b"], ValueError,
         "fit got 3 support images but 2 labels; pass one label per image"),
        ([_image()] * 2, ["a", "a"], ValueError,
         "the support set has only one class ('a'); few-shot classification needs examples of at least two "
         "classes"),
        ([_image()] * 2, ["a", None], ValueError,
         "labels[1] is None, a missing value; give every support example a label"),
        ([_image()] * 2, [1.0, float("nan")], ValueError,
         "labels[1] is nan, a missing value; give every support example a label"),
        ([_image()] * 2, np.array([1.0, np.nan]), ValueError,
         "labels[1] is nan, a missing value; give every support example a label"),
        ([_image()] * 2, [np.float32("nan"), 1], ValueError,
         "labels[0] is np.float32(nan), a missing value; give every support example a label"),
        ([_image()] * 2, [["a"], ["b"]], TypeError,
         "labels[0] is a list, which cannot be a class label; use str, int or another hashable value"),
        ([_image()] * 2, np.array([[0], [1]]), ValueError,
         "labels must hold one label per example (shape [n]), got shape (2, 1)"),
        ([_image()] * 2, "ab", TypeError, "labels must be a list of one label per example, got str"),
        ([_image()] * 2, 5, TypeError, "labels must be a list of one label per example, got int"),
    ],
    ids=["empty", "generator", "str-support", "count", "one-class", "none", "nan", "nan-array",
         "nan-float32", "unhashable", "2d-labels", "str-labels", "scalar-labels"],
)
def test_bad_support_set(clf, support, labels, kind, message):
    assert _raises(kind, clf.fit, support, labels) == message


def test_tensor_labels_are_values_not_objects(clf):
    """0-d tensors hash by identity: two tensor(0) labels would silently be two classes."""
    images = [_image(0), _image(10), _image(5)]
    clf.fit(images, [torch.tensor(0), torch.tensor(1), torch.tensor(0)])
    assert clf.classes_ == [0, 1]


# -- predictor: inputs that are fine ----------------------------------------------------------------------
def test_bool_int_path_and_mixed_size_inputs_give_the_same_pixels(clf, tmp_path):
    files = _files(tmp_path)
    reference = clf._prepare_image(Image.open(files["bit"]), "x")
    as_bool = np.array(Image.open(files["bit"]))
    assert as_bool.dtype == np.bool_  # what users get from 1-bit PNGs
    for same in (as_bool, torch.from_numpy(as_bool), as_bool.astype(np.int64) * 255, files["bit"],
                 str(files["bit"])):
        assert torch.equal(clf._prepare_image(same, "x"), reference)
    mixed = [_image(0, size=28), _image(3, size=105), np.ones((40, 17), dtype=np.float32), files["ok"]]
    clf.fit(mixed, ["a", "b", "c", "d"])
    assert clf.predict_proba(mixed).shape == (4, 4)


def test_wide_pil_images_in_range_match_8_bit_ones(clf):
    reference = clf._prepare_image(Image.fromarray(_image(4)), "x")
    for mode, dtype in (("F", np.float32), ("I", np.int32)):
        assert torch.equal(clf._prepare_image(Image.fromarray(_image(4).astype(dtype), mode), "x"), reference)


def test_float_pixels_in_0_1_are_accepted(clf):
    image = _image().astype(np.float32) / 255.0
    assert torch.allclose(clf._prepare_image(image, "x"), clf._prepare_image(_image(), "x"), atol=1e-6)


# -- predictor: regression ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "y", "kind", "message"),
    [
        ([0.0, math.nan], [0.0, 1.0], ValueError, "x[1] is NaN or infinite; drop or fix that example"),
        ([0.0, 1.0], [math.inf, 1.0], ValueError, "y[0] is NaN or infinite; drop or fix that example"),
        (["a", "b"], [0.0, 1.0], TypeError, "x must hold numbers: an array or list of shape [n] or [n, d]"),
        ([], [], ValueError, "x must be a non-empty array of shape [n] or [n, d], got shape (0, 1)"),
        ([[0.0, 1.0]], [0.0], ValueError, "x has 2 features per example but this model takes 1"),
        ([0.0, 1.0, 2.0], [0.0, 1.0], ValueError, "fit got 3 x values but 2 y values; pass one y per x"),
    ],
    ids=["nan-x", "inf-y", "strings", "empty", "features", "count"],
)
def test_bad_regression_inputs(regressor, x, y, kind, message):
    assert _raises(kind, regressor.fit, x, y) == message


def test_bad_regression_query(regressor):
    regressor.fit([0.0, 1.0], [0.0, 1.0])
    assert _raises(ValueError, regressor.predict, [0.5, math.nan]) == ("x[1] is NaN or infinite; drop or fix "
                                                                       "that example")
    assert _raises(ValueError, regressor.predict_proba, [0.5]) == (
        "predict_proba is for classification runs; use predict for regression")
    assert regressor.predict(torch.tensor([0.5], requires_grad=True)).shape == (1, 1)


# -- attnmeta predict folders ------------------------------------------------------------------------
def _folders(tmp_path: Path) -> tuple[Path, Path]:
    support, query = tmp_path / "support", tmp_path / "query"
    for label, value in (("cat", 0), ("dog", 12)):
        (support / label).mkdir(parents=True)
        Image.fromarray(_image(value)).save(support / label / "1.png")
    query.mkdir()
    Image.fromarray(_image(1)).save(query / "q.png")
    (query / "._q.png").write_bytes(b"AppleDouble resource fork")  # hidden: skipped
    return support, query


@pytest.mark.parametrize(
    ("setup", "option", "message"),
    [
        (lambda s, q: (s / "dog" / "2.png").write_bytes(b"garbage"), "support",
         "cannot read image file '{s}/dog/2.png' (not an image format PIL can read); replace or remove it"),
        (lambda s, q: (q / "b.jpg").write_bytes(b"garbage"), "query",
         "cannot read image file '{q}/b.jpg' (not an image format PIL can read); replace or remove it"),
        (lambda s, q: (s / "empty").mkdir(), "support",
         "class folder '{s}/empty' holds no images (.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp)"),
        (lambda s, q: (q / "q.png").unlink(), "query",
         "--query '{q}' holds no images (.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp)"),
        (lambda s, q: [shutil.rmtree(p) for p in s.iterdir()], "support",
         "--support '{s}' must hold one subfolder of images per class"),
    ],
    ids=["corrupt-support", "corrupt-query", "empty-class", "empty-query", "no-classes"],
)
def test_bad_predict_folders(tmp_path, setup, option, message):
    support, query = _folders(tmp_path)
    setup(support, query)
    call = read_support_folder if option == "support" else read_query_folder
    folder = support if option == "support" else query
    assert _raises(ValueError, call, folder) == message.format(s=support, q=query)


def test_not_a_folder(tmp_path):
    missing = tmp_path / "missing"
    assert _raises(ValueError, read_support_folder, missing) == f"--support '{missing}' is not a folder"
    assert _raises(ValueError, read_query_folder, missing) == f"--query '{missing}' is not a folder"


def test_cli_predict_corrupt_image_is_one_line(tmp_path, clf, monkeypatch, capsys):
    import attnmeta.predictor

    support, query = _folders(tmp_path)
    monkeypatch.setattr(attnmeta.predictor, "load", lambda *a, **k: clf)
    assert main(["predict", "run", "--support", str(support), "--query", str(query)]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "q.png"  # the hidden ._q.png is skipped
    (support / "cat" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["predict", "run", "--support", str(support), "--query", str(query)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"attnmeta predict: error: cannot read image file '{support}/cat/2.png' "
                                "(not an image format PIL can read); replace or remove it"]


# -- config: numbers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["1e-3", "1E-3", "+1e-3", "0.1e-1", "1.0e-3", ".001", "0.001",
                                      "1_0e-4"])
def test_float_spellings_are_floats_in_set_and_files(tmp_path, spelling):
    value = float(spelling)
    assert parse_overrides([f"lr={spelling}"]) == {"lr": value}
    overrides = parse_overrides([f"lr={spelling}", f"algo_options.inner_lr={spelling}"])
    config = RunConfig().with_overrides(overrides)
    assert config.lr == value and config.algo_options == {"inner_lr": value}
    path = tmp_path / "run.yaml"
    path.write_text(f"lr: {spelling}\ngamma: {spelling}\nalgo_options:\n  inner_lr: {spelling}\n")
    config = RunConfig.from_dict(load_config_file(path))
    assert (config.lr, config.gamma, config.algo_options["inner_lr"]) == (value, value, value)
    assert isinstance(config.lr, float)


def test_ints_stay_ints_and_strings_stay_strings():
    assert parse_overrides(["steps=5", "seed=0x10", "split=1e-3x", "a=-.5", "b=1_000"]) == {
        "steps": 5, "seed": 16, "split": "1e-3x", "a": -0.5, "b": 1000}
    assert RunConfig(lr="1e-3", grad_clip=" 2 ").lr == 0.001  # Python API: float spellings of float keys
    assert RunConfig(lr=1).lr == 1.0 and isinstance(RunConfig(lr=1).lr, float)


@pytest.mark.parametrize(
    ("overrides", "kind", "message"),
    [
        (["lr=inf"], ValueError, "config key 'lr' must be a finite number, got inf"),
        (["lr=.inf"], ValueError, "config key 'lr' must be a finite number, got inf"),
        (["gamma=nan"], ValueError, "config key 'gamma' must be a finite number, got nan"),
        (["weight_decay=-inf"], ValueError, "config key 'weight_decay' must be a finite number, got -inf"),
        (["momentum=.nan"], ValueError, "config key 'momentum' must be a finite number, got nan"),
        (["min_lr_ratio=NaN"], ValueError, "config key 'min_lr_ratio' must be a finite number, got nan"),
        (["grad_clip=1e999"], ValueError, "config key 'grad_clip' must be a finite number, got inf"),
        (["ema_decay=infinity"], ValueError, "config key 'ema_decay' must be a finite number, got inf"),
        (["lr=0"], ValueError, "config key 'lr' must be > 0, got 0.0"),
        (["lr=-1e-3"], ValueError, "config key 'lr' must be > 0, got -0.001"),
        (["weight_decay=-1e-4"], ValueError, "config key 'weight_decay' must be >= 0, got -0.0001"),
        (["momentum=-0.1"], ValueError, "config key 'momentum' must be in [0, 1) (e.g. 0.9), got -0.1"),
        (["momentum=1"], ValueError, "config key 'momentum' must be in [0, 1) (e.g. 0.9), got 1.0"),
        (["min_lr_ratio=1.5"], ValueError, "config key 'min_lr_ratio' must be in [0, 1], got 1.5"),
        (["gamma=0"], ValueError,
         "config key 'gamma' must be > 0 (the step schedule multiplies the LR by it), got 0.0"),
        (["grad_clip=0"], ValueError, "config key 'grad_clip' must be > 0 or null, got 0.0"),
        (["ema_decay=1"], ValueError,
         "config key 'ema_decay' must be in [0, 1) (e.g. 0.995) or null, got 1.0"),
        (["lr=fast"], TypeError, "config key 'lr' must be float, got 'fast' (str)"),
        (["steps=1e3"], TypeError, "config key 'steps' must be int, got 1000.0 (float)"),
        (["steps=5.0"], TypeError, "config key 'steps' must be int, got 5.0 (float)"),
        (["steps=-1"], ValueError, "config key 'steps' must be >= 1, got -1"),
        (["warmup_steps=-1"], ValueError, "config key 'warmup_steps' must be >= 0, got -1"),
        (["threads=0"], ValueError, "config key 'threads' must be >= 1 (or null for the default), got 0"),
        (["seed=-1"], ValueError, "config key 'seed' must be in [0, 2**63), got -1"),
        (["test_seed=9223372036854775808"], ValueError,
         "config key 'test_seed' must be in [0, 2**63), got 9223372036854775808"),
        (["run_dir="], None, None),  # empty value: null, the default
        (["run_dir=''"], ValueError,
         "config key 'run_dir' may not be empty; give a value or null for the default"),
        (["algo=' '"], ValueError,
         "config key 'algo' may not be empty; give a value or null for the default"),
    ],
)
def test_bad_numbers_and_strings(overrides, kind, message):
    if kind is None:
        RunConfig().with_overrides(parse_overrides(overrides))
        return
    assert _raises(kind, RunConfig().with_overrides, parse_overrides(overrides)) == message


def test_huge_int_for_a_float_key():
    message = "config key 'lr' is too large for a float (401 digits)"
    assert _raises(ValueError, RunConfig, lr=10**400) == message


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (lambda: RunConfig.from_dict({1: 2}), TypeError, "config keys must be strings, got 1 (int)"),
        (lambda: RunConfig().with_overrides({None: 2}), TypeError, "config keys must be strings, got None "
                                                                   "(NoneType)"),
        (lambda: RunConfig(algo_options={1: 2}), TypeError,
         "config key 'algo_options' must map names (strings) to values, got the key 1 (int)"),
        (lambda: RunConfig(backbone_options={(1,): 2}), TypeError,
         "config key 'backbone_options' must map names (strings) to values, got the key (1,) (tuple)"),
    ],
    ids=["from-dict", "override", "algo-options", "backbone-options"],
)
def test_non_string_keys(call, kind, message):
    assert _raises(kind, call) == message


def test_config_file_yaml_error_is_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: [1, 2\n")
    assert _raises(ValueError, load_config_file, path) == (
        f"config file '{path}' is not valid yaml: expected ',' or ']', but got '<stream end>' (line 2, "
        "column 1)")
    path.write_text("a: 1\n  b: 2\n")
    assert _raises(ValueError, load_config_file, path) == (
        f"config file '{path}' is not valid yaml: mapping values are not allowed here (line 2, column 4)")
    path = tmp_path / "run.json"
    path.write_text('{"lr": }')
    assert _raises(ValueError, load_config_file, path) == (
        f"config file '{path}' is not valid json: Expecting value: line 1 column 8 (char 7)")


def test_config_file_not_text(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\xff\xfe\x00lr: 1")
    assert _raises(ValueError, load_config_file, path) == (f"config file '{path}' is not UTF-8 text; pass a "
                                                           ".yaml or .json file")


# -- config: learner options ----------------------------------------------------------------------------
MAML_OPTIONS = ("adapt, convert_bn, eval_inner_steps, first_order, first_order_until, head_init, inner_lr, "
                "inner_steps, learn_inner_lr, msl_anneal_steps, multi_step_loss, precision, rule, strategy")


@pytest.mark.parametrize(
    ("algo", "options", "message"),
    [
        ("maml", {"inner_lrr": 0.1},
         f"unknown option 'inner_lrr' for learner 'maml' (did you mean 'inner_lr'?); valid options: "
         f"{MAML_OPTIONS}"),
        ("maml", {"zzz": 1}, f"unknown option 'zzz' for learner 'maml'; valid options: {MAML_OPTIONS}"),
        ("protonet", {"temperature": 2},
         "unknown option 'temperature' for learner 'protonet'; valid options: distance, scale, "
         "support_splits"),
        ("attention-maml", {"task_attn": True},
         "unknown option 'task_attn' for learner 'attention-maml' (did you mean 'task_attention'?); valid "
         "options: adapt, convert_bn, eval_inner_steps, feature_attention, first_order, first_order_until, "
         "head_init, in_shape, inner_lr, inner_steps, learn_inner_lr, msl_anneal_steps, multi_step_loss, "
         "param_attention, precision, rule, strategy, task_attention, y_features"),
        ("transfer", {"head": "cosine"},
         "option 'head' is set by learner 'transfer' itself and cannot be changed; valid options: "
         "feature_dim, finetune_lr, finetune_steps, input_shape, num_classes, scale, seed"),
        ("meta-lstm-attention", {"attention": False},
         "option 'attention' is set by learner 'meta-lstm-attention' itself and cannot be changed; valid "
         "options: hidden, p, second_order, steps"),
    ],
)
def test_unknown_learner_option_is_rejected_up_front(algo, options, message):
    config = RunConfig(algo=algo, algo_options=options)  # may be a step of merging file, flags and --set
    assert _raises(ValueError, config.resolved) == message  # train() starts with resolved()
    assert _raises(ValueError, config.check_learner_options) == message
    dotted = {f"algo_options.{key}": value for key, value in options.items()}
    overridden = RunConfig().with_overrides({"algo": algo, **dotted})
    assert _raises(ValueError, overridden.resolved) == message


def test_cli_checks_options_after_merging_the_file_and_flags(tmp_path, capsys):
    """A file's options for the --algo of the command line are checked against that algo, before any data."""
    path = tmp_path / "run.yaml"
    path.write_text("algo_options:\n  distance: cosine\n")
    run_dir = str(tmp_path / "run")
    args = ["train", "omniglot", "--config", str(path), "--root", str(tmp_path / "no-data"),
            "--run-dir", run_dir]
    assert main([*args, "--set", "algo_options.distanse=l2", "--algo", "protonet"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "attnmeta train: error: unknown option 'distanse' for learner 'protonet' (did you mean 'distance'?); "
        "valid options: distance, scale, support_splits"]
    assert main([*args, "--algo", "maml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"attnmeta train: error: unknown option 'distance' for learner 'maml'; valid options: {MAML_OPTIONS}"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "protonet"])
def test_every_inferred_option_is_accepted_by_the_builder(name):
    """The inferred option list is what the builder takes: build with every option at its default."""
    valid = registry.valid_options(name)
    target = typing.get_type_hints(registry.spec(name).builder)["return"]
    defaults = {k: p.default for k, p in inspect.signature(target.__init__).parameters.items()
                if k in valid and p.default is not p.empty}
    assert set(defaults) == set(valid)
    RunConfig(algo=name, algo_options=defaults).resolved()
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    learners.build(name, model=model, task_type="classification", ways=2, **defaults)


def test_every_builtin_learner_has_an_option_list():
    builtin = [n for n in registry.available()
               if registry.spec(n).builder.__module__.startswith("attnmeta.learners.")]
    assert len(builtin) >= 14 and all(registry.valid_options(name) for name in builtin)
    RunConfig(algo="transfer", algo_options={"num_classes": 10, "finetune_steps": 5}).resolved()
    RunConfig(algo="snail", algo_options={"filters": 8, "attention_sizes": [[4, 4]]}).resolved()


class _HeadOption(learners.Learner):
    """A plugin learner whose own option is called ``head`` (like the ``register`` keyword)."""

    def __init__(self, model: nn.Module, task_type: str = "classification", *, head: str = "x",
                 depth: int = 1) -> None:
        super().__init__(task_type)


def _decorator(**_: object):
    """Stands for ``@register(..., head=False)``: the keywords of a decorator are not the builder's."""
    return lambda function: function


@_decorator(head=False, description="takes head=")
def _build_head_option(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                       **options) -> _HeadOption:
    return _HeadOption(model, task_type, **options)


@pytest.fixture
def plugin_learners(monkeypatch):
    """Two plugin learners, registered for one test only (other test files list the registry)."""
    learners.available()  # the built-in ones first
    for name, builder in (("test-head-option", _build_head_option),
                          ("test-lambda", lambda model, task_type, ways=None, **o: None)):
        monkeypatch.setitem(registry._SPECS, name, registry.LearnerSpec(name, builder, False))


def test_plugin_options_come_from_its_class_not_from_the_decorator(plugin_learners):
    RunConfig(algo="test-head-option", algo_options={"head": "y", "depth": 2}).resolved()
    config = RunConfig(algo="test-head-option", algo_options={"dept": 2})
    assert _raises(ValueError, config.resolved) == (
        "unknown option 'dept' for learner 'test-head-option' (did you mean 'depth'?); valid options: depth, "
        "head")


def test_unregistered_and_unannotated_learners_are_not_checked(plugin_learners):
    RunConfig(algo="my-plugin-learner", algo_options={"anything": 1}).resolved()  # registered by `imports`
    RunConfig(algo="test-lambda", algo_options={"whatever": 1}).resolved()


# -- config: random inputs -----------------------------------------------------------------------------
FIELDS = [f for f in RunConfig.__dataclass_fields__]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["1e-3", "nan", "-inf", "maml", "cpu", "adam", ".5", "", "1_0"]),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner,
                                                 max_size=3)), max_leaves=6)
_keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from([f"algo_options.{k}" for k in ("inner_lr", "x")]),
                  st.text(max_size=10), st.integers(-2, 2))


def _one_line_user_error(call) -> None:
    try:
        call()
    except (ValueError, TypeError) as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)
        assert is_user_error(error), repr(error)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.dictionaries(_keys, _values, max_size=4), texts=st.lists(st.text(max_size=20), max_size=3))
def test_random_configs_fail_with_one_line(values, texts):
    _one_line_user_error(lambda: RunConfig.from_dict(values).resolved())
    _one_line_user_error(lambda: RunConfig().with_overrides(values).resolved())
    _one_line_user_error(lambda: RunConfig().with_overrides(parse_overrides(texts)))
    items = [f"{key}={value}" for key, value in values.items()]
    _one_line_user_error(lambda: RunConfig().with_overrides(parse_overrides(items)).resolved())
