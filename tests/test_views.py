"""Test-time rotation ensembles: the module against explicit rotations, the learner copy, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from attnmeta.eval import evaluate, with_rotation_ensemble
from attnmeta.eval.views import PredictionEnsemble, rotate_task
from attnmeta.learners.maml import MAML
from attnmeta.learners.matching import MatchingNetworks
from attnmeta.learners.protonet import PrototypicalNetworks, squared_euclidean_logits
from attnmeta.nn.views import RotationEnsemble
from attnmeta.tasks.episode import Task


def _embedding(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4))


def _task(ways: int = 3, shots: int = 2, queries: int = 2, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(ways).repeat_interleave(shots)
    query_y = torch.arange(ways).repeat_interleave(queries)
    return Task(torch.randn(len(support_y), 1, 6, 6, generator=g), support_y,
                torch.randn(len(query_y), 1, 6, 6, generator=g), query_y, classes=torch.arange(ways))


def test_rotation_ensemble_concatenates_the_rotated_views():
    model, x = _embedding(), torch.randn(5, 1, 6, 6)
    out = RotationEnsemble(model)(x)
    assert out.shape == (5, 16)
    for k in range(4):
        rotated = torch.stack([torch.rot90(image, k, dims=(1, 2)) for image in x])  # one image at a time
        torch.testing.assert_close(out[:, 4 * k: 4 * (k + 1)], model(rotated))
    torch.testing.assert_close(RotationEnsemble(model, (0,))(x), model(x))
    torch.testing.assert_close(RotationEnsemble(model, (2, 0))(x)[:, 4:], model(x))


def test_squared_distance_of_the_ensemble_sums_the_views_logits():
    model, task = _embedding(), _task()
    learner = PrototypicalNetworks(model)
    ensemble_logits = with_rotation_ensemble(learner).predict(task)
    per_view = 0
    for k in range(4):
        rotated = Task(torch.rot90(task.support_x, k, dims=(-2, -1)), task.support_y,
                       torch.rot90(task.query_x, k, dims=(-2, -1)), task.query_y, task.classes)
        per_view = per_view + learner.predict(rotated)
    torch.testing.assert_close(ensemble_logits, per_view)
    protos = torch.stack([model(task.support_x[task.support_y == c]).mean(0) for c in range(3)])
    torch.testing.assert_close(learner.predict(task), squared_euclidean_logits(model(task.query_x), protos))


@pytest.mark.parametrize("learner_type, options", [(PrototypicalNetworks, {"distance": "euclidean"}),
                                                   (PrototypicalNetworks, {"distance": "l2"}),
                                                   (PrototypicalNetworks, {"distance": "cosine"}),
                                                   (MatchingNetworks, {})])
def test_four_view_predictions_do_not_change_when_the_whole_task_is_rotated(learner_type, options):
    learner = with_rotation_ensemble(learner_type(_embedding(), **options))
    task = _task()
    turned = Task(torch.rot90(task.support_x, 1, dims=(-2, -1)), task.support_y,
                  torch.rot90(task.query_x, 1, dims=(-2, -1)), task.query_y, task.classes)
    # rotating every image permutes the four views the same way for queries and support: distances unchanged
    torch.testing.assert_close(learner.predict(turned), learner.predict(task), atol=1e-5, rtol=1e-5)
    plain = learner_type(_embedding(), **options)
    assert not torch.allclose(plain.predict(turned), plain.predict(task), atol=1e-3)


def test_the_copy_shares_parameters_and_leaves_the_learner_unchanged():
    learner = PrototypicalNetworks(_embedding(), distance="cosine")
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    ensemble = with_rotation_ensemble(learner)
    assert isinstance(ensemble.model, RotationEnsemble) and not isinstance(learner.model, RotationEnsemble)
    assert ensemble.model.model is learner.model and ensemble.log_scale is learner.log_scale
    result = evaluate(ensemble, [_task(seed=s) for s in range(3)])
    assert result.summary.n == 3
    for key, value in learner.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_prediction_ensemble_averages_log_probabilities_of_the_rotated_tasks():
    torch.manual_seed(0)
    maml = MAML(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(108, 3)),
                task_type="classification", inner_lr=0.5)
    ensemble = with_rotation_ensemble(maml)  # MAML has no embedding to concatenate: predictions by default
    assert isinstance(ensemble, PredictionEnsemble) and ensemble.learner is maml
    task = _task()
    views = [torch.log_softmax(maml.predict(rotate_task(task, k)), -1) for k in range(4)]
    expected = torch.stack(views).mean(0)
    torch.testing.assert_close(ensemble.predict(task), expected)
    torch.testing.assert_close(ensemble.predict(rotate_task(task, 3)), expected, atol=1e-5, rtol=1e-5)
    half = with_rotation_ensemble(maml, (0, 2), combine="predictions").predict(task)
    torch.testing.assert_close(half, (torch.log_softmax(maml.predict(task), -1)
                                      + torch.log_softmax(maml.predict(rotate_task(task, 2)), -1)) / 2)
    fce = MatchingNetworks(_embedding(), fce=True, feature_dim=4)
    assert isinstance(with_rotation_ensemble(fce), PredictionEnsemble)
    assert evaluate(ensemble, [_task(seed=s) for s in range(2)]).summary.n == 2


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="distinct values in 0..3"):
        RotationEnsemble(_embedding(), (0, 4))
    with pytest.raises(ValueError, match="distinct values in 0..3"):
        with_rotation_ensemble(PrototypicalNetworks(_embedding()), (1, 1))
    with pytest.raises(TypeError, match="nn.Module"):
        RotationEnsemble(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square images"):
        RotationEnsemble(nn.Flatten())(torch.randn(2, 1, 4, 6))
    with pytest.raises(ValueError, match="combine must be one of"):
        with_rotation_ensemble(PrototypicalNetworks(_embedding()), combine="views")
    with pytest.raises(ValueError, match="without full-context"):
        with_rotation_ensemble(MatchingNetworks(_embedding(), fce=True, feature_dim=4), combine="embeddings")
    maml = MAML(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), task_type="classification")
    with pytest.raises(ValueError, match="use combine='predictions'"):
        with_rotation_ensemble(maml, combine="embeddings")
    with pytest.raises(TypeError, match="evaluation only"):
        with_rotation_ensemble(maml).meta_loss(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square images"):
        with_rotation_ensemble(maml).predict(Task(torch.randn(3, 36), torch.arange(3), torch.randn(3, 36),
                                                  torch.arange(3), classes=torch.arange(3)))
    with pytest.raises(ValueError, match="needs a classification learner"):
        with_rotation_ensemble(MAML(nn.Linear(1, 1), task_type="regression"))


def test_cli_eval_with_rotation_ensemble(tmp_path, capsys):
    from attnmeta.cli import main
    from test_cli import SMALL
    from test_omniglot import _fake_archive

    _fake_archive(tmp_path / "images_background.zip", alphabets=2, characters=4, drawings=3)
    _fake_archive(tmp_path / "images_evaluation.zip", "images_evaluation", alphabets=2, characters=3,
                  drawings=3)
    run = tmp_path / "run"
    assert main(["train", "omniglot", "--root", str(tmp_path), "--algo", "protonet", "--ways", "5", "--shots",
                 "1", "--queries", "1", "--steps", "2", "--run-dir", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--episodes", "4", "--quiet", "--rotation-ensemble"]) == 0
    result = json.loads((run / "eval-5w1s-4ep-seed0-rotation-ensemble.json").read_text())
    assert result["rotation_ensemble"] is True and len(result["per_episode"]) == 4
    assert not (run / "eval-5w1s-4ep-seed0.json").exists()

    sinusoid = tmp_path / "sinusoid"
    assert main(["train", "sinusoid", *SMALL, "--run-dir", str(sinusoid)]) == 0
    capsys.readouterr()
    assert main(["eval", str(sinusoid), "--episodes", "4", "--quiet", "--rotation-ensemble"]) == 2
    assert "needs a classification learner" in capsys.readouterr().err
