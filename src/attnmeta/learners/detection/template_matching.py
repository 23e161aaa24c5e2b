"""Training-free few-shot detection baseline: multi-scale normalised cross-correlation with the support crops.

Each support crop (grayscale: the channel mean) is resized to every side length in ``sizes`` and slid over
each query image (``skimage.feature.match_template``, zero-normalised cross-correlation in [-1, 1]); the local
maxima (``skimage.feature.peak_local_max``) are candidate boxes. A candidate's box is the template's
placement shrunk to the crop's ink bounding box (support crops are whole objects with margins, ground-truth
boxes are tight around the ink; ink is bright, as in ``attnmeta.data.omniglot``). Its score is the
correlation clipped to [0, 1] (peaks with correlation <= 0 are dropped). Per class the candidates of all
shots and sizes are pooled and suppressed (class-wise NMS); the ``max_detections`` best over all classes are
kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from attnmeta.learners.detection.base import DetectionLearner
from attnmeta.tasks.detection import Detections, nms

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1)
_FLAT = 1e-6  # a template with a smaller standard deviation has no pattern to correlate


def _gray(images: Tensor) -> np.ndarray:
    """``[B, C, H, W]`` -> float64 numpy ``[B, H, W]`` (mean over channels)."""
    return images.detach().float().mean(dim=1).cpu().numpy().astype(np.float64)


def ink_box(crop: np.ndarray, threshold: float) -> Box:
    """Relative ``(x0, y0, x1, y1)`` in [0, 1] of the pixels above ``threshold * max`` of ``crop`` ``[s, s]``.

    Pixel-corner convention (a crop whose ink covers columns 3..5 of 10 gives ``x0 = 0.3, x1 = 0.6``). The
    whole crop ``(0, 0, 1, 1)`` when there is no ink (a crop whose maximum is not positive).
    """
    peak = float(crop.max()) if crop.size else 0.0
    if peak <= 0:
        return 0.0, 0.0, 1.0, 1.0
    rows, cols = np.nonzero(crop > threshold * peak)
    if rows.size == 0:  # threshold >= 1: the brightest pixels only
        rows, cols = np.nonzero(crop >= peak)
    h, w = crop.shape
    return float(cols.min()) / w, float(rows.min()) / h, float(cols.max() + 1) / w, float(rows.max() + 1) / h


def nms_top(boxes: Tensor, scores: Tensor, iou_threshold: float, k: int) -> Tensor:
    """The first ``k`` indices that greedy ``nms`` keeps (best first), without the IoU of all pairs.

    Greedy NMS visits the boxes by score, so it runs on growing prefixes until ``k`` boxes are kept.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    kept = order[:0]
    chunk = max(1, 2 * k)
    for start in range(0, order.numel(), chunk):
        if kept.numel() >= k:
            break
        idx = torch.cat([kept, order[start:start + chunk]])
        kept = idx[nms(boxes[idx], scores[idx], iou_threshold)]
    return kept[:k]


