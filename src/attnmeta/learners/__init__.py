"""Meta-learners: the functional inner loop and learners built on it, metric and sequence learners."""

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.learners.registry import LearnerSpec, available, build, register, spec

__all__ = ["Learner", "MetaOutput", "LearnerSpec", "available", "build", "register", "spec"]
