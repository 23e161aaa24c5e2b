"""Anchor-free box encoding in the style of CenterNet (Zhou et al., "Objects as Points", 2019).

A box is its centre on a feature map of stride ``stride``: a peak of a class heat-map, plus the centre's
sub-cell offset and the box's log-size in cells. ``centre_targets`` encodes ground truth, ``focal_loss`` and
``box_loss`` train the maps, ``decode`` turns maps into boxes. Pure functions on tensors.

Shapes: ``Q`` images, ``N`` classes, ``H x W`` feature map; boxes ``(x0, y0, x1, y1)`` in image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnmeta.tasks.detection import Detections


@dataclass(frozen=True)
class CentreTargets:
    """Ground truth on the feature map.

    Attributes:
        heat: ``[Q, N, H, W]`` Gaussian peaks (1 at each object's centre cell).
        index: ``[M, 3]`` (image, row, column) of each object's centre cell.
        offset: ``[M, 2]`` sub-cell position of the centre, (x, y) in [0, 1).
        log_size: ``[M, 2]`` log of the box (width, height) in cells.
        label: ``[M]`` class of each object (for class-wise box maps).
    """

    heat: Tensor
    index: Tensor
    offset: Tensor
    log_size: Tensor
    label: Tensor | None = None


def centre_targets(boxes: list[Tensor], labels: list[Tensor], ways: int, height: int, width: int,
                   stride: int) -> CentreTargets:
    """Encode each image's boxes ``[M_i, 4]`` and labels ``[M_i]`` on an ``height x width`` map."""
    heat = torch.zeros(len(boxes), ways, height, width)
    rows, offsets, sizes, classes = [], [], [], []
    ys, xs = torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32)
    for q, (image_boxes, image_labels) in enumerate(zip(boxes, labels)):
        for box, label in zip(image_boxes.float().cpu(), image_labels.tolist()):
            centre = (box[:2] + box[2:]) / (2 * stride)
            size = ((box[2:] - box[:2]) / stride).clamp(min=1e-3)
            cell = centre.floor().clamp(min=0).long()
            cx, cy = min(int(cell[0]), width - 1), min(int(cell[1]), height - 1)
            sigma = size / 6 + 0.25  # per axis, in cells
            gauss = torch.exp(-((xs[None, :] - cx) ** 2) / (2 * sigma[0] ** 2)
                              - ((ys[:, None] - cy) ** 2) / (2 * sigma[1] ** 2))
            torch.maximum(heat[q, label], gauss, out=heat[q, label])
            rows.append([q, cy, cx])
            classes.append(label)
            offsets.append((centre - torch.tensor([cx, cy])).clamp(0, 1 - 1e-4))
            sizes.append(size.log())
    index = torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
    offset = torch.stack(offsets) if offsets else torch.zeros(0, 2)
    log_size = torch.stack(sizes) if sizes else torch.zeros(0, 2)
    return CentreTargets(heat, index, offset, log_size, torch.tensor(classes, dtype=torch.long))


def focal_loss(logits: Tensor, heat: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced focal loss of heat-map ``logits`` against Gaussian targets ``heat`` (same
    shape), summed and divided by the number of peaks (at least 1)."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    peak = heat >= 1.0
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    positive = -((1 - prob) ** alpha) * log_p
    negative = -((1 - heat) ** beta) * prob**alpha * log_not_p
    loss = torch.where(peak, positive, negative).sum()
    return loss / peak.sum().clamp(min=1)


def box_loss(boxes_map: Tensor, targets: CentreTargets) -> tuple[Tensor, Tensor]:
    """L1 losses (offset, log-size) of ``boxes_map`` ``[Q, 4, H, W]`` (offset x, y; log-size w, h), or
    ``[Q, N, 4, H, W]`` (one map per class: each object's class's), at the objects' centre cells, each
    averaged over objects (0 without objects)."""
    if targets.index.numel() == 0:
        zero = boxes_map.sum() * 0
        return zero, zero
    q, r, c = targets.index.to(boxes_map.device).unbind(1)
    if boxes_map.dim() == 5:
        assert targets.label is not None, "class-wise box maps need the targets' labels"
        values = boxes_map[q, targets.label.to(boxes_map.device), :, r, c]  # [M, 4]
    else:
        values = boxes_map[q, :, r, c]  # [M, 4]
    offset = F.l1_loss(values[:, :2], targets.offset.to(values), reduction="sum") / len(q)
    size = F.l1_loss(values[:, 2:], targets.log_size.to(values), reduction="sum") / len(q)
    return offset, size


def decode(heat_logits: Tensor, boxes_map: Tensor, stride: int, max_detections: int = 100,
           image_size: tuple[int, int] | None = None) -> list[Detections]:
    """Boxes from maps: local maxima (3x3) of the class heat-maps ``[Q, N, H, W]``, their offsets and sizes
    from ``boxes_map`` ``[Q, 4, H, W]`` (or ``[Q, N, 4, H, W]``, one per class: the peak's class's); the
    ``max_detections`` best per image, clipped to ``image_size``
    ``(height, width)`` when given."""
    heat = torch.sigmoid(heat_logits)
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    q_count, ways, height, width = heat.shape
    k = min(max_detections, ways * height * width)
    scores, flat = peaks.flatten(1).topk(k, dim=1)
    out = []
    for q in range(q_count):
        label, cell = flat[q] // (height * width), flat[q] % (height * width)
        row, col = cell // width, cell % width
        if boxes_map.dim() == 5:
            values = boxes_map[q, label, :, row, col].T  # [4, k]
        else:
            values = boxes_map[q, :, row, col]  # [4, k]
        cx = (col + values[0]) * stride
        cy = (row + values[1]) * stride
        w, h = values[2].exp() * stride, values[3].exp() * stride
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        if image_size is not None:
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_size[1])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_size[0])
        keep = scores[q] > 0
        out.append(Detections(boxes[keep].float(), scores[q][keep].float(), label[keep]))
    return out
