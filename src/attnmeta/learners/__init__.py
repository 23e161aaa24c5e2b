"""Meta-learners: the functional inner loop and learners built on it, metric and sequence learners."""

from attnmeta.learners.base import Learner, MetaOutput
from attnmeta.learners.registry import available, build, register

__all__ = ["Learner", "MetaOutput", "available", "build", "register"]
