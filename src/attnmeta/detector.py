"""Use a trained few-shot detection run: ``attnmeta.load``, ``fit`` (support crops), ``detect`` (images).

```python
det = attnmeta.load("runs/omniglot-scenes-prototype-detector-5w1s")
det.fit(support_images, labels)        # one object per image: PIL images, file paths, arrays, tensors
det.detect(images)                     # per image: [(label, score, (x0, y0, x1, y1)), ...] in its pixels
```

Preprocessing, as in training (the run's ``preprocessing`` record): images are converted to the run's mode
(``L`` or ``RGB``); runs trained on bright-ink-on-dark images (``invert``, Omniglot scenes) turn the usual
dark-on-light drawings over. Support crops of any size or mode are padded to a square around their centre
with the background colour, then resized to the run's ``support_size`` (area averaging, PIL ``BOX``). Query
images keep their size (the detector is fully convolutional; objects should appear at about the sizes seen
in training) and must be at least as large as a support crop.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from attnmeta.errors import UserError
from attnmeta.learners.detection.base import DetectionLearner
from attnmeta.predictor_inputs import check_labels, pixel_array, read_image

Box = tuple[float, float, float, float]


class FewShotDetector:
    """A trained detector bound to a support set (``fit``), detecting its classes in images (``detect``).

    Args:
        score_threshold: boxes scoring below it are dropped (scores in [0, 1]).
        max_detections: boxes kept per image (best scores).
    """

    def __init__(self, learner: DetectionLearner, preprocessing: dict[str, Any], device: str | torch.device,
                 *, score_threshold: float = 0.3, max_detections: int = 20) -> None:
        if not 0.0 <= score_threshold <= 1.0 or max_detections < 1:
            raise ValueError(f"score_threshold must lie in [0, 1] and max_detections be >= 1, got "
                             f"{score_threshold} and {max_detections}")
        self.learner = learner.eval()
        self.mode = str(preprocessing.get("mode", "L"))
        self.invert = bool(preprocessing.get("invert", False))
        self.support_size = int(preprocessing.get("support_size", 32))
        self.device = torch.device(device)
        self.score_threshold, self.max_detections = score_threshold, max_detections
        self.classes_: list[Hashable] = []
        self._support: tuple[Tensor, Tensor] | None = None

    def fit(self, support: Sequence[Any], labels: Sequence[Hashable]) -> FewShotDetector:
        """Remember the support crops (one object each) and their labels; every label needs the same number
        of crops."""
        if not isinstance(support, Sequence) or isinstance(support, (str, bytes)) or len(support) == 0:
            raise ValueError("fit() needs a non-empty list of support images (one object each)")
        checked = check_labels(labels, len(support))
        self.classes_ = list(dict.fromkeys(checked))
        index = {label: i for i, label in enumerate(self.classes_)}
        ys = torch.tensor([index[label] for label in checked])
        counts = torch.bincount(ys).tolist()
        if len(set(counts)) != 1:
            shown = ", ".join(f"{label!r}: {n}" for label, n in zip(self.classes_, counts))
            raise ValueError(f"every label needs the same number of support images, got {shown}")
        crops = torch.stack([self._support_crop(image, f"support[{i}]") for i, image in enumerate(support)])
        self._support = (crops.to(self.device), ys.to(self.device))
        return self

    def detect(self, images: Sequence[Any]) -> list[list[tuple[Hashable, float, Box]]]:
        """Per image, ``(label, score, (x0, y0, x1, y1))`` best first, in the image's pixels."""
        if self._support is None:
            raise ValueError("call fit(support_images, labels) before detect()")
        if not isinstance(images, Sequence) or isinstance(images, (str, bytes)) or len(images) == 0:
            raise ValueError("detect() needs a non-empty list of images")
        crops, ys = self._support
        out = []
        for i, image in enumerate(images):
            tensor = self._image(image, f"images[{i}]")
            found = self.learner.detect(crops, ys, len(self.classes_), tensor[None].to(self.device),
                                        self.max_detections)[0].top(self.max_detections, self.score_threshold)
            out.append([(self.classes_[int(label)], float(score), _box(box))
                         for box, score, label in zip(found.boxes, found.scores, found.labels)])
        return out

    # -- preprocessing ---------------------------------------------------------------------------------
    def _pil(self, image: Any, what: str) -> Image.Image:
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            image = read_image(image, what)
        if not isinstance(image, Image.Image):
            array = pixel_array(image, what)
            if array.dtype != np.uint8:
                array = (array * 255).round().astype(np.uint8)
            array = array[0] if array.shape[0] == 1 else np.moveaxis(array[:3], 0, -1)
            image = Image.fromarray(array)
        if 0 in image.size:
            raise ValueError(f"{what} has no pixels")
        return image.convert(self.mode)

    def _to_tensor(self, image: Image.Image) -> Tensor:
        pixels = np.array(image, dtype=np.uint8)
        pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255.0)
        return 1.0 - tensor if self.invert else tensor

    def _support_crop(self, image: Any, what: str) -> Tensor:
        pil = self._pil(image, what)
        side = max(pil.size)
        corner = np.asarray(pil)[0, 0]
        background = tuple(int(v) for v in np.atleast_1d(corner)) if self.mode == "RGB" else int(corner)
        square = Image.new(self.mode, (side, side), background)
        square.paste(pil, ((side - pil.size[0]) // 2, (side - pil.size[1]) // 2))
        return self._to_tensor(square.resize((self.support_size,) * 2, Image.Resampling.BOX))

    def _image(self, image: Any, what: str) -> Tensor:
        pil = self._pil(image, what)
        if min(pil.size) < self.support_size:
            raise ValueError(f"{what} is {pil.size[0]}x{pil.size[1]} pixels, smaller than the "
                             f"{self.support_size}x{self.support_size} support crops this run detects; "
                             "pass larger images")
        return self._to_tensor(pil)


def _box(box: Tensor) -> Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0, y0, x1, y1)


def load_detector(learner: DetectionLearner, run_info: dict[str, Any], device: str | torch.device,
                  **options: Any) -> FewShotDetector:
    """The ``FewShotDetector`` of a loaded detection run (``attnmeta.load`` calls it)."""
    if not isinstance(learner, DetectionLearner):
        raise UserError(f"run's learner {type(learner).__name__} is not a detector")
    return FewShotDetector(learner.to(device), run_info.get("preprocessing") or {}, device, **options)
