"""The contract of few-shot detectors: meta-train on detection episodes, detect from a support set.

A detector is an ``nn.Module`` (its parameters are the meta-parameters; a training-free baseline has none).
The trainer needs ``meta_loss(batch)`` (by default the mean of ``task_loss(task) -> (loss, logs)`` over the
episodes); evaluation, the CLI and the predictor need ``detect``.
"""

from __future__ import annotations

import torch
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
        """Differentiable outer loss of a meta-batch of episodes (``MetaOutput.metrics`` for logging);
        by default the mean of ``task_loss`` over the episodes."""
        task_loss = getattr(self, "task_loss", None)
        if task_loss is None:
            raise NotImplementedError(f"{self.name} has nothing to meta-train")
        losses, logs = zip(*(task_loss(task) for task in batch))
        task_losses = torch.stack(list(losses))
        loss = task_losses.mean()
        keys = dict.fromkeys(key for log in logs for key in log)  # each mean over the episodes having it
        metrics = {key: sum(log[key] for log in logs if key in log) / sum(key in log for log in logs)
                   for key in keys}
        return MetaOutput(loss, task_losses.detach(), {"loss": loss.item(), **metrics})

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
