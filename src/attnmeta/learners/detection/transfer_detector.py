"""Transfer baseline: pre-train a detector on the training classes, fine-tune a new class head on the support.

In the manner of TFA (Wang et al., "Frustratingly Simple Few-Shot Object Detection", ICML 2020): the base
training (``meta_loss``, run by the trainer on the training scenes) learns a class-agnostic CenterNet detector
(trunk at stride 4, an objectness heat-map, box offsets and log-sizes; every annotated object is an object,
and so is every box in ``task.info["other_boxes"]``, e.g. Omniglot scenes' distractors) and a cosine
classifier over the training classes at the objects' centres, so that the trunk's features tell classes apart.
At test time the detector is frozen and, per episode, only a new last layer is fine-tuned: a 1x1 convolution
from the frozen features to one heat-map per support class, added to the objectness logit, trained with the
focal loss on synthetic scenes made from the support crops alone (each crop pasted at random sizes and
positions on blank canvases of the query images' size). Boxes come from the frozen box maps. Nothing is
meta-learned about the fine-tuning: this is the baseline that meta-learned detectors should beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.detection.attention_detector import DetectionTrunk, check_support, resized
from attnmeta.learners.detection.base import DetectionLearner
from attnmeta.learners.detection.centernet import box_loss, centre_targets, decode, focal_loss
from attnmeta.learners.detection.window_protonet import ink_boxes
from attnmeta.tasks.detection import Detections, DetectionTask


class TransferDetector(DetectionLearner):
    """Base-trained CenterNet detector; per-episode fine-tuning of a new class head on the support crops.

    Args:
        in_channels: image channels.
        hidden: trunk channels ``D``.
        base_classes: size of the base classifier (above the largest class id of the training data).
        class_weight: weight of the base classification loss beside the detection losses.
        finetune_steps / finetune_lr: Adam steps and learning rate of the class head at test time.
        finetune_scenes: synthetic scenes per episode made from the support crops.
        objects: ``(min, max)`` crops pasted per synthetic scene.
        sizes: ``(min, max)`` side [pixels] of a pasted crop.
        tight_boxes: the box of a pasted crop is the box of its bright pixels (drawings on black, pasted
            with a maximum: Omniglot) rather than the whole crop (photographs, pasted over the canvas).
        seed: seeds the synthetic scenes, so that ``detect`` is deterministic.
    """

    name = "transfer-detector"

    def __init__(self, in_channels: int = 1, hidden: int = 64, base_classes: int = 1024,
                 class_weight: float = 1.0, finetune_steps: int = 100, finetune_lr: float = 0.05,
                 finetune_scenes: int = 16, objects: tuple[int, int] = (1, 3),
                 sizes: tuple[int, int] = (20, 56), tight_boxes: bool = True, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= objects[0] <= objects[1] or not 4 <= sizes[0] <= sizes[1]:
            raise ValueError(f"need 1 <= objects[0] <= objects[1] and 4 <= sizes[0] <= sizes[1], got "
                             f"objects={list(objects)}, sizes={list(sizes)}")
        self.trunk = DetectionTrunk(in_channels, hidden)
        self.stride = DetectionTrunk.stride
        self.objectness = nn.Conv2d(hidden, 1, 1)
        nn.init.constant_(self.objectness.bias, -2.19)  # type: ignore[arg-type]  # prior 0.1 (CenterNet)
        self.box_head = nn.Conv2d(hidden, 4, 1)
        with torch.no_grad():  # start at centred boxes of 5 x 5 cells
            self.box_head.bias.copy_(torch.tensor([0.0, 0.0, 1.6, 1.6]))  # type: ignore[union-attr]
        self.embedding = nn.Conv2d(hidden, hidden, 1)
        self.base_weight = nn.Parameter(torch.randn(base_classes, hidden) * hidden**-0.5)
        self.base_classes, self.class_weight = base_classes, class_weight
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr
        self.finetune_scenes = finetune_scenes
        self.objects, self.sizes = (int(objects[0]), int(objects[1])), (int(sizes[0]), int(sizes[1]))
        self.tight_boxes, self.seed = tight_boxes, seed

    def maps(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Features ``[Q, D, H, W]``, objectness logits ``[Q, 1, H, W]`` and box maps ``[Q, 4, H, W]``."""
        feats = self.trunk(images)
        box = self.box_head(feats)
        return feats, self.objectness(feats), torch.cat([torch.sigmoid(box[:, :2]), box[:, 2:]], 1)

    # -- base training ---------------------------------------------------------------------------------------
    def task_loss(self, task: DetectionTask) -> tuple[Tensor, dict[str, float]]:
        return self.base_loss(task, *self.maps(task.query_x))

    def base_loss(self, task: DetectionTask, feats: Tensor, objectness: Tensor, box: Tensor
                  ) -> tuple[Tensor, dict[str, float]]:
        """Detection losses (objectness of every object, boxes) and the base classifier's loss, from the
        query images' ``maps``."""
        others = task.info.get("other_boxes") or [torch.zeros(0, 4)] * len(task.query_boxes)
        boxes = [torch.cat([b.cpu(), o.cpu()]) for b, o in zip(task.query_boxes, others)]
        agnostic = [torch.zeros(len(b), dtype=torch.long) for b in boxes]
        targets = centre_targets(boxes, agnostic, 1, feats.shape[2], feats.shape[3], self.stride)
        heat_loss = focal_loss(objectness, targets.heat.to(objectness))
        offset_loss, size_loss = box_loss(box, targets)
        loss = heat_loss + offset_loss + size_loss
        logs = {"heat_loss": heat_loss.item(), "box_loss": (offset_loss + size_loss).item()}
        labelled = centre_targets(task.query_boxes, task.query_labels, task.ways, feats.shape[2],
                                  feats.shape[3], self.stride)
        if self.class_weight and labelled.index.numel():
            assert labelled.label is not None
            classes = task.classes.to(feats.device)[labelled.label.to(feats.device)]
            if int(classes.max()) >= self.base_classes:
                raise ValueError(f"class id {int(classes.max())} >= base_classes={self.base_classes}; set "
                                 f"algo_options.base_classes above the data set's largest class id")
            q, r, c = labelled.index.to(feats.device).unbind(1)
            embedded = F.normalize(self.embedding(feats)[q, :, r, c], dim=1)
            logits = 10.0 * embedded @ F.normalize(self.base_weight, dim=1).T
            class_loss = F.cross_entropy(logits, classes)
            loss = loss + self.class_weight * class_loss
            logs.update(class_loss=class_loss.item(),
                        class_accuracy=(logits.argmax(1) == classes).float().mean().item())
        return loss, logs

    # -- fine-tuning on the support set ----------------------------------------------------------------------
    def support_scenes(self, support_x: Tensor, support_y: Tensor, ways: int, height: int, width: int,
                       scenes: int | None = None, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """``scenes`` (default ``finetune_scenes``) blank ``height x width`` canvases with pasted support
        crops: images ``[S, C, H, W]``, boxes and labels per scene. Every crop is used in turn (classes
        balanced). The draws come from ``generator``, by default one seeded with ``seed``."""
        g = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        scenes = self.finetune_scenes if scenes is None else scenes
        relative = ink_boxes(support_x) if self.tight_boxes else None
        images = support_x.new_zeros(scenes, support_x.shape[1], height, width)
        all_boxes, all_labels, turn = [], [], 0
        order = torch.randperm(len(support_x), generator=g)
        for scene in range(scenes):
            boxes: list[list[float]] = []
            squares: list[list[float]] = []
            labels: list[int] = []
            count = int(torch.randint(self.objects[0], self.objects[1] + 1, (), generator=g))
            for _ in range(count):
                crop = int(order[turn % len(order)])
                largest = min(self.sizes[1], height, width)  # small images: smaller crops
                side = int(torch.randint(min(self.sizes[0], largest), largest + 1, (), generator=g))
                for _ in range(20):  # a free place (overlap <= 0.1 with the crops already pasted)
                    x = int(torch.randint(0, width - side + 1, (), generator=g))
                    y = int(torch.randint(0, height - side + 1, (), generator=g))
                    if all(_overlap((x, y, x + side, y + side), b) <= 0.1 for b in squares):
                        break
                else:
                    continue
                turn += 1
                squares.append([float(x), float(y), float(x + side), float(y + side)])
                patch = resized(support_x[crop][None], side)[0]
                region = images[scene, :, y: y + side, x: x + side]
                if relative is not None:
                    torch.maximum(region, patch, out=region)
                    x0, y0, x1, y1 = (relative[crop] * side).tolist()
                    boxes.append([x + x0, y + y0, x + x1, y + y1])
                else:
                    region.copy_(patch)
                    boxes.append([float(x), float(y), float(x + side), float(y + side)])
                labels.append(int(support_y[crop]))
            all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            all_labels.append(torch.tensor(labels, dtype=torch.long))
        return images, all_boxes, all_labels

    def finetune_head(self, support_x: Tensor, support_y: Tensor, ways: int, height: int,
                      width: int) -> nn.Conv2d:
        """The class head (1x1 convolution ``D -> ways``, zero-initialised) fitted to the support scenes."""
        check_support(support_y, ways)
        images, boxes, labels = self.support_scenes(support_x, support_y, ways, height, width)
        with torch.no_grad():
            feats, objectness, _ = self.maps(images)
        targets = centre_targets(boxes, labels, ways, feats.shape[2], feats.shape[3], self.stride)
        heat = targets.heat.to(feats)
        head = nn.Conv2d(feats.shape[1], ways, 1).to(feats)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)  # type: ignore[arg-type]
        optimizer = torch.optim.Adam(head.parameters(), lr=self.finetune_lr)
        with torch.enable_grad():
            for _ in range(self.finetune_steps):
                optimizer.zero_grad()
                focal_loss(head(feats) + objectness, heat).backward()
                optimizer.step()
        return head.requires_grad_(False)

    @torch.no_grad()
    def detect(self, support_x: Tensor, support_y: Tensor, ways: int, images: Tensor,
               max_detections: int = 100) -> list[Detections]:
        head = self.finetune_head(support_x, support_y, ways, images.shape[-2], images.shape[-1])
        feats, objectness, box = self.maps(images)
        return decode(head(feats) + objectness, box, self.stride, max_detections,
                      (images.shape[-2], images.shape[-1]))


def _overlap(a: tuple[int, int, int, int], b: list[float]) -> float:
    """Intersection over union of two boxes ``(x0, y0, x1, y1)``."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
