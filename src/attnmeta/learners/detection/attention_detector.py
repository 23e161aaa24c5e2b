"""An attention-based few-shot detector in the spirit of Attention-RPN (Fan et al., CVPR 2020).

A shared convolutional trunk embeds the query images (``[Q, D, H, W]``, stride 4) and the support crops
(``[N*K, D, h, w]``). For each support class, the query feature map is matched against the class two ways:
depth-wise correlation with the class prototype (the support features averaged over shots and positions,
Attention-RPN's attention feature) and multi-head cross-attention from every query position to the class's
support positions (``attnmeta.nn.attention``'s scaled dot-product attention). A small head turns the matched
features into a centre heat-map per class; a class-agnostic head predicts each centre's offset and box size
(CenterNet, ``attnmeta.learners.detection.centernet``). Meta-trained episodically with the focal and L1
losses; nothing is adapted at test time beyond computing the prototypes and attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import MetaOutput
from attnmeta.learners.detection.base import DetectionLearner
from attnmeta.learners.detection.centernet import box_loss, centre_targets, decode, focal_loss
from attnmeta.nn.attention import scaled_dot_product_attention
from attnmeta.tasks.detection import DetectionBatch, Detections, DetectionTask


def conv_gn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """conv3x3 (same padding) -> GroupNorm (8 groups: per image, so a box never depends on the other
    images of the batch) -> ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
                         nn.GroupNorm(8, out_channels), nn.ReLU(inplace=True))


