"""Evaluate a trained metric learner with a test-time view ensemble (see ``attnmeta.nn.views``)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from attnmeta.learners.base import Learner
from attnmeta.nn.views import RotationEnsemble

__all__ = ["with_rotation_ensemble"]


def with_rotation_ensemble(learner: Learner, quarter_turns: Sequence[int] = (0, 1, 2, 3)) -> Learner:
    """A copy of ``learner`` whose embedding network is ``RotationEnsemble(learner.model, quarter_turns)``.

    The copy shares every parameter with ``learner`` (nothing is trained or changed); only the embedding
    grows from ``D`` to ``len(quarter_turns) * D`` features. That works for learners whose distance takes
    embeddings of any size: Prototypical Networks (every distance) and Matching Networks without full-context
    embeddings. Other learners get a ``ValueError``.
    """
    from attnmeta.learners.matching import MatchingNetworks
    from attnmeta.learners.protonet import PrototypicalNetworks

    if isinstance(learner, MatchingNetworks):
        if learner.fce is not None:
            raise ValueError("a rotation ensemble changes the embedding size, which the full-context "
                             "embedding LSTMs of this MatchingNetworks (fce=True) cannot take; evaluate it "
                             "without the ensemble")
    elif not isinstance(learner, PrototypicalNetworks):
        raise ValueError(f"with_rotation_ensemble supports Prototypical Networks and Matching Networks "
                         f"without FCE, whose distances take embeddings of any size; got "
                         f"{type(learner).__name__}")
    ensemble = copy.copy(learner)
    ensemble._modules = dict(learner._modules)  # the shallow copy would share (and so change) the original's
    ensemble.model = RotationEnsemble(learner.model, quarter_turns)
    return ensemble
