"""Few-shot detectors by name, so that configs and the CLI build them like any other learner.

``attention-detector`` (``AttentionDetector``: support-query attention and a CenterNet head, meta-trained),
``protonet-windows`` (``WindowProtoNet``: sliding windows classified by a ProtoNets embedding meta-trained on
the same episodes), ``template-matching`` (``TemplateMatching``: multi-scale normalised cross-correlation,
nothing to train), ``transfer-detector`` (``TransferDetector``: base training, then a class head fine-tuned
on each episode's support crops) and ``prototype-detector`` (``PrototypeDetector``: the same base training
plus an episodic loss; support classes by attention over their prototypes).
``build_detector(algo, in_channels, options)`` takes a config's ``algo_options``.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from attnmeta.learners.detection.base import DetectionLearner


@dataclass(frozen=True)
class DetectorSpec:
    module: str
    cls: str
    description: str

    def load(self) -> type[DetectionLearner]:
        return getattr(importlib.import_module(f"attnmeta.learners.detection.{self.module}"), self.cls)


DETECTORS: dict[str, DetectorSpec] = {
    "attention-detector": DetectorSpec(
        "attention_detector", "AttentionDetector",
        "support-query cross-attention and depth-wise correlation, CenterNet head (Attention-RPN style)"),
    "protonet-windows": DetectorSpec(
        "window_protonet", "WindowProtoNet",
        "sliding windows classified by a ProtoNets embedding (baseline)"),
    "template-matching": DetectorSpec(
        "template_matching", "TemplateMatching",
        "multi-scale normalised cross-correlation with the support crops (baseline, nothing to train)"),
    "transfer-detector": DetectorSpec(
        "transfer_detector", "TransferDetector",
        "base-trained CenterNet, a new class head fine-tuned on the support crops (TFA-style baseline)"),
    "prototype-detector": DetectorSpec(
        "prototype_detector", "PrototypeDetector",
        "base-trained CenterNet, support classes by attention over their prototypes, meta-trained"),
}
#: Constructor arguments that come from the data, not from ``algo_options``.
DATA_OPTIONS = ("in_channels",)


def valid_detector_options(algo: str) -> list[str]:
    """The ``algo_options`` keys ``algo`` takes."""
    parameters = inspect.signature(_spec(algo).load().__init__).parameters
    return sorted(p for p in parameters if p not in ("self", *DATA_OPTIONS))


def check_detector_options(algo: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming an option ``algo`` does not take (with the valid ones)."""
    valid = valid_detector_options(algo)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"config key 'algo_options': {algo} takes no option {unknown[0]!r}; valid: {', '.join(valid)}"
        )


def build_detector(algo: str, in_channels: int, options: dict[str, Any]) -> DetectionLearner:
    """``algo`` for images of ``in_channels`` channels; weights initialised from the global torch RNG."""
    check_detector_options(algo, options)
    cls = _spec(algo).load()
    takes = inspect.signature(cls.__init__).parameters
    data = {"in_channels": in_channels} if "in_channels" in takes else {}
    return cls(**data, **options)


def _spec(algo: str) -> DetectorSpec:
    if algo not in DETECTORS:
        raise ValueError(f"unknown detector {algo!r}; choose one of: {', '.join(DETECTORS)}")
    return DETECTORS[algo]
