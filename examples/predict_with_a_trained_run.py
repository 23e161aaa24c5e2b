"""Use a trained run on new data: ``attnmeta.load`` -> ``fit`` -> ``predict``.

Classification (a run trained on Omniglot; raw 105x105 PNGs work as they are)::

    python examples/predict_with_a_trained_run.py runs/omniglot-protonet-5w1s support/ query/

where ``support/`` holds one subfolder of images per class (the folder name is the label) and ``query/`` the
images to label. Regression (a sinusoid run)::

    python examples/predict_with_a_trained_run.py runs/sinusoid-maml-10shot
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

import attnmeta


def classify(run_dir: str, support_dir: str, query_dir: str) -> None:
    images, labels = [], []
    for class_dir in sorted(p for p in Path(support_dir).iterdir() if p.is_dir()):
        for file in sorted(class_dir.glob("*.png")):
            images.append(Image.open(file))
            labels.append(class_dir.name)
    queries = sorted(Path(query_dir).glob("*.png"))
    clf = attnmeta.load(run_dir).fit(images, labels)
    probabilities = clf.predict_proba([Image.open(q) for q in queries])  # columns in clf.classes_ order
    for file, row in zip(queries, probabilities):
        print(f"{file.name}: {clf.classes_[int(row.argmax())]} ({row.max():.2f})")


def regress(run_dir: str) -> None:
    model = attnmeta.load(run_dir)
    x = np.linspace(-5, 5, 10)
    model.fit(x, 2.0 * np.sin(x - 0.5))  # ten support points of one sinusoid
    grid = np.linspace(-5, 5, 7)
    for xi, yi in zip(grid, model.predict(grid)[:, 0]):
        print(f"x={xi:+.2f}  predicted {yi:+.3f}  true {2.0 * np.sin(xi - 0.5):+.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        classify(*sys.argv[1:])
    elif len(sys.argv) == 2:
        regress(sys.argv[1])
    else:
        raise SystemExit(__doc__)
