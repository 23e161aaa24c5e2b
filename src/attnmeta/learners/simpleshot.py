"""SimpleShot (Wang, Chao, Weinberger & van der Maaten 2019): nearest centroid on transformed features.

Training is plain classification over the base (training) classes, the transfer baseline's pre-training path
(``TransferBaseline.meta_loss``: a linear classifier over ``num_classes`` classes on every image of the
meta-batch). While training, the mean feature of the base-class images is kept as a buffer ``base_mean``
(saved in checkpoints): the exact running mean of every batch for the first ``1 / mean_momentum`` batches,
then an exponential moving average with that momentum, so it follows the embedding as it trains.

At test time the classifier is dropped: support and query features go through the transform, and each query
is scored by the negative squared Euclidean distance to the class centroids (mean transformed support
feature; the nearest neighbour for one shot), as in the paper. Transforms (``transform``):

- ``"cl2n"``: centre by the base-class mean, then L2-normalise (the paper's best);
- ``"l2n"``: L2-normalise only;  ``"none"``: unnormalised features ("UN").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmeta.learners.base import MetaOutput
from attnmeta.learners.matching import check_classification_batch
from attnmeta.learners.protonet import prototypes, squared_euclidean_logits
from attnmeta.learners.registry import register
from attnmeta.learners.transfer import TransferBaseline
from attnmeta.tasks.episode import Task, TaskBatch

__all__ = ["SimpleShot", "TRANSFORMS", "transform_features"]

TRANSFORMS = ("cl2n", "l2n", "none")


def transform_features(features: Tensor, transform: str, base_mean: Tensor | None = None) -> Tensor:
    """SimpleShot's feature transform of ``features [..., D]`` (``base_mean`` ``[D]``, for ``"cl2n"``)."""
    if transform == "cl2n":
        if base_mean is None:
            raise ValueError("the cl2n transform needs base_mean, the mean feature of the base classes")
        features = features - base_mean
    if transform in ("cl2n", "l2n"):
        return F.normalize(features, dim=-1)
    if transform == "none":
        return features
    raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")


class SimpleShot(TransferBaseline):
    """Nearest centroid on CL2N / L2N / unnormalised features of a classification-trained embedding.

    Args:
        model: embedding network ``[B, *input_shape] -> [B, D]``.
        num_classes: number of base (training) classes (the pre-training classifier's size).
        transform: ``"cl2n"`` (default), ``"l2n"`` or ``"none"``.
        mean_momentum: the base mean's moving-average momentum once ``1 / mean_momentum`` batches were seen.
        feature_dim / input_shape: embedding size, or an input shape to infer it.
    """

    base_mean: Tensor  # [D] buffer: the mean feature of the base classes (checkpointed)
    base_batches: Tensor  # [] int64 buffer: training batches folded into base_mean

    name = "simpleshot"

    def __init__(self, model: nn.Module, num_classes: int, *, task_type: str = "classification",
                 transform: str = "cl2n", mean_momentum: float = 0.01, feature_dim: int | None = None,
                 input_shape: tuple[int, ...] | None = None) -> None:
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS} (cl2n: centre by the base mean, then "
                             f"L2-normalise; l2n: normalise; none: unnormalised), got {transform!r}")
        if isinstance(mean_momentum, bool) or not isinstance(mean_momentum, (int, float)) \
                or not 0 < mean_momentum <= 1:
            raise ValueError(f"mean_momentum must be a number in (0, 1], got {mean_momentum!r}")
        super().__init__(model, num_classes, head="linear", task_type=task_type, feature_dim=feature_dim,
                         input_shape=input_shape)
        self.name = "simpleshot"
        self.transform, self.mean_momentum = transform, float(mean_momentum)
        self.register_buffer("base_mean", torch.zeros(self.feature_dim))
        self.register_buffer("base_batches", torch.zeros((), dtype=torch.long))
        self._capturing = False
        self._captured: Tensor | None = None
        # the pre-training path embeds the batch with one call of the model: read its features there
        self.model.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if self._capturing:
            self._captured = output.detach().flatten(1)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """The transfer pre-training loss; in training mode it folds the batch's mean feature into
        ``base_mean``."""
        self._capturing, self._captured = self.training, None
        try:
            output = super().meta_loss(batch)
        finally:
            self._capturing = False
        if self._captured is not None:
            self.update_base_mean(self._captured)
            self._captured = None
        return output

    @torch.no_grad()
    def update_base_mean(self, features: Tensor) -> None:
        """Fold the mean of base-class features ``[B, D]`` into ``base_mean``."""
        self.base_batches += 1
        momentum = max(self.mean_momentum, 1.0 / int(self.base_batches))
        self.base_mean.lerp_(features.mean(0).to(self.base_mean.dtype), momentum)

    def centroid_logits(self, support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
        """``-||t(q) - c_k||^2`` ``[nq, ways]`` of features support ``[ns, D]`` / query ``[nq, D]``."""
        support = transform_features(support, self.transform, self.base_mean)
        query = transform_features(query, self.transform, self.base_mean)
        return squared_euclidean_logits(query, prototypes(support, support_y, ways))

    def predict(self, task: Task) -> Tensor:
        check_classification_batch(task, self.name)
        with torch.no_grad():
            features = self.model(torch.cat([task.support_x, task.query_x])).flatten(1)
        n_support = task.support_x.shape[0]
        return self.centroid_logits(features[:n_support], task.support_y, features[n_support:], task.ways)


@register("simpleshot", head=False, description="SimpleShot (Wang et al. 2019): classification pre-training, "
                                                 "nearest centroid on CL2N / L2N / raw features")
def build_simpleshot(model: nn.Module, task_type: str = "classification", ways: int | None = None,
                     **options: Any) -> SimpleShot:
    """Registry builder; ``num_classes`` (the number of base classes) is required. Options: ``num_classes``,
    ``transform``, ``mean_momentum``, ``feature_dim``, ``input_shape``."""
    if task_type != "classification":
        raise ValueError("simpleshot is for classification only; for regression use a gradient learner "
                         "such as maml")
    if "num_classes" not in options:
        raise ValueError("simpleshot needs num_classes=<number of training classes> (the pre-training "
                         "classifier's size), e.g. len(sampler.classes)")
    num_classes = options.pop("num_classes")
    return SimpleShot(model, num_classes, task_type=task_type, **options)
