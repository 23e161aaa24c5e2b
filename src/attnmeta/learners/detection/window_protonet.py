"""Baseline: sliding windows classified by a Prototypical Networks embedding (Snell et al., 2017).

Every square window of the image at several sizes is resized to ``window_size``, embedded by a Conv-4
(``attnmeta.nn.backbones.Conv4``) and scored against the class prototypes (squared Euclidean distance) and a
learned background logit; the window's box is the class's object box inside a support crop (the ink box of
the crops, averaged over shots), placed in the window. Meta-trained on the same detection episodes: the
windows around the ground-truth objects are the queries of their class, random windows away from them the
queries of the background.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import MetaOutput
from attnmeta.learners.detection.attention_detector import check_support
from attnmeta.learners.detection.base import DetectionLearner
from attnmeta.nn.backbones import Conv4
from attnmeta.tasks.detection import DetectionBatch, Detections, DetectionTask, box_iou, nms


def ink_boxes(crops: Tensor, threshold: float = 0.5) -> Tensor:
    """Relative box ``(x0, y0, x1, y1)`` in [0, 1] of the pixels above ``threshold`` x the crop's maximum
    (channel mean) of each crop ``[n, C, s, s]``: ``[n, 4]``; the whole crop where nothing stands out."""
    gray = crops.mean(1)
    size = crops.shape[-1]
    out = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(len(crops), 1)
    for i, image in enumerate(gray):
        peak = float(image.max())
        if peak <= 0:
            continue
        rows, cols = torch.nonzero(image > threshold * peak, as_tuple=True)
        out[i] = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float() / size
    return out.to(crops.device)


class WindowProtoNet(DetectionLearner):
    """Sliding-window ProtoNets detector.

    Args:
        in_channels: image channels.
        hidden: Conv-4 filters.
        window_size: side the windows and support crops are resized to before embedding [pixels].
        sizes: window sides tried on the images [pixels].
        window_stride: window step as a fraction of the window side.
        background_windows: random background windows per query image in training.
        nms_iou: class-wise non-maximum suppression threshold.
    """

    name = "protonet-windows"

    def __init__(self, in_channels: int = 1, hidden: int = 64, window_size: int = 32,
                 sizes: Sequence[int] = (20, 28, 36, 44, 52), window_stride: float = 0.2,
                 background_windows: int = 8, nms_iou: float = 0.3) -> None:
        super().__init__()
        self.encoder = Conv4((in_channels, window_size, window_size), hidden=hidden, norm="fused")
        self.background = nn.Parameter(torch.tensor(0.0))
        self.window_size, self.sizes = window_size, tuple(int(s) for s in sizes)
        self.window_stride, self.background_windows, self.nms_iou = window_stride, background_windows, nms_iou

    def embed(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.window_size:
            x = F.interpolate(x, size=self.window_size, mode="area")
        return self.encoder.embed(x)

    def logits(self, prototypes: Tensor, features: Tensor) -> Tensor:
        """``[n, N + 1]``: minus squared distances to the prototypes, then the background logit."""
        distances = torch.cdist(features, prototypes).pow(2)
        return torch.cat([-distances, self.background.expand(len(features), 1)], 1)

    def prototypes(self, support_x: Tensor, support_y: Tensor, ways: int) -> tuple[Tensor, Tensor]:
        """Prototypes ``[N, F]`` and each class's relative object box ``[N, 4]``."""
        check_support(support_y, ways)
        features, boxes = self.embed(support_x), ink_boxes(support_x)
        protos = torch.stack([features[support_y == c].mean(0) for c in range(ways)])
        rel = torch.stack([boxes[support_y == c].mean(0) for c in range(ways)])
        return protos, rel

    # -- training --------------------------------------------------------------------------------------
    def meta_loss(self, batch: DetectionBatch) -> MetaOutput:
        losses, accuracies = [], []
        for task in batch:
            logits, labels = self._task_logits(task)
            losses.append(F.cross_entropy(logits, labels))
            accuracies.append((logits.argmax(1) == labels).float().mean().item())
        task_losses = torch.stack(losses)
        loss = task_losses.mean()
        return MetaOutput(loss, task_losses.detach(),
                          {"loss": loss.item(), "window_accuracy": sum(accuracies) / len(accuracies)})

    def _task_logits(self, task: DetectionTask) -> tuple[Tensor, Tensor]:
        protos, rel = self.prototypes(task.support_x, task.support_y, task.ways)
        crops, labels = [], []
        for image, boxes, box_labels in zip(task.query_x, task.query_boxes, task.query_labels):
            for box, label in zip(boxes, box_labels.tolist()):
                crops.append(crop_square(image, window_around(box, rel[label]), self.window_size))
                labels.append(label)
            for window in self._background(image, boxes, rel):
                crops.append(crop_square(image, window, self.window_size))
                labels.append(task.ways)
        return self.logits(protos, self.embed(torch.stack(crops))), torch.tensor(labels, device=protos.device)

    def _background(self, image: Tensor, boxes: Tensor, rel: Tensor) -> list[Tensor]:
        """Random windows whose object box (of any class) overlaps no ground-truth box by IoU >= 0.3."""
        out: list[Tensor] = []
        height, width = image.shape[-2:]
        for _ in range(self.background_windows * 4):
            side = float(self.sizes[int(torch.randint(len(self.sizes), ()))])
            x, y = (torch.rand(2) * torch.tensor([max(1.0, width - side), max(1.0, height - side)])).to(rel)
            window = torch.stack([x, y, x + side, y + side])
            placed = window[:2].repeat(2) + side * rel
            if len(boxes) == 0 or float(box_iou(placed, boxes.float()).max()) < 0.3:
                out.append(window)
            if len(out) == self.background_windows:
                break
        return out

    # -- detection -------------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, support_x: Tensor, support_y: Tensor, ways: int, images: Tensor,
               max_detections: int = 100) -> list[Detections]:
        protos, rel = self.prototypes(support_x, support_y, ways)
        return [self._detect_image(image, protos, rel, max_detections) for image in images]

    def _detect_image(self, image: Tensor, protos: Tensor, rel: Tensor, max_detections: int) -> Detections:
        boxes, scores, labels = [], [], []
        for size in self.sizes:
            windows, crops = sliding_windows(image, size, max(1, round(size * self.window_stride)),
                                             self.window_size)
            windows = windows.to(image.device)
            if len(windows) == 0:
                continue
            features = torch.cat([self.embed(chunk) for chunk in crops.split(512)])
            probs = self.logits(protos, features).softmax(1)[:, :-1]  # [L, N]
            score, label = probs.max(1)
            keep = score >= 0.01  # (fewer boxes for the suppression; a lower score never counts)
            boxes.append(windows[keep, :2].repeat(1, 2) + size * rel[label[keep]])
            scores.append(score[keep])
            labels.append(label[keep])
        if not boxes:
            return Detections.empty()
        return class_nms(torch.cat(boxes), torch.cat(scores), torch.cat(labels), self.nms_iou, max_detections)


