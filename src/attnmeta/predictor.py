"""Use a trained run on new data in three lines: ``attnmeta.load``, ``fit`` (support), ``predict`` (query).

```python
clf = attnmeta.load("runs/omniglot-maml-5w1s")   # a run folder or one checkpoint folder
clf.fit(support_images, support_labels)          # PIL images, file paths, arrays, tensors; any labels
clf.predict(query_images)                        # labels in the user's label space
clf.predict_proba(query_images)                  # [m, n_classes], columns in clf.classes_ order
```

Text runs (``attnmeta train clinc150``) take lists of strings: ``clf.fit(["book a flight", ...], labels)``,
``clf.predict(["what's the weather"])``; the checkpoint carries the tokenizer
(``preprocessing["tokenizer"]``).
Images are preprocessed as in training from the checkpoint's ``preprocessing`` record (keys:
``image_size`` (int or [h, w]), ``channels`` (1 or 3), ``invert`` (raw dark-on-light drawings are inverted,
as in training),
``mean``/``std`` (per channel, applied to pixels scaled to [0, 1])). Regression runs take arrays of x and y
instead (finite numbers; ``[n]`` or ``[n, d]``).

Image inputs (each one checked, errors name it, e.g. ``support[3]``):

* PIL images; ``str`` / ``pathlib.Path`` image files (opened with PIL; a missing or corrupt file is an
  error naming it); numpy arrays and torch tensors ``[H, W]``, ``[C, H, W]`` or ``[H, W, C]``, or a batch
  ``[n, ...]``. Images of any size are resized to the model's size.
* Array pixels: ``uint8`` (and other integer types) are 0..255 (values outside are an error); ``bool`` is
  0 / 1, as ``np.array(Image.open(...))`` gives for 1-bit PNGs; floats must already be in [0, 1]: a float
  image with values above 1 (e.g. 0..255 floats) is rejected with the fix (divide by 255), never guessed.
  NaN / infinite / negative pixels and images with no pixels are rejected.
* PIL images with 16- or 32-bit pixels (modes ``I;16``, ``I``: integer rule above; ``F``: 0..255, as PIL
  converts them) are checked instead of being clipped to 0..255.

Labels: one per support image, any hashable values but not missing ones (``None``, NaN).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnmeta.detector import FewShotDetector
from attnmeta.errors import UserError
from attnmeta.learners.base import Learner
from attnmeta.predictor_inputs import check_labels, numeric_array, pixel_array, read_image, wide_pil_pixels
from attnmeta.seq2seq_predictor import FewShotSeq2Seq
from attnmeta.tasks.episode import Task
from attnmeta.train.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, load_weights
from attnmeta.train.config import RunConfig
from attnmeta.train.trainer import BenchmarkParts, build_learner, import_plugins


class FewShotPredictor:
    """A trained learner plus its preprocessing, with a scikit-learn-like few-shot interface.

    Attributes:
        learner: the meta-trained ``Learner`` (its weights are never changed).
        task_type: ``"classification"`` or ``"regression"``.
        classes_: after ``fit`` (classification), the user's labels in column order of ``predict_proba``.
    """

    def __init__(
        self,
        learner: Learner,
        config: RunConfig,
        run_info: dict[str, Any],
        device: str | torch.device = "cpu",
    ) -> None:
        self.learner = learner.eval()
        self.config = config
        self.task_type = run_info["task_type"]
        self.input_shape = tuple(run_info["input_shape"])
        self.preprocessing = dict(run_info.get("preprocessing") or {})
        self.trained_ways = run_info.get("ways")
        self.max_ways = run_info.get("max_ways")
        self.any_ways = bool(run_info.get("any_ways", True))
        self.device = torch.device(device)
        self.dtype = next(learner.parameters()).dtype
        self.classes_: list[Hashable] = []
        self._support: tuple[Tensor, Tensor] | None = None
        self._tokenizer: Any = None  # text runs: built from the checkpoint on first use

    # -- inputs -------------------------------------------------------------------------------------
    def _prepare_inputs(self, inputs: Any, what: str) -> Tensor:
        """Model inputs: token ids of strings for text runs (their tokenizer is in the checkpoint), else
        images."""
        if not self.preprocessing.get("text"):
            return self._prepare_images(inputs, what)
        if isinstance(inputs, str) or not isinstance(inputs, Sequence) or len(inputs) == 0:
            raise ValueError(f"{what}: this is a text model; pass a non-empty list of strings")
        bad = [i for i, text in enumerate(inputs) if not isinstance(text, str)]
        if bad:
            raise TypeError(f"{what}[{bad[0]}] is a {type(inputs[bad[0]]).__name__}; this is a text model, "
                            "pass strings")
        if self.preprocessing.get("text_inputs") == "utf8":  # raw-text models (attnmeta.nn.sentence)
            from attnmeta.nn.sentence import encode_utf8

            return encode_utf8(list(inputs), int(self.preprocessing["max_bytes"]))
        if self._tokenizer is None:
            from attnmeta.nn.text import TextTokenizer

            self._tokenizer = TextTokenizer.from_dict(self.preprocessing["tokenizer"])
        return self._tokenizer.encode(list(inputs))

    def _image_settings(self) -> tuple[int, tuple[int, int]]:
        channels = int(self.preprocessing.get("channels", self.input_shape[0]))
        size = self.preprocessing.get("image_size", self.input_shape[-2:])
        size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        return channels, size

    def _prepare_images(self, images: Any, what: str) -> Tensor:
        """Images (a list, or an array/tensor batch ``[n, ...]``) -> normalized ``[n, C, H, W]``."""
        if isinstance(images, (np.ndarray, Tensor)):
            channels, _ = self._image_settings()
            if images.ndim == 3 and channels == 1:
                images = list(images)
            elif images.ndim == 4:
                images = list(images)
            else:
                raise ValueError(
                    f"{what}: pass a list of images or a batch of shape [n, C, H, W] / [n, H, W, C]"
                    f"{' / [n, H, W]' if channels == 1 else ''}, got shape {tuple(images.shape)}"
                )
        if not isinstance(images, Sequence) or isinstance(images, (str, bytes)) or len(images) == 0:
            raise ValueError(f"{what}: pass a non-empty list of images (PIL images, file paths, numpy arrays "
                             f"or tensors), got {_describe(images)}")
        return torch.stack([self._prepare_image(image, f"{what}[{i}]") for i, image in enumerate(images)])

    def _prepare_image(self, image: Any, what: str) -> Tensor:
        """One image -> ``[C, H, W]`` float32, exactly as the training data was made: resize (PIL, the
        recorded filter) on uint8 pixels, invert if recorded, scale to [0, 1], normalize by mean/std."""
        channels, (height, width) = self._image_settings()
        array = self._pixels(image, what)
        if array.dtype == np.uint8:
            if self.preprocessing.get("invert"):
                array = 255 - array
            tensor = torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            if tuple(tensor.shape[-2:]) != (height, width):
                tensor = torch.nn.functional.interpolate(
                    tensor[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False
                )[0]
            if self.preprocessing.get("invert"):
                tensor = 1.0 - tensor
        if "mean" in self.preprocessing:
            mean = torch.tensor(self.preprocessing["mean"], dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(self.preprocessing.get("std", [1.0] * channels), dtype=torch.float32)
            tensor = (tensor - mean) / std.view(-1, 1, 1)
        return tensor

    def _pixels(self, image: Any, what: str) -> np.ndarray:
        """One checked image as ``[C, H, W]``: uint8 resized with PIL, or float32 in [0, 1] (any size)."""
        from PIL import Image

        channels, (height, width) = self._image_settings()
        mode = "L" if channels == 1 else "RGB"
        if isinstance(image, (str, Path)):
            image = read_image(image, what)
        if isinstance(image, Image.Image):
            image = wide_pil_pixels(image, what)  # 16/32-bit pixels: checked, not clipped by PIL
        if isinstance(image, Image.Image) and 0 in image.size:
            raise ValueError(f"{what} is a {image.size[0]}x{image.size[1]} image; an image needs at least "
                             "one pixel")
        if not isinstance(image, Image.Image):
            array = pixel_array(image, what)
            if array.shape[0] != channels:
                raise ValueError(
                    f"{what} has {array.shape[0]} channels but this model takes {channels}-channel "
                    f"({'grayscale' if channels == 1 else 'RGB'}) images; convert the images first"
                )
            if array.dtype != np.uint8 or tuple(array.shape[-2:]) == (height, width):
                return array
            image = Image.fromarray(array[0] if channels == 1 else np.moveaxis(array, 0, -1), mode)
        pil = image.convert(mode)
        if pil.size != (width, height):
            name = str(self.preprocessing.get("resize", "lanczos")).upper()
            pil = pil.resize((width, height), getattr(Image.Resampling, name, Image.Resampling.LANCZOS))
        pixels = np.asarray(pil, dtype=np.uint8)
        return pixels[None] if channels == 1 else np.moveaxis(pixels, -1, 0)

    def _prepare_regression(self, values: Any, what: str) -> Tensor:
        features = self.input_shape[0] if what == "x" and len(self.input_shape) == 1 else None
        return numeric_array(values, what, features)

    # -- API --------------------------------------------------------------------------------------------
    def fit(self, support: Any, labels: Any) -> FewShotPredictor:
        """Remember the support set (classification: images + labels; regression: x + y)."""
        if self.task_type == "regression":
            x, y = self._prepare_regression(support, "x"), self._prepare_regression(labels, "y")
            if len(x) != len(y):
                raise ValueError(f"fit got {len(x)} x values but {len(y)} y values; pass one y per x")
            self._support = (x, y)
            return self
        kind = "strings" if self.preprocessing.get("text") else "images"
        if not hasattr(support, "__len__") or isinstance(support, (str, bytes)):
            raise TypeError(f"support must be a list of {kind} (one per label), got {_describe(support)}")
        if len(support) == 0:
            raise ValueError(f"fit got an empty support set; pass {kind} of at least two classes, with "
                             "their labels")
        labels = check_labels(labels, len(support), kind)
        classes = list(dict.fromkeys(labels))
        try:
            classes = sorted(classes)
        except TypeError:
            pass  # labels of mixed types keep their first-seen order
        if len(classes) < 2:
            raise ValueError(
                f"the support set has only one class ({classes[0]!r}); few-shot classification needs "
                "examples of at least two classes"
            )
        if not self.any_ways and self.trained_ways is not None and len(classes) != self.trained_ways:
            raise ValueError(
                f"this model was meta-trained {self.trained_ways}-way and cannot classify "
                f"{len(classes)} classes; pass a support set of exactly {self.trained_ways} classes"
            )
        if self.max_ways is not None and len(classes) > self.max_ways:
            raise ValueError(
                f"this model has {self.max_ways} outputs and can classify at most {self.max_ways} "
                f"classes, but the support set has {len(classes)}"
            )
        index = {c: i for i, c in enumerate(classes)}
        images = self._prepare_inputs(support, "support")
        self.classes_ = classes
        self._support = (images, torch.tensor([index[label] for label in labels], dtype=torch.long))
        return self

    def _outputs(self, query: Any) -> Tensor:
        if self._support is None:
            raise ValueError("call fit(support, labels) before predict")
        support_x, support_y = self._support
        if self.task_type == "regression":
            query_x = self._prepare_regression(query, "x")
            query_y = torch.zeros(len(query_x), support_y.shape[1], dtype=support_y.dtype)
            classes = torch.empty(0, dtype=torch.long)
        else:
            query_x = self._prepare_inputs(query, "query")
            query_y = torch.zeros(len(query_x), dtype=torch.long)
            classes = torch.arange(len(self.classes_))
        task = Task(support_x, support_y, query_x, query_y, classes).to(self.device, self.dtype)
        return self.learner.predict(task).detach().cpu()

    def predict_proba(self, query: Any) -> np.ndarray:
        """Class probabilities ``[m, n_classes]``; column ``j`` is ``classes_[j]``."""
        if self.task_type == "regression":
            raise ValueError("predict_proba is for classification runs; use predict for regression")
        return torch.softmax(self._outputs(query).double(), dim=-1).numpy()

    def predict(self, query: Any) -> list[Hashable] | np.ndarray:
        """Labels (classification, in the user's label space) or predicted y ``[m, out_dim]`` (regression)."""
        outputs = self._outputs(query)
        if self.task_type == "regression":
            return outputs.double().numpy()
        return [self.classes_[i] for i in outputs.argmax(-1).tolist()]


def _describe(value: Any) -> str:
    """A short description of a wrong input, e.g. ``an empty list`` or ``str``."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == 0:
        return f"an empty {type(value).__name__}"
    return type(value).__name__


def load(
    path: str | Path,
    *,
    checkpoint: str = "best",
    device: str | torch.device = "cpu",
    imports: Sequence[str] = (),
    score_threshold: float = 0.3,
    max_detections: int = 20,
) -> FewShotPredictor | FewShotDetector | FewShotSeq2Seq:
    """Load a run folder (its best checkpoint, or ``checkpoint="latest"``) or one checkpoint folder.

    A detection run gives a ``attnmeta.detector.FewShotDetector`` (``fit`` then ``detect``), which keeps
    boxes scoring at least ``score_threshold``, at most ``max_detections`` per image; a sequence-to-sequence
    run a ``attnmeta.seq2seq_predictor.FewShotSeq2Seq`` (``fit`` pairs, then ``generate``); any other run a
    ``FewShotPredictor``.

    Loading never executes code from the files: weights are safetensors, state is JSON, and the modules a
    run names under ``imports`` are not imported. A run trained with a custom learner needs ``imports``:
    modules or ``.py`` files you trust that register it (the error message names them).
    """
    if checkpoint not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
    path = Path(path)
    ckpt: Path | None
    if (path / "manifest.json").is_file():
        ckpt = path
    elif (path / "checkpoints").is_dir():
        manager = CheckpointManager(path / "checkpoints")
        ckpt = manager.best_path() if checkpoint == "best" else None
        if ckpt is None or not ckpt.is_dir():
            ckpt = manager.latest_valid()
        if ckpt is None:
            raise ValueError(f"run folder {str(path)!r} has no valid checkpoint to load")
    else:
        raise ValueError(
            f"{str(path)!r} is neither a run folder (with checkpoints/) nor a checkpoint folder "
            "(with manifest.json); pass the folder written by `attnmeta train`"
        )
    weights, state = load_checkpoint(ckpt)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("run"), dict):
        raise CheckpointError(f"checkpoint {str(ckpt)!r} lacks its run config; it was not written by "
                              "`attnmeta train` or is damaged")
    config = RunConfig.from_dict(state["config"])
    run_info = state["run"]
    if run_info.get("task_type") == "rl":
        raise UserError(
            f"{str(path)!r} is a meta-RL run ({config.algo} on {config.benchmark}); the predictor serves "
            f"classification and regression runs: evaluate it with `attnmeta eval {path}`, or load its "
            "policy with attnmeta.rl.registry.build_rl_learner and attnmeta.train.checkpoint.load_weights"
        )
    import_plugins(list(imports))
    if run_info.get("task_type") == "seq2seq":
        from attnmeta.train.seq2seq_run import load_seq2seq_learner

        sequence_learner = load_seq2seq_learner(run_info, config)
        load_weights(sequence_learner, weights, ckpt)
        return FewShotSeq2Seq(sequence_learner.to(device), str(run_info.get("source_format", "chars")))
    if run_info.get("task_type") == "detection":
        from attnmeta.detector import load_detector
        from attnmeta.learners.detection.registry import build_detector

        detector = build_detector(config.algo, int(run_info["input_shape"][0]), config.algo_options)
        load_weights(detector, weights, ckpt)
        return load_detector(detector, run_info, device, score_threshold=score_threshold,
                             max_detections=max_detections)
    parts = BenchmarkParts(
        run_info["benchmark"],
        run_info["task_type"],
        None,
        None,
        None,
        tuple(run_info["input_shape"]),
        run_info.get("preprocessing") or {},
        run_info.get("default_backbone"),
    )
    config.device = "cpu" if str(device) == "cpu" else config.device
    learner = build_learner(config, parts)
    load_weights(learner, weights, ckpt)
    return FewShotPredictor(learner.to(device), config, run_info, device)
