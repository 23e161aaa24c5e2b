"""Checking and reading the inputs of ``FewShotPredictor`` and ``attnmeta predict`` (one-line errors).

Image rules (the predictor's module docstring repeats them for users):

* PIL images are converted to the model's mode (``L`` or ``RGB``); 16- and 32-bit integer PIL images (modes
  ``I;16``, ``I``) go through the integer array rule below instead of being clipped by PIL; float PIL images
  (mode ``F``) must hold finite values in 0..255 (PIL's own scale for them).
* ``str`` / ``pathlib.Path`` items are image files, opened with PIL (``read_image``).
* Arrays and tensors: ``uint8`` pixels are 0..255; other integer types are accepted when all values are in
  0..255; ``bool`` pixels are 0 / 1 (what ``np.array`` gives for 1-bit PNGs: ``True`` is white); floats
  must be in [0, 1]. Floats above 1 (e.g. 0..255 values in a float array) are rejected, not guessed: divide
  by 255 first. A per-image guess would silently read a dark 0..255 image (max <= 1) as a bright one.
* NaN / infinite pixels, negative pixels (already-normalized images: the model normalizes itself), images
  with no pixels and integer pixels outside 0..255 are rejected, naming the example (``support[3]``).

Labels: one per support image, hashable, not missing (``None`` / NaN).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnmeta.errors import DataError, UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# -- files and folders ------------------------------------------------------------------------------------
def read_image(path: str | Path, what: str | None = None) -> Any:
    """The image in file ``path`` as a PIL image (read fully, file closed); a missing, unreadable or corrupt
    file is a ``DataError`` naming it."""
    from PIL import Image

    path = Path(path)
    where = f"{what}: " if what else ""
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise DataError(f"{where}image file {str(path)!r} {state}")
    try:
        with warnings.catch_warnings():  # PIL warns (e.g. "Corrupt EXIF data") before it fails or recovers
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with Image.open(path) as image:
                image.load()
                return image.copy()
    except Exception as error:  # noqa: BLE001 - PIL raises many types for bad files (OSError, SyntaxError, ...)
        reason = ("not an image format PIL can read" if isinstance(error, Image.UnidentifiedImageError)
                  else " ".join(str(error).split()) or type(error).__name__)
        raise DataError(f"{where}cannot read image file {str(path)!r} ({reason}); replace or remove "
                        "it") from None


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (by suffix), sorted; hidden files (``.DS_Store``, ``._x.png``) skipped."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def read_support_folder(folder: str | Path, option: str = "--support") -> tuple[list[Any], list[str]]:
    """Images and labels of a folder holding one subfolder of images per class (the label: its name)."""
    folder = _folder(folder, option)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{option} {str(folder)!r} must hold one subfolder of images per class")
    images: list[Any] = []
    labels: list[str] = []
    for class_dir in class_dirs:
        files = list_images(class_dir)
        if not files:
            raise UserError(f"class folder {str(class_dir)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        images += [read_image(file) for file in files]
        labels += [class_dir.name] * len(files)
    return images, labels


def read_query_folder(folder: str | Path, option: str = "--query") -> tuple[list[Any], list[Path]]:
    """The images of a folder and their files."""
    folder = _folder(folder, option)
    files = list_images(folder)
    if not files:
        raise UserError(f"{option} {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [read_image(file) for file in files], files


def _folder(folder: str | Path, option: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{option} {str(folder)!r} is not a folder")
    return folder


# -- arrays ---------------------------------------------------------------------------------------------
def wide_pil_pixels(image: Any, what: str) -> Any:
    """A PIL image with 16/32-bit pixels checked: integer modes (``I``, ``I;16``) as a numpy array (for
    ``pixel_array``), float mode ``F`` checked to hold 0..255; other modes unchanged."""
    mode = image.mode.split(";")[0]
    if mode == "I":
        return np.asarray(image)
    if mode != "F" or 0 in image.size:
        return image
    values = np.asarray(image)
    if not np.isfinite(values).all():
        raise ValueError(f"{what} has NaN or infinite pixels; replace them (e.g. np.nan_to_num) or drop the "
                         "image")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise ValueError(f"{what} is a float (mode F) PIL image with values outside [0, 255] (min {low:.4g}, "
                         f"max {high:.4g}); scale it to 0..255")
    return image


def pixel_array(image: Any, what: str) -> np.ndarray:
    """A numpy/torch image as checked ``[C, H, W]`` pixels: ``uint8`` (0..255) or ``float32`` (0..1); the
    layout is guessed from the shape."""
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.is_floating_point() else image).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a PIL image, an image file path, a numpy array or a torch tensor, "
                        f"got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(
            f"{what} must have 2 (H, W) or 3 (C, H, W or H, W, C) dimensions, got shape {image.shape}"
        )
    if image.size == 0:
        raise ValueError(f"{what} has shape {image.shape}: an image needs at least one pixel")
    image = _pixel_values(image, what)
    if image.ndim == 2:
        return image[None]
    if image.shape[0] not in (1, 3, 4) and image.shape[-1] in (1, 3, 4):
        image = np.moveaxis(image, -1, 0)
    return image


def _pixel_values(image: np.ndarray, what: str) -> np.ndarray:
    """Checked pixel values as ``uint8`` or ``float32`` in [0, 1] (see the module docstring)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(image.dtype, np.integer):
        lowest, highest = int(image.min()), int(image.max())
        if lowest < 0 or highest > 255:
            raise ValueError(f"{what} has pixel values outside [0, 255] (min {lowest}, max {highest}); pass "
                             "8-bit pixels (e.g. 16-bit images times 255 / 65535, as uint8)")
        return image.astype(np.uint8)
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"{what}: image arrays must be uint8 or integer (pixels 0..255), bool (0/1) or float "
                        f"(0..1), got {image.dtype}")
    if not np.isfinite(image).all():
        raise ValueError(f"{what} has NaN or infinite pixels; replace them (e.g. np.nan_to_num) or drop the "
                         "image")
    low, high = float(image.min()), float(image.max())
    if low < 0:
        raise ValueError(f"{what} has negative pixels (min {low:.4g}); pass raw pixels (floats in [0, 1] or "
                         "uint8 0..255), not normalized ones: the model normalizes them itself")
    if high > 1:
        raise ValueError(f"{what} has float pixels up to {high:.4g}; float images must be in [0, 1]: divide "
                         "0..255 values by 255 (or pass them as uint8)")
    return image.astype(np.float32)


