"""An attention-based few-shot detector in the spirit of Attention-RPN (Fan et al., CVPR 2020).

A shared convolutional trunk embeds the query images (``[Q, D, H, W]``, stride 4) and the support crops. Each
support crop is also seen at a few sizes (``support_scales``) on a blank canvas; its feature map at each size
is a kernel, correlated with the query feature map (normalised cross-correlation: template matching in
learned features, at the scale the object appears in). Beside it, every query position attends (multi-head
cross-attention, ``attnmeta.nn.attention``) to the class's support positions, and the query features are
multiplied channel-wise by the class prototype (Attention-RPN's depth-wise correlation). A small head turns
the matched features of each class into its centre heat-map and its boxes' centre offsets and sizes
(CenterNet, ``attnmeta.learners.detection.centernet``). Meta-trained episodically with the focal and L1
losses and a matching loss; optionally (``template_prior``) the heat logits start from template matching's
pixel correlation through a learned skip connection. Nothing is adapted at test time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.detection.base import DetectionLearner
from attnmeta.learners.detection.centernet import (
    CentreTargets,
    box_loss,
    centre_targets,
    decode,
    focal_loss,
)
from attnmeta.nn.attention import scaled_dot_product_attention
from attnmeta.tasks.detection import Detections, DetectionTask


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
        if hidden < 16 or hidden % 16:
            raise ValueError(f"hidden must be a multiple of 16 (group norms of 8 groups over hidden // 2 "
                             f"channels), got {hidden}")
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
        offset_weight / size_weight: weights of the L1 box losses beside the focal loss (CenterNet: 1 and 0.1
            on sizes in pixels; here sizes are log-sizes, weighted 1).
        support_scales: sides [pixels] at which each support crop is also seen, centred on a blank
            ``support_canvas``-pixel canvas: the trunk's features at the canvas centre are the class's
            kernel at that scale, correlated with the query feature map, so that objects are matched at the
            scale they appear in; ``()`` pools the crop's own feature map into one prototype.
        match_weight / hard_negatives: weight of the matching loss beside the CenterNet losses (each object's
            class from the correlations at its centre, and "none" at the ``hard_negatives`` best-correlated
            cells of each image away from the objects; cross-entropy); 0 leaves it out.
        distractor_negatives: also "none" at the centre cell of every box of ``task.info["other_boxes"]``
            (objects of no episode class: Omniglot scenes' distractors), the negatives most like the targets.
        template_prior: initial weight (learned) of a skip connection adding the support crops' normalised
            cross-correlation with the image's pixels (best support scale, best in each cell: template
            matching's score) to the heat-map logits, so that meta-training starts from template matching
            and learns what to add; 0 (default) leaves it out.
    """

    name = "attention-detector"

    def __init__(self, in_channels: int = 1, hidden: int = 64, head_hidden: int = 32, heads: int = 4,
                 key_size: int = 16, offset_weight: float = 1.0, size_weight: float = 1.0,
                 support_scales: Sequence[int] = (22, 34, 50), support_canvas: int = 64,
                 match_weight: float = 1.0, hard_negatives: int = 16, template_prior: float = 0.0,
                 distractor_negatives: bool = False) -> None:
        super().__init__()
        self.distractor_negatives = distractor_negatives
        self.template_prior = nn.Parameter(torch.tensor(float(template_prior))) if template_prior else None
        self.match_weight, self.hard_negatives = match_weight, hard_negatives
        self.none_logit = nn.Parameter(torch.tensor(0.0))
        self.support_scales = tuple(int(s) for s in support_scales)
        self.support_canvas = support_canvas
        if any(not 4 <= s <= support_canvas for s in self.support_scales):
            raise ValueError(f"support_scales must lie in [4, support_canvas={support_canvas}], got "
                             f"{list(self.support_scales)}")
        scales = len(self.support_scales)
        self.similarity_scale = nn.Parameter(torch.tensor(3.0))
        self.trunk = DetectionTrunk(in_channels, hidden)
        self.stride = DetectionTrunk.stride
        self.heads, self.key_size = heads, key_size
        attended = heads * key_size
        if heads:
            self.query_proj = nn.Conv2d(hidden, attended, 1)
            self.key_proj = nn.Linear(hidden, attended)
            self.value_proj = nn.Linear(hidden, attended)
        self.class_head = nn.Sequential(
            nn.Conv2d(hidden + attended + scales, head_hidden, 1),
            nn.ReLU(inplace=True),
            conv_gn_relu(head_hidden, head_hidden), conv_gn_relu(head_hidden, head_hidden, 2),
        )
        # from the matched features of each class: its centre heat-map, and its boxes' offsets and log-sizes
        # (the support tells the object's shape, so box sizes are predicted per class)
        self.heat_logit = nn.Conv2d(head_hidden, 1, 1)
        nn.init.constant_(self.heat_logit.bias, -2.19)  # type: ignore[arg-type]  # prior 0.1 (CenterNet)
        self.box_head = nn.Conv2d(head_hidden, 4, 1)
        with torch.no_grad():  # start at centred boxes of 5 x 5 cells
            self.box_head.bias.copy_(torch.tensor([0.0, 0.0, 1.6, 1.6]))  # type: ignore[union-attr]
        self.offset_weight, self.size_weight = offset_weight, size_weight

    def class_features(self, support_x: Tensor, support_y: Tensor, ways: int) -> SupportFeatures:
        """What the query images are matched against (classes with equal shots)."""
        check_support(support_y, ways)
        order = torch.argsort(support_y, stable=True)
        if not self.support_scales:
            features = self.trunk(support_x[order])  # [N*K, D, h, w]
            tokens = features.flatten(2).transpose(1, 2)  # [N*K, h*w, D]
            tokens = tokens.reshape(ways, -1, tokens.shape[-1])  # [N, K*h*w, D]
            return SupportFeatures(tokens.mean(1), tokens, [], support_x[order])
        views = torch.cat([centred(support_x[order], s, self.support_canvas) for s in self.support_scales])
        features = self.trunk(views)  # [S*N*K, D, c, c]
        c = features.shape[-1] // 2
        # [S, N, K, D, c, c]
        per_scale = features.reshape(len(self.support_scales), ways, -1, *features.shape[1:])
        kernels = []
        for side, maps in zip(self.support_scales, per_scale):
            r = min(round(side / (2 * self.stride)), c - 1)  # the kernel covers the pasted drawing
            kernels.append(maps[:, :, :, c - r: c + r + 1, c - r: c + r + 1])  # [N, K, D, k, k]
        around = per_scale[..., c - 2: c + 2, c - 2: c + 2]  # [S, N, K, D, 4, 4]: the centre's 4x4 cells
        tokens = around.flatten(4).permute(1, 0, 2, 4, 3).reshape(ways, -1, features.shape[1])
        prototypes = per_scale[..., c - 1: c + 1, c - 1: c + 1].mean((0, 2, 4, 5))  # [N, D]
        return SupportFeatures(prototypes, tokens, kernels, support_x[order])

    def maps(self, query_x: Tensor, support: SupportFeatures) -> tuple[Tensor, Tensor]:
        """Heat-map logits ``[Q, N, H, W]`` and box maps ``[Q, N, 4, H, W]`` (offsets in [0, 1], log-sizes in
        cells, per class)."""
        heat, box, _ = self._maps(query_x, support)
        return heat, box

    def _maps(self, query_x: Tensor, support: SupportFeatures) -> tuple[Tensor, Tensor, Tensor | None]:
        """``maps`` and the correlation maps ``[Q, N, S, H, W]`` (``None`` without support scales)."""
        feats = self.trunk(query_x)  # [Q, D, H, W]
        q, d, h, w = feats.shape
        n = support.prototypes.shape[0]
        matched = [feats[:, None] * support.prototypes[None, :, :, None, None]]  # [Q, N, D, H, W]
        similarity = None
        if support.kernels:  # [Q, N, S, H, W]: NCC of each position's neighbourhood with each kernel
            similarity = torch.stack([best_of_shots(feats, k) for k in support.kernels], 2)
            matched.append(self.similarity_scale * similarity)
        if self.heads:
            matched.append(self._attend(feats, support.tokens))
        joint = self.class_head(torch.cat(matched, 2).flatten(0, 1))  # [Q*N, head_hidden, H, W]
        heat = self.heat_logit(joint).view(q, n, h, w)
        if self.template_prior is not None:
            heat = heat + self.template_prior * (self._pixel_correlation(query_x, support, (h, w)) - 0.5)
        box = self.box_head(joint)
        return heat, torch.cat([torch.sigmoid(box[:, :2]), box[:, 2:]], 1).view(q, n, 4, h, w), similarity

    @torch.no_grad()
    def _pixel_correlation(self, query_x: Tensor, support: SupportFeatures, size: tuple[int, int]) -> Tensor:
        """``[Q, N, h, w]``: the best over support scales (the crops' own size without ``support_scales``)
        and shots of the pixel NCC, max-pooled to cells."""
        q, n = query_x.shape[0], support.prototypes.shape[0]
        best = None
        for side in self.support_scales or (support.crops.shape[-1],):
            ncc = normalized_correlation(query_x, resized(support.crops, side))  # [Q, N*K, H, W]
            ncc = ncc.view(q, n, -1, *ncc.shape[-2:]).amax(2)
            best = ncc if best is None else torch.maximum(best, ncc)
        assert best is not None
        return F.adaptive_max_pool2d(best, size)

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
        support = self.class_features(task.support_x, task.support_y, task.ways)
        heat, box, similarity = self._maps(task.query_x, support)
        targets = centre_targets(task.query_boxes, task.query_labels, task.ways, heat.shape[2],
                                 heat.shape[3], self.stride)
        heat_loss = focal_loss(heat, targets.heat.to(heat))
        offset_loss, size_loss = box_loss(box, targets)
        loss = heat_loss + self.offset_weight * offset_loss + self.size_weight * size_loss
        logs = {"heat_loss": heat_loss.item(), "offset_loss": offset_loss.item(),
                "size_loss": size_loss.item()}
        if self.match_weight and similarity is not None and targets.index.numel():
            others = task.info.get("other_boxes") if self.distractor_negatives else None
            distractors = None if others is None else centre_targets(
                others, [torch.zeros(len(b), dtype=torch.long) for b in others], 1, heat.shape[2],
                heat.shape[3], self.stride).index
            match_loss, match_accuracy = self._match_loss(similarity, targets, distractors)
            loss = loss + self.match_weight * match_loss
            logs.update(match_loss=match_loss.item(), match_accuracy=match_accuracy)
        return loss, logs

    def _match_loss(self, similarity: Tensor, targets: CentreTargets,
                    distractors: Tensor | None = None) -> tuple[Tensor, float]:
        """Cross-entropy over the episode's classes and "none" (a learned logit) of the correlations (best
        scale) at each object's centre cell, and at the ``hard_negatives`` best-correlated cells of each
        image away from every object (distractors, clutter), and at the ``distractors`` cells ``[D, 3]``
        (image, row, column): a direct metric-learning signal for the features, which the heat-map's focal
        loss gives only weakly."""
        q, r, c = targets.index.to(similarity.device).unbind(1)
        best = similarity.amax(2)  # [Q, N, H, W]
        positives = best[q, :, r, c]  # [M, N]
        labels = targets.label.to(similarity.device) if targets.label is not None else None
        assert labels is not None
        away = targets.heat.to(similarity.device).amax(1) < 0.05  # [Q, H, W]
        scores = best.amax(1).masked_fill(~away, -2.0).flatten(1)  # [Q, H*W]
        k = min(self.hard_negatives, scores.shape[1])
        cells = scores.topk(k, dim=1).indices  # [Q, k]
        negatives = best.flatten(2).gather(2, cells[:, None, :].expand(-1, best.shape[1], -1))  # [Q, N, k]
        negatives = negatives.transpose(1, 2).reshape(-1, best.shape[1])
        keep = away.flatten(1).gather(1, cells).flatten()  # cells that really lie away from the objects
        negatives = negatives[keep]
        if distractors is not None and distractors.numel():
            dq, dr, dc = distractors.to(similarity.device).unbind(1)
            negatives = torch.cat([negatives, best[dq, :, dr, dc]])
        logits = self.similarity_scale * torch.cat([positives, negatives])
        logits = torch.cat([logits, self.none_logit.expand(len(logits), 1)], 1)
        all_labels = torch.cat([labels, labels.new_full((len(negatives),), best.shape[1])])
        loss = F.cross_entropy(logits, all_labels)
        return loss, (logits[: len(labels)].argmax(1) == labels).float().mean().item()

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
        kernels: per support scale, ``[N, K, D, k, k]`` feature maps of each shot's drawing at that scale,
            correlated with the query feature map (the best shot counts); empty without ``support_scales``.
        crops: ``[N*K, C, s, s]`` the support crops, class-major.
    """

    prototypes: Tensor
    tokens: Tensor
    kernels: list[Tensor]
    crops: Tensor


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


def best_of_shots(feats: Tensor, kernels: Tensor) -> Tensor:
    """``normalized_correlation`` of ``feats`` ``[Q, D, H, W]`` with every shot's kernel ``[N, K, D, k, k]``,
    the best shot per class: ``[Q, N, H, W]`` (like template matching, which keeps every shot's matches)."""
    n, k = kernels.shape[:2]
    ncc = normalized_correlation(feats, kernels.flatten(0, 1))
    return ncc.view(ncc.shape[0], n, k, *ncc.shape[-2:]).amax(2)


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
