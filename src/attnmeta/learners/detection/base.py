"""The contract of few-shot detectors: meta-train on detection episodes, detect from a support set.

A detector is an ``nn.Module`` (its parameters are the meta-parameters; a training-free baseline has none).
The trainer needs ``meta_loss(batch)``; evaluation, the CLI and the predictor need ``detect``.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnmeta.learners.base import MetaOutput
from attnmeta.tasks.detection import DetectionBatch, Detections, DetectionTask


class DetectionLearner(nn.Module):
    """Base class of few-shot detectors.

    Subclasses set ``name`` and implement ``detect`` (and ``meta_loss`` when they have parameters to learn).
    """

    name: str = "detector"
    #: False for baselines without anything to meta-train (the trainer then only tests them).
    trainable: bool = True

    def meta_loss(self, batch: DetectionBatch) -> MetaOutput:
        """Differentiable outer loss of a meta-batch of episodes (``MetaOutput.metrics`` for logging)."""
        raise NotImplementedError(f"{self.name} has nothing to meta-train")

    def detect(self, support_x: Tensor, support_y: Tensor, ways: int, images: Tensor,
               max_detections: int = 100) -> list[Detections]:
        """Boxes of the ``ways`` support classes in each image.

        Args:
            support_x: ``[N*K, C, s, s]`` support crops in [0, 1].
            support_y: ``[N*K]`` labels in ``0..ways-1``.
            images: ``[Q, C, H, W]`` images in [0, 1].
            max_detections: boxes kept per image (best scores).
        Returns: one ``Detections`` per image, best score first. Never changes the parameters.
        """
        raise NotImplementedError

    def detect_task(self, task: DetectionTask, max_detections: int = 100) -> list[Detections]:
        """``detect`` on an episode's support set and query images."""
        return self.detect(task.support_x, task.support_y, task.ways, task.query_x, max_detections)
