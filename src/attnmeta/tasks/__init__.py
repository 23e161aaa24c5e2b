"""Episodic tasks: episodes, samplers over labelled data, regression task families, the DataLoader path."""

from attnmeta.tasks.augment import ClassAugmentation, RandomAffine, RandomShift, Rotations, augmented_class_id
from attnmeta.tasks.episode import Task, TaskBatch
from attnmeta.tasks.loader import TaskStream, collate_tasks, derive_seed, task_loader
from attnmeta.tasks.regression import MULTIMODAL_KINDS, Multimodal, Sinusoid, TaskFamily
from attnmeta.tasks.sampler import EpisodeSampler, check_disjoint_splits, fixed_episodes

__all__ = [
    "Task",
    "TaskBatch",
    "TaskFamily",
    "Sinusoid",
    "Multimodal",
    "MULTIMODAL_KINDS",
    "EpisodeSampler",
    "fixed_episodes",
    "check_disjoint_splits",
    "ClassAugmentation",
    "Rotations",
    "RandomAffine",
    "RandomShift",
    "augmented_class_id",
    "TaskStream",
    "collate_tasks",
    "derive_seed",
    "task_loader",
]