class TemplateMatching(DetectionLearner):
    """Multi-scale normalised cross-correlation of the support crops with the query images (no parameters).

    Args:
        sizes: template sides in pixels to try (each crop is resized to ``size x size``); sizes larger than
            an image are skipped for it.
        min_distance: minimal spacing of the correlation peaks of one template (pixels).
        nms_iou: class-wise non-maximum suppression IoU threshold.
        ink_threshold: a crop's ink is its pixels above ``ink_threshold`` times its maximum.
    """

    name = "template-matching"
    trainable = False

    def __init__(self, sizes: Sequence[int] = (20, 26, 32, 38, 44, 50, 56), min_distance: int = 4,
                 nms_iou: float = 0.3, ink_threshold: float = 0.5) -> None:
        super().__init__()
        if not sizes or any(int(s) < 2 for s in sizes):
            raise ValueError(f"sizes must be template sides of at least 2 pixels, got {list(sizes)!r}")
        if min_distance < 1:
            raise ValueError(f"min_distance must be at least 1 pixel, got {min_distance}")
        if not 0.0 <= nms_iou <= 1.0 or not 0.0 <= ink_threshold <= 1.0:
            raise ValueError(f"nms_iou and ink_threshold lie in [0, 1], got {nms_iou} and {ink_threshold}")
        self.sizes = tuple(int(s) for s in sizes)
        self.min_distance = int(min_distance)
        self.nms_iou = float(nms_iou)
        self.ink_threshold = float(ink_threshold)

    def extra_repr(self) -> str:
        return (f"sizes={self.sizes}, min_distance={self.min_distance}, nms_iou={self.nms_iou}, "
                f"ink_threshold={self.ink_threshold}")

    def _templates(self, crop: np.ndarray) -> list[np.ndarray]:
        """``crop`` ``[s, s]`` resized to each of ``sizes`` (anti-aliased); flat templates are left out."""
        from skimage.transform import resize

        out = []
        for size in self.sizes:
            template = resize(crop, (size, size), anti_aliasing=True, preserve_range=True)
            if float(template.std()) > _FLAT:
                out.append(template)
        return out

    def _match(self, image: np.ndarray, templates: list[np.ndarray], ink: Box,
               max_peaks: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate boxes ``[M, 4]`` (pixels, clipped to the image) and scores ``[M]`` of one crop's
        templates in ``image`` ``[H, W]`` (at most ``max_peaks`` per template)."""
        from skimage.feature import match_template, peak_local_max

        height, width = image.shape
        boxes, scores = [], []
        for template in templates:
            size = template.shape[0]
            if size > height or size > width:
                continue
            ncc = match_template(image, template, pad_input=True)
            peaks = peak_local_max(ncc, min_distance=self.min_distance, threshold_abs=0.0,
                                   exclude_border=False, num_peaks=max_peaks)
            if len(peaks) == 0:
                continue
            value = ncc[peaks[:, 0], peaks[:, 1]]
            keep = value > 0
            # with pad_input, the peak at (r, c) puts the template's top-left corner at (r, c) - size // 2
            top, left = peaks[keep, 0] - size // 2, peaks[keep, 1] - size // 2
            x0, y0, x1, y1 = ink
            boxes.append(np.stack([left + x0 * size, top + y0 * size, left + x1 * size, top + y1 * size], 1))
            scores.append(np.clip(value[keep], 0.0, 1.0))
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0)
        box = np.concatenate(boxes)
        box[:, 0::2] = box[:, 0::2].clip(0, width)
        box[:, 1::2] = box[:, 1::2].clip(0, height)
        score = np.concatenate(scores)
        valid = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
        return box[valid], score[valid]

    def detect(self, support_x: Tensor, support_y: Tensor, ways: int, images: Tensor,
               max_detections: int = 100) -> list[Detections]:
        """Boxes of the ``ways`` support classes in each image, best score first (see the module docstring).

        Args:
            support_x: ``[N*K, C, s, s]`` support crops in [0, 1] (any ``s``).
            support_y: ``[N*K]`` labels in ``0..ways-1``.
            images: ``[Q, C, H, W]`` images in [0, 1].
            max_detections: boxes kept per image.
        Returns: ``Q`` ``Detections`` on the CPU, scores in [0, 1].
        """
        crops = _gray(support_x)
        labels = support_y.detach().cpu().long().tolist()
        shots = [(self._templates(crop), ink_box(crop, self.ink_threshold)) for crop in crops]
        out = []
        for image in _gray(images):
            found = [self._detect_class(image, [shots[i] for i, y in enumerate(labels) if y == c], c,
                                        max_detections) for c in range(ways)]
            found.append(Detections.empty())
            pooled = Detections(torch.cat([d.boxes for d in found]), torch.cat([d.scores for d in found]),
                                torch.cat([d.labels for d in found]))
            out.append(pooled.top(max_detections))
        return out

    def _detect_class(self, image: np.ndarray, shots: list[tuple[list[np.ndarray], Box]], label: int,
                      max_detections: int) -> Detections:
        """The class's shots' (templates, ink box) candidates in ``image`` ``[H, W]`` after class-wise NMS."""
        found = [self._match(image, templates, ink, max(1, max_detections)) for templates, ink in shots]
        if not found:
            return Detections.empty()
        boxes = torch.from_numpy(np.concatenate([f[0] for f in found])).float()
        scores = torch.from_numpy(np.concatenate([f[1] for f in found])).float()
        keep = nms_top(boxes, scores, self.nms_iou, max_detections)
        return Detections(boxes[keep], scores[keep], torch.full((len(keep),), label, dtype=torch.long))
