"""Hypothesis-generated predictor inputs never end in a traceback: `attnmeta predict` on folders of random
files (valid images of any mode and size, truncated images, random bytes) and `fit` / `predict` on random
arrays either work or fail with one line (exit status 2 through the CLI)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import attnmeta
from attnmeta.cli import main
from attnmeta.errors import is_user_error
from attnmeta.train import RunConfig, train

MODES = ("1", "L", "P", "RGB", "RGBA", "I", "F", "LA", "CMYK", "I;16")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from attnmeta.data.omniglot import Omniglot
    from synthetic import synthetic_omniglot

    data = tuple(Omniglot.from_tensors(**synthetic_omniglot(c, s)) for c, s in ((8, 0), (8, 1)))
    folder = tmp_path_factory.mktemp("fuzz") / "run"
    train(RunConfig(benchmark="omniglot", benchmark_options={"data": data}, algo="protonet", queries=2,
                    backbone_options={"hidden": 4}, steps=2, eval_every=2, eval_episodes=2, test_episodes=2,
                    checkpoint_every=2, run_dir=str(folder), plot=False, threads=1),
          quiet=True, print_fn=lambda _: None)
    return folder


@st.composite
def image_files(draw) -> bytes:
    kind = draw(st.sampled_from(["image", "truncated", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    image = Image.new(mode, size, color=draw(st.integers(0, 255)) if mode not in ("RGB", "RGBA", "CMYK", "LA")
                      else None)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("I", "F", "CMYK", "I;16") else "PNG")
    data = buffer.getvalue()
    return data[: draw(st.integers(1, max(1, len(data) - 1)))] if kind == "truncated" else data


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(support=st.lists(image_files(), min_size=2, max_size=4), query=st.lists(image_files(), min_size=1,
                                                                                 max_size=2))
def test_predict_on_random_files_is_an_answer_or_one_line(run, tmp_path_factory, capsys, support, query):
    root = tmp_path_factory.mktemp("files")
    for i, blob in enumerate(support):
        (root / "support" / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / "support" / f"class{i % 2}" / f"{i}.png").write_bytes(blob)
    (root / "query").mkdir()
    for i, blob in enumerate(query):
        (root / "query" / f"q{i}.png").write_bytes(blob)
    code = main(["predict", str(run), "--support", str(root / "support"), "--query", str(root / "query")])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("attnmeta predict: error: ")
    else:
        assert len(out.splitlines()) == len(query)


arrays = st.one_of(
    st.builds(lambda shape, v: np.full(shape, v, dtype=np.float32),
              st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 30)),
              st.sampled_from([0.0, 0.5, 1.0, 255.0, -1.0, float("nan"), float("inf")])),
    st.builds(lambda shape, v: np.full(shape, v, dtype=np.uint8),
              st.tuples(st.integers(1, 30), st.integers(1, 30)), st.integers(0, 255)),
    st.builds(lambda shape: np.zeros(shape, dtype=bool), st.tuples(st.integers(0, 30), st.integers(1, 30))),
    st.builds(lambda shape, v: np.full(shape, v, dtype=np.int64),
              st.tuples(st.integers(1, 30), st.integers(1, 30)), st.integers(-300, 70000)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(support=st.lists(arrays, min_size=1, max_size=4), labels=st.lists(
    st.one_of(st.integers(0, 2), st.none(), st.floats(allow_nan=True), st.text(max_size=2)), min_size=1,
    max_size=4), query=st.lists(arrays, min_size=0, max_size=2))
def test_fit_and_predict_on_random_arrays_work_or_raise_one_user_error(run, support, labels, query):
    predictor = attnmeta.load(run)
    try:
        predictor.fit(support, labels).predict(query)
    except Exception as error:  # noqa: BLE001
        assert is_user_error(error), repr(error)
        assert "\n" not in str(error)
