"""Evaluation protocol and statistics."""

from attnmeta.eval.protocol import EvalResult, evaluate, group_results
from attnmeta.eval.stats import MeanCI, mean_ci95
from attnmeta.eval.transductive import Transductive
from attnmeta.eval.views import with_rotation_ensemble

__all__ = ["EvalResult", "evaluate", "group_results", "MeanCI", "mean_ci95", "with_rotation_ensemble",
           "Transductive"]
