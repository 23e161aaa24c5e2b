"""Episodic tasks: episodes, samplers over labelled data, regression task families."""

from attnmeta.tasks.episode import Task, TaskBatch
from attnmeta.tasks.regression import MULTIMODAL_KINDS, Multimodal, Sinusoid, TaskFamily

__all__ = ["Task", "TaskBatch", "TaskFamily", "Sinusoid", "Multimodal", "MULTIMODAL_KINDS"]