def window_around(box: Tensor, rel: Tensor) -> Tensor:
    """The square window ``(x0, y0, x1, y1)`` in which the relative box ``rel`` lands on ``box``."""
    side = 0.5 * ((box[2] - box[0]) / (rel[2] - rel[0]) + (box[3] - box[1]) / (rel[3] - rel[1]))
    x0, y0 = box[0] - rel[0] * side, box[1] - rel[1] * side
    return torch.stack([x0, y0, x0 + side, y0 + side])


def crop_square(image: Tensor, window: Tensor, size: int) -> Tensor:
    """The window ``(x0, y0, x1, y1)`` of ``image`` ``[C, H, W]`` (zeros outside) resized to ``size``
    (bilinear sampling): ``[C, size, size]``."""
    height, width = image.shape[-2:]
    x0, y0, x1, y1 = window.tolist()
    xs = x0 + (torch.arange(size) + 0.5) * (x1 - x0) / size
    ys = y0 + (torch.arange(size) + 0.5) * (y1 - y0) / size
    grid = torch.stack(torch.meshgrid(2 * xs / width - 1, 2 * ys / height - 1, indexing="xy"), -1)
    return F.grid_sample(image[None], grid[None].to(image), align_corners=False)[0]


def sliding_windows(image: Tensor, size: int, step: int, out_size: int) -> tuple[Tensor, Tensor]:
    """All ``size x size`` windows of ``image`` ``[C, H, W]`` at ``step`` pixels, resized to ``out_size``:
    boxes ``[L, 4]`` and crops ``[L, C, out_size, out_size]``."""
    channels, height, width = image.shape
    if size > min(height, width):
        return torch.zeros(0, 4), torch.zeros(0, channels, out_size, out_size)
    ys = torch.arange(0, height - size + 1, step)
    xs = torch.arange(0, width - size + 1, step)
    scale = out_size / size
    scaled = F.interpolate(image[None], scale_factor=scale, mode="area", recompute_scale_factor=False)
    crops = []
    for y in ys.tolist():
        for x in xs.tolist():
            top, left = int(round(y * scale)), int(round(x * scale))
            patch = scaled[0, :, top: top + out_size, left: left + out_size]
            if patch.shape[-2:] != (out_size, out_size):
                patch = F.pad(patch, (0, out_size - patch.shape[-1], 0, out_size - patch.shape[-2]))
            crops.append(patch)
    gy, gx = torch.meshgrid(ys.float(), xs.float(), indexing="ij")
    boxes = torch.stack([gx.flatten(), gy.flatten(), gx.flatten() + size, gy.flatten() + size], 1)
    return boxes, torch.stack(crops)


def class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, max_detections: int) -> Detections:
    """Non-maximum suppression within each class, then the ``max_detections`` best overall."""
    keep = [idx[nms(boxes[idx], scores[idx], iou)] for idx in
            (torch.nonzero(labels == c).flatten() for c in labels.unique())]
    kept = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
    return Detections(boxes[kept], scores[kept], labels[kept]).top(max_detections)