def numeric_array(values: Any, what: str, features: int | None = None) -> Tensor:
    """Finite regression values as float64 ``[n, d]`` (``[n]`` becomes ``[n, 1]``); ``features``: the ``d``
    the model takes, if known."""
    if isinstance(values, Tensor):
        values = values.detach().cpu()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must hold numbers: an array or list of shape [n] or [n, d]") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty array of shape [n] or [n, d], got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise ValueError(f"{what}[{bad[0]}] is NaN or infinite; drop or fix that example")
    if features is not None and array.shape[1] != features:
        raise ValueError(f"{what} has {array.shape[1]} features per example but this model takes {features}")
    return torch.from_numpy(array)


# -- labels ---------------------------------------------------------------------------------------------
def check_labels(labels: Any, count: int, kind: str = "images") -> list[Any]:
    """``labels`` as a list of ``count`` hashable, non-missing labels (one per support ``kind``)."""
    if isinstance(labels, (np.ndarray, Tensor)):
        if labels.ndim != 1:
            raise ValueError(f"labels must hold one label per example (shape [n]), got shape "
                             f"{tuple(labels.shape)}")
        labels = labels.tolist()
    elif isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise TypeError(f"labels must be a list of one label per example, got {type(labels).__name__}")
    labels = [_label(label, i) for i, label in enumerate(labels)]
    if count != len(labels):
        raise ValueError(f"fit got {count} support {kind} but {len(labels)} labels; pass one label per "
                         f"{kind[:-1]}")
    return labels


def _label(label: Any, index: int) -> Any:
    if isinstance(label, (Tensor, np.ndarray)) and label.ndim == 0:
        label = label.item()
    if label is None or (isinstance(label, (float, np.floating)) and math.isnan(label)):
        raise ValueError(f"labels[{index}] is {label!r}, a missing value; give every support example a label")
    try:
        hash(label)
    except TypeError:
        raise TypeError(f"labels[{index}] is a {type(label).__name__}, which cannot be a class label; use "
                        "str, int or another hashable value") from None
    return label