class DetectionTrunk(nn.Module):
    """Fully convolutional features at stride 4: two conv blocks with max-pools, then three convolutions
    dilated 1, 2 and 4 (receptive field about 66 pixels). ``[n, C, H, W] -> [n, hidden, H // 4, W // 4]``."""

    stride = 4

    def __init__(self, in_channels: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            conv_gn_relu(in_channels, hidden // 2), nn.MaxPool2d(2),
            conv_gn_relu(hidden // 2, hidden), nn.MaxPool2d(2),
            conv_gn_relu(hidden, hidden), conv_gn_relu(hidden, hidden, 2), conv_gn_relu(hidden, hidden, 4),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class AttentionDetector(DetectionLearner):
    """Few-shot detector: support-query attention, CenterNet head.

    Args:
        in_channels: image channels (1 for Omniglot scenes).
        hidden: trunk channels ``D``.
        head_hidden: channels of the heads.
        heads / key_size: heads and per-head size of the query-to-support cross-attention; ``heads=0`` drops
            the attention and keeps the depth-wise correlation only (an ablation).
        offset_weight / size_weight: weights of the L1 box losses beside the focal loss (CenterNet: 1, 0.1).
        support_scales: sides [pixels] at which each support crop is also seen, centred on a blank
            ``support_canvas``-pixel canvas: the trunk's features at the canvas centre are the class's
            prototype at that scale, compared (cosine) with every query position, so that objects are matched
            at the scale they appear in; ``()`` pools the crop's own feature map into one prototype.
    """

    name = "attention-detector"

    def __init__(self, in_channels: int = 1, hidden: int = 64, head_hidden: int = 32, heads: int = 4,
                 key_size: int = 16, offset_weight: float = 1.0, size_weight: float = 0.1,
                 support_scales: Sequence[int] = (22, 34, 50), support_canvas: int = 64,
                 pixel_correlation: bool = False) -> None:
        super().__init__()
        self.support_scales = tuple(int(s) for s in support_scales)
        self.support_canvas = support_canvas
        if any(not 4 <= s <= support_canvas for s in self.support_scales):
            raise ValueError(f"support_scales must lie in [4, support_canvas={support_canvas}], got "
                             f"{list(self.support_scales)}")
        scales = len(self.support_scales)
        self.pixel_correlation = pixel_correlation and bool(scales)
        self.similarity_scale = nn.Parameter(torch.tensor(3.0))
        self.trunk = DetectionTrunk(in_channels, hidden)
        self.stride = DetectionTrunk.stride
        self.heads, self.key_size = heads, key_size
        attended = heads * key_size
        if heads:
            self.query_proj = nn.Conv2d(hidden, attended, 1)
            self.key_proj = nn.Linear(hidden, attended)
            self.value_proj = nn.Linear(hidden, attended)
        heat_logit = nn.Conv2d(head_hidden, 1, 1)
        nn.init.constant_(heat_logit.bias, -2.19)  # type: ignore[arg-type]  # prior 0.1 (CenterNet)
        self.class_head = nn.Sequential(
            nn.Conv2d(hidden + attended + scales * (1 + self.pixel_correlation), head_hidden, 1),
            nn.ReLU(inplace=True),
            conv_gn_relu(head_hidden, head_hidden), conv_gn_relu(head_hidden, head_hidden, 2), heat_logit,
        )
        self.box_head = nn.Sequential(conv_gn_relu(hidden, head_hidden), nn.Conv2d(head_hidden, 4, 1))
        self.offset_weight, self.size_weight = offset_weight, size_weight

    def class_features(self, support_x: Tensor, support_y: Tensor, ways: int) -> SupportFeatures:
        """What the query images are matched against (classes with equal shots)."""
        check_support(support_y, ways)
        order = torch.argsort(support_y, stable=True)
        if not self.support_scales:
            features = self.trunk(support_x[order])  # [N*K, D, h, w]
            tokens = features.flatten(2).transpose(1, 2)  # [N*K, h*w, D]
            tokens = tokens.reshape(ways, -1, tokens.shape[-1])  # [N, K*h*w, D]
            return SupportFeatures(tokens.mean(1), tokens, [], [])
        views = torch.cat([centred(support_x[order], s, self.support_canvas) for s in self.support_scales])
        features = self.trunk(views)  # [S*N*K, D, c, c]
        c = features.shape[-1] // 2
        # [S, N, K, D, c, c]
        per_scale = features.reshape(len(self.support_scales), ways, -1, *features.shape[1:])
        kernels = []
        for side, maps in zip(self.support_scales, per_scale):
            r = min(round(side / (2 * self.stride)), c - 1)  # the kernel covers the pasted drawing
            kernels.append(maps[:, :, :, c - r: c + r + 1, c - r: c + r + 1].mean(1))  # [N, D, k, k]
        around = per_scale[..., c - 2: c + 2, c - 2: c + 2]  # [S, N, K, D, 4, 4]: the centre's 4x4 cells
        tokens = around.flatten(4).permute(1, 0, 2, 4, 3).reshape(ways, -1, features.shape[1])
        prototypes = per_scale[..., c - 1: c + 1, c - 1: c + 1].mean((0, 2, 4, 5))  # [N, D]
        templates = ([resized(support_x[order], s) for s in self.support_scales] if self.pixel_correlation
                     else [])
        return SupportFeatures(prototypes, tokens, kernels, templates)

    def maps(self, query_x: Tensor, support: SupportFeatures) -> tuple[Tensor, Tensor]:
        """Heat-map logits ``[Q, N, H, W]`` and box maps ``[Q, 4, H, W]`` (offsets in [0, 1], log-sizes)."""
        feats = self.trunk(query_x)  # [Q, D, H, W]
        q, d, h, w = feats.shape
        n = support.prototypes.shape[0]
        matched = [feats[:, None] * support.prototypes[None, :, :, None, None]]  # [Q, N, D, H, W]
        if support.kernels:  # [Q, N, S, H, W]: NCC of each position's neighbourhood with each kernel
            similarity = torch.stack([normalized_correlation(feats, k) for k in support.kernels], 2)
            matched.append(self.similarity_scale * similarity)
        if self.pixel_correlation:  # template matching's signal: NCC of the pixels, best in each cell
            with torch.no_grad():
                pixels = torch.stack([normalized_correlation(query_x, t).view(q, n, -1, *query_x.shape[-2:])
                                      .mean(2) for t in support.templates], 2)  # [Q, N, S, H', W']
            matched.append(F.adaptive_max_pool2d(pixels.flatten(1, 2), (h, w)).view(q, n, -1, h, w))
        if self.heads:
            matched.append(self._attend(feats, support.tokens))
        joint = torch.cat(matched, 2).flatten(0, 1)  # [Q*N, D(+A), H, W]
        heat = self.class_head(joint).view(q, n, h, w)
        box = self.box_head(feats)
        return heat, torch.cat([torch.sigmoid(box[:, :2]), box[:, 2:]], 1)

    def _attend(self, feats: Tensor, tokens: Tensor) -> Tensor:
        """Each query position attends over each class's support tokens: ``[Q, N, heads*key_size, H, W]``."""
        q, _, h, w = feats.shape
        n, t, _ = tokens.shape
        queries = self.query_proj(feats).flatten(2).transpose(1, 2)  # [Q, HW, A]
        queries = queries.view(q, 1, h * w, self.heads, self.key_size).transpose(2, 3)  # [Q, 1, H, HW, k]
        keys = self.key_proj(tokens).view(1, n, t, self.heads, self.key_size).transpose(2, 3)
        values = self.value_proj(tokens).view(1, n, t, self.heads, self.key_size).transpose(2, 3)
        out = scaled_dot_product_attention(queries, keys, values)  # [Q, N, heads, HW, k]
        assert isinstance(out, Tensor)  # (no return_weights)
        return out.permute(0, 1, 2, 4, 3).reshape(q, n, self.heads * self.key_size, h, w)

    def task_loss(self, task: DetectionTask) -> tuple[Tensor, dict[str, float]]:
        heat, box = self.maps(task.query_x, self.class_features(task.support_x, task.support_y, task.ways))
        targets = centre_targets(task.query_boxes, task.query_labels, task.ways, heat.shape[2],
                                 heat.shape[3], self.stride)
        heat_loss = focal_loss(heat, targets.heat.to(heat))
        offset_loss, size_loss = box_loss(box, targets)
        loss = heat_loss + self.offset_weight * offset_loss + self.size_weight * size_loss
        return loss, {"heat_loss": heat_loss.item(), "offset_loss": offset_loss.item(),
                      "size_loss": size_loss.item()}

    def meta_loss(self, batch: DetectionBatch) -> MetaOutput:
        losses, logs = zip(*(self.task_loss(task) for task in batch))
        task_losses = torch.stack(list(losses))
        loss = task_losses.mean()
        metrics = {key: sum(log[key] for log in logs) / len(logs) for key in logs[0]}
        return MetaOutput(loss, task_losses.detach(), {"loss": loss.item(), **metrics})

    @torch.no_grad()
    def detect(self, support_x: Tensor, support_y: Tensor, ways: int, images: Tensor,
               max_detections: int = 100) -> list[Detections]:
        heat, box = self.maps(images, self.class_features(support_x, support_y, ways))
        return decode(heat, box, self.stride, max_detections, (images.shape[-2], images.shape[-1]))


@dataclass(frozen=True)
class SupportFeatures:
    """A support set as the detector sees it.

    Attributes:
        prototypes: ``[N, D]`` class prototypes (features averaged over shots and central positions).
        tokens: ``[N, T, D]`` support positions each query position attends to.
        kernels: per support scale, ``[N, D, k, k]`` feature maps of the drawing at that scale (averaged over
            shots), correlated with the query feature map; empty without ``support_scales``.
        templates: per support scale, ``[N*K, C, s, s]`` the crops themselves at that size (class-major),
            for ``pixel_correlation``; else empty.
    """

    prototypes: Tensor
    tokens: Tensor
    kernels: list[Tensor]
    templates: list[Tensor]


def normalized_correlation(images: Tensor, kernels: Tensor) -> Tensor:
    """Normalised cross-correlation (Pearson's r over channels and the window) of each ``k x k``
    neighbourhood of ``images`` ``[Q, C, H, W]`` with each of ``kernels`` ``[M, C, k, k]``, the window
    centred on the output position (``(k - 1) // 2`` rows above; zeros beyond the border): ``[Q, M, H, W]``
    in [-1, 1]; 0 where the window or the kernel is flat."""
    k, n = kernels.shape[-1], kernels[0].numel()
    flat = kernels.flatten(1)
    centred_k = flat - flat.mean(1, keepdim=True)
    unit = (centred_k / centred_k.norm(dim=1, keepdim=True).clamp_min(1e-6)).view_as(kernels)
    padded = F.pad(images, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2))
    dot = F.conv2d(padded, unit)
    ones = images.new_ones(1, images.shape[1], k, k)
    total, energy = F.conv2d(padded, ones), F.conv2d(padded.pow(2), ones)
    spread = (energy - total.pow(2) / n).clamp_min(0).sqrt()
    return dot / spread.clamp_min(1e-4)


def resized(crops: Tensor, side: int) -> Tensor:
    """Crops ``[n, C, s, s]`` resized to ``side`` (area averaging; bilinear when enlarging)."""
    return F.interpolate(crops, size=side, mode="area" if side <= crops.shape[-1] else "bilinear")


def centred(crops: Tensor, side: int, canvas: int) -> Tensor:
    """Crops ``[n, C, s, s]`` resized to ``side`` (area averaging; bilinear when enlarging) at the centre of
    a blank ``canvas x canvas`` image: ``[n, C, canvas, canvas]``."""
    small = resized(crops, side)
    out = crops.new_zeros(crops.shape[0], crops.shape[1], canvas, canvas)
    at = (canvas - side) // 2
    out[:, :, at: at + side, at: at + side] = small
    return out


def check_support(support_y: Tensor, ways: int) -> None:
    """Every class ``0..ways-1`` has the same number of support crops (at least one)."""
    counts = torch.bincount(support_y, minlength=ways)
    if len(counts) != ways or int(counts.min()) < 1 or bool((counts != counts[0]).any()):
        raise ValueError(f"the support set needs the same number (>= 1) of crops for each of the {ways} "
                         f"classes, got {counts.tolist()}")


__all__ = ["AttentionDetector", "DetectionTrunk", "check_support", "F"]
