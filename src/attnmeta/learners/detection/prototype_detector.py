"""Few-shot detection by attention over support prototypes on a base-trained CenterNet detector.

The transfer detector's trunk, objectness and box heads and base classifier (``TransferDetector``, trained on
every object of the training scenes) find the objects; which support class an object belongs to comes from
attention instead of a fitted head: every query position's embedding (a query vector) attends over the
support set's class prototypes (keys: the embeddings at the centres of the support crops pasted on blank
canvases, averaged per class) and one learned "none of them" key, with scaled cosine similarity, as in
ProtoNets and the cosine prototypes of Meta-Baseline (Chen et al., ICCV 2021). The attention weight of class
``c`` is ``P(c | object)``; the class heat-map is ``P(object) * P(c | object)``. Meta-training adds an
episodic loss to the base training: at the centre of every object of an episode's query scenes, the
cross-entropy of that attention against the object's support class, or "none" for a distractor (boxes in
``task.info["other_boxes"]``); the scale and the "none" key are learned. Nothing is fitted at test time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.detection.attention_detector import check_support
from attnmeta.learners.detection.centernet import centre_targets, decode
from attnmeta.learners.detection.transfer_detector import TransferDetector
from attnmeta.tasks.detection import Detections, DetectionTask


class PrototypeDetector(TransferDetector):
    """Base-trained CenterNet detector; support classes by attention over their prototypes.

    Args:
        in_channels / hidden / base_classes / class_weight: as ``TransferDetector``.
        episode_weight: weight of the episodic attention loss beside the base training's losses (0: base
            training only, the prototypes used as they come).
        train_scenes / scenes: synthetic scenes made from the support crops per training episode / at test
            time (raised so that every crop is pasted at least once).
        scale / null: initial attention scale (cosine similarities times ``scale``) and initial cosine of
            the "none" key; both are learned.
        objects / sizes / tight_boxes / seed: the synthetic support scenes, as ``TransferDetector``.
    """

    name = "prototype-detector"

    def __init__(self, in_channels: int = 1, hidden: int = 64, base_classes: int = 1024,
                 class_weight: float = 1.0, episode_weight: float = 1.0, train_scenes: int = 4,
                 scenes: int = 16, scale: float = 10.0, null: float = 0.6,
                 objects: tuple[int, int] = (1, 3), sizes: tuple[int, int] = (20, 56),
                 tight_boxes: bool = True, seed: int = 0) -> None:
        super().__init__(in_channels, hidden, base_classes, class_weight, finetune_steps=0,
                         finetune_scenes=scenes, objects=objects, sizes=sizes, tight_boxes=tight_boxes,
                         seed=seed)
        if train_scenes < 1 or scenes < 1 or scale <= 0:
            raise ValueError(f"need train_scenes >= 1, scenes >= 1 and scale > 0, got train_scenes="
                             f"{train_scenes}, scenes={scenes}, scale={scale}")
        self.episode_weight, self.train_scenes, self.scenes = episode_weight, train_scenes, scenes
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.null = nn.Parameter(torch.tensor(float(null)))

    def prototypes(self, support_x: Tensor, support_y: Tensor, ways: int, height: int, width: int,
                   scenes: int, generator: torch.Generator | None = None) -> Tensor:
        """Unit class prototypes ``[ways, D]``: the mean embedding at the centres of the support crops,
        each pasted on ``height x width`` blank canvases (at least once)."""
        check_support(support_y, ways)
        scenes = max(scenes, math.ceil(len(support_x) / self.objects[0]))
        images, boxes, labels = self.support_scenes(support_x, support_y, ways, height, width, scenes,
                                                    generator)
        feats = self.trunk(images)
        targets = centre_targets(boxes, labels, ways, feats.shape[2], feats.shape[3], self.stride)
        assert targets.label is not None
        q, r, c = targets.index.to(feats.device).unbind(1)
        embedded = F.normalize(self.embedding(feats)[q, :, r, c], dim=1)
        sums = embedded.new_zeros(ways, embedded.shape[1]).index_add(0, targets.label.to(feats.device),
                                                                     embedded)
        return F.normalize(sums, dim=1)

    def attention_logits(self, embedded: Tensor, prototypes: Tensor) -> Tensor:
        """Logits ``[..., ways + 1]`` of unit embeddings ``[..., D]`` over the prototypes ``[ways, D]`` and
        the "none" key (last)."""
        cosine = embedded @ prototypes.T
        return self.log_scale.exp() * torch.cat([cosine, self.null.expand_as(cosine[..., :1])], -1)

    def task_loss(self, task: DetectionTask) -> tuple[Tensor, dict[str, float]]:
        feats, objectness, box = self.maps(task.query_x)
        loss, logs = self.base_loss(task, feats, objectness, box)
        if not self.episode_weight:
            return loss, logs
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))  # the trainer's RNG
        prototypes = self.prototypes(task.support_x, task.support_y, task.ways, task.query_x.shape[-2],
                                     task.query_x.shape[-1], self.train_scenes, generator)
        others = task.info.get("other_boxes") or [torch.zeros(0, 4)] * len(task.query_boxes)
        boxes = [torch.cat([b.cpu(), o.cpu()]) for b, o in zip(task.query_boxes, others)]
        labels = [torch.cat([y.cpu(), torch.full((len(o),), task.ways)]) for y, o in
                  zip(task.query_labels, others)]  # a distractor's class is "none" (index ways)
        targets = centre_targets(boxes, labels, task.ways + 1, feats.shape[2], feats.shape[3], self.stride)
        if not targets.index.numel():
            return loss, logs
        assert targets.label is not None
        q, r, c = targets.index.to(feats.device).unbind(1)
        logits = self.attention_logits(F.normalize(self.embedding(feats)[q, :, r, c], dim=1), prototypes)
        classes = targets.label.to(feats.device)
        episode_loss = F.cross_entropy(logits, classes)
        accuracy = (logits.argmax(1) == classes).float().mean().item()
        logs.update(episode_loss=episode_loss.item(), scale=self.log_scale.exp().item(),
                    null=self.null.item(), episode_accuracy=accuracy)
        return loss + self.episode_weight * episode_loss, logs

    @torch.no_grad()
    def detect(self, support_x: Tensor, support_y: Tensor, ways: int, images: Tensor,
               max_detections: int = 100) -> list[Detections]:
        prototypes = self.prototypes(support_x, support_y, ways, images.shape[-2], images.shape[-1],
                                     self.scenes)
        feats, objectness, box = self.maps(images)
        embedded = F.normalize(self.embedding(feats), dim=1).permute(0, 2, 3, 1)  # [Q, H, W, D]
        log_class = self.attention_logits(embedded, prototypes).log_softmax(-1)[..., :ways]
        log_p = log_class.permute(0, 3, 1, 2) + F.logsigmoid(objectness)  # log P(object) P(c | object)
        logits = log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))
        return decode(logits, box, self.stride, max_detections, (images.shape[-2], images.shape[-1]))
