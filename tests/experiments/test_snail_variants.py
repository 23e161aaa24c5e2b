"""``experiments/omniglot/snail_variants.py``: SNAIL's options that did not help, as the plugin learner
``snail-variants`` (prototype residual, input noise, feature shuffling, subtasks, the auxiliary loss's
distance), loaded as ``--import`` loads it; with every option off it is plain ``snail``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor, nn

from attnmeta.learners import build
from attnmeta.learners.snail import standardize_by_support
from attnmeta.tasks.episode import TaskBatch
from attnmeta.train.builders import import_plugins
from test_matching import gaussian_task
from test_snail import SMALL, small_snail

PLUGIN = Path(__file__).resolve().parents[2] / "experiments" / "omniglot" / "snail_variants.py"


def load_plugin(path: Path) -> ModuleType:
    """Import ``path`` as ``--import`` does (once per process: a learner registers one name once)."""
    import_plugins([str(path)])
    return next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == str(path))


variants = load_plugin(PLUGIN)


def small_variants(ways: int = 4, shots: int = 2, **options):
    """``small_snail``'s learner (the same initial weights) with the plugin's options."""
    torch.manual_seed(0)
    return variants.SNAILVariants(nn.Sequential(nn.Linear(8, 12), nn.Tanh()), ways, shots=shots,
                                  feature_dim=12, **SMALL, **options)


def test_registered_and_equal_to_snail_with_every_option_off():
    batch = TaskBatch.stack([gaussian_task(4, 2, 3) for _ in range(2)])
    plain, same = small_snail(prototype_loss_weight=0.5), small_variants(prototype_loss_weight=0.5)
    assert same.name == "snail-variants" and isinstance(same, type(plain))
    assert same.state_dict().keys() == plain.state_dict().keys()
    torch.testing.assert_close(same.meta_loss(batch).loss, plain.meta_loss(batch).loss)
    torch.testing.assert_close(same.predict(batch[0]), plain.predict(batch[0]))
    built = build("snail-variants", model=nn.Identity(), task_type="classification", ways=4, feature_dim=8,
                  subtasks=2, input_noise=0.1, filters=4)
    assert (built.subtasks, built.input_noise, built.ways) == (2, 0.1, 4)
    with pytest.raises(ValueError, match="snail-variants needs ways="):
        build("snail-variants", model=nn.Identity(), task_type="classification", ways=None, feature_dim=8)


def test_prototype_distance_l2_is_the_protonet_l2_loss():
    from attnmeta.learners.protonet import PrototypicalNetworks

    torch.manual_seed(0)
    batch = TaskBatch.stack([gaussian_task(4, 2, 3) for _ in range(3)])
    plain = small_snail()
    auxiliary = small_variants(prototype_loss_weight=1.0, prototype_loss_scope="episode",
                               prototype_distance="l2")
    protonet = PrototypicalNetworks(plain.model, distance="l2")
    expected = plain.meta_loss(batch).loss + protonet.meta_loss(batch).loss
    torch.testing.assert_close(auxiliary.meta_loss(batch).loss, expected)
    with pytest.raises(ValueError, match="prototype_distance must be one of"):
        variants.SNAILVariants(nn.Identity(), 4, feature_dim=8, prototype_distance="cosine")


def test_prototype_residual_adds_the_protonet_logits_to_snails():
    from attnmeta.learners.protonet import PrototypicalNetworks

    torch.manual_seed(0)
    task = gaussian_task(4, 2, 3)
    plain = small_snail()
    residual = small_variants(prototype_residual=True, prototype_distance="l2")
    protonet = PrototypicalNetworks(plain.model, distance="l2")
    # the same initial weights: SNAIL's logits plus 1 x the nearest-prototype logits
    torch.testing.assert_close(residual.predict(task), plain.predict(task) + protonet.predict(task))
    with torch.no_grad():
        residual.classifier.weight.zero_()
        residual.classifier.bias.zero_()
        residual.residual_weight.fill_(2.0)
    torch.testing.assert_close(residual.predict(task), 2.0 * protonet.predict(task))
    batch = TaskBatch.stack([task, gaussian_task(4, 2, 3)])
    residual.meta_loss(batch).loss.backward()
    assert residual.residual_weight.grad is not None and residual.residual_weight.grad != 0
    assert not hasattr(small_variants(), "residual_weight")


def test_input_noise_perturbs_training_only_with_the_given_spread():
    torch.manual_seed(0)
    task = gaussian_task(4, 2, 3)
    batch = TaskBatch.stack([task])
    plain = small_snail()
    noisy = small_variants(input_noise=0.5)
    noisy.load_state_dict(plain.state_dict())
    torch.testing.assert_close(noisy.predict(task), plain.predict(task))  # prediction: no noise
    with torch.no_grad():
        emb_s, emb_q = plain.model(task.support_x)[None], plain.model(task.query_x)[None]
        support, query = standardize_by_support(emb_s, emb_q)
        torch.manual_seed(1)
        noise = 0.5 * torch.randn_like(support), 0.5 * torch.randn_like(query)
        # sequence_logits standardises first, then adds the noise (same generator state)
        plain.normalize = False
        expected = plain.sequence_logits(support + noise[0], task.support_y[None], query + noise[1])
        plain.normalize = True
        torch.manual_seed(1)
        torch.testing.assert_close(noisy.sequence_logits(emb_s, task.support_y[None], emb_q, input_noise=0.5),
                                   expected)
    # meta_loss adds it in training mode only
    torch.manual_seed(2)
    clean = plain.meta_loss(batch).loss
    torch.manual_seed(2)
    assert not torch.allclose(noisy.meta_loss(batch).loss, clean)
    noisy.eval()
    torch.testing.assert_close(noisy.meta_loss(batch).loss, clean)
    noisy.train()
    assert torch.isfinite(noisy.meta_loss(batch).loss)
    for bad in (-0.1, True, "0.5"):
        with pytest.raises(ValueError, match="input_noise must be a standard deviation"):
            small_variants(input_noise=bad)


def test_shuffle_features_keeps_each_tasks_geometry_and_changes_training_only():
    torch.manual_seed(0)
    support, query = torch.randn(3, 6, 10), torch.randn(3, 4, 10)
    shuffled_s, shuffled_q = variants.shuffle_task_features(support, query)
    for t in range(3):
        both, shuffled = torch.cat([support[t], query[t]]), torch.cat([shuffled_s[t], shuffled_q[t]])
        torch.testing.assert_close(shuffled @ shuffled.T, both @ both.T)  # inner products kept
        # every shuffled coordinate is +/- one original coordinate, the same map for support and queries
        matches = (shuffled[:, :, None] - both[:, None, :]).abs().amax(0) < 1e-6
        flipped = (shuffled[:, :, None] + both[:, None, :]).abs().amax(0) < 1e-6
        assert ((matches | flipped).sum(1) == 1).all()
    assert not torch.equal(shuffled_s[0], support[0])
    task = gaussian_task(4, 2, 3)
    batch = TaskBatch.stack([task])
    plain, shuffled_learner = small_snail(), small_variants(shuffle_features=True)
    torch.testing.assert_close(shuffled_learner.predict(task), plain.predict(task))
    torch.manual_seed(3)
    assert not torch.allclose(shuffled_learner.meta_loss(batch).loss, plain.meta_loss(batch).loss)
    shuffled_learner.eval()
    torch.testing.assert_close(shuffled_learner.meta_loss(batch).loss, plain.meta_loss(batch).loss)


def test_draw_subtasks_carves_ways_way_tasks_from_each_episode():
    """Embeddings encode (episode, class, example); the examples arrive shuffled. Every subtask must hold
    ``ways`` distinct classes of its own episode, class-major, every example of each class, labelled by the
    class's position in the subtask."""
    tasks, classes, shots, queries = 2, 7, 2, 3
    support_y = torch.arange(classes).repeat_interleave(shots).repeat(tasks, 1)
    query_y = torch.arange(classes).repeat_interleave(queries).repeat(tasks, 1)

    def code(labels: Tensor, per_class: int) -> Tensor:
        example = torch.arange(labels.shape[1]) % per_class
        episode = torch.arange(tasks)[:, None]
        return torch.stack(torch.broadcast_tensors(episode, labels, example[None]), -1).float()

    support, query = code(support_y, shots), code(query_y, queries)
    generator = torch.Generator().manual_seed(0)
    s_order = torch.stack([torch.randperm(classes * shots, generator=generator) for _ in range(tasks)])
    q_order = torch.stack([torch.randperm(classes * queries, generator=generator) for _ in range(tasks)])
    torch.manual_seed(3)
    sub_s, sub_sy, sub_q, sub_qy = variants.draw_subtasks(
        support.gather(1, s_order[..., None].expand(-1, -1, 3)), support_y.gather(1, s_order),
        query.gather(1, q_order[..., None].expand(-1, -1, 3)), query_y.gather(1, q_order), ways=4, count=5)
    assert sub_s.shape == (10, 8, 3) and sub_q.shape == (10, 12, 3)
    assert torch.equal(sub_sy, torch.arange(4).repeat_interleave(2).expand(10, -1))
    assert torch.equal(sub_qy, torch.arange(4).repeat_interleave(3).expand(10, -1))
    chosen = set()
    for i in range(10):
        episode, picked = i // 5, sub_s[i, ::shots, 1].long()
        assert (sub_s[i, :, 0] == episode).all() and (sub_q[i, :, 0] == episode).all()
        assert len(set(picked.tolist())) == 4
        assert torch.equal(sub_s[i, :, 1].long(), picked.repeat_interleave(shots))
        assert torch.equal(sub_q[i, :, 1].long(), picked.repeat_interleave(queries))
        for examples, per_class in ((sub_s[i, :, 2], shots), (sub_q[i, :, 2], queries)):
            assert (examples.view(4, per_class).sort(1).values == torch.arange(per_class)).all()
        chosen.add(tuple(picked.tolist()))
    assert len(chosen) > 5  # random draws, not one fixed choice
    with pytest.raises(ValueError, match="same number of support examples"):
        variants.draw_subtasks(support[:, :-1], support_y[:, :-1], query, query_y, ways=4, count=2)
    with pytest.raises(ValueError, match="cannot draw 8-way subtasks from 7-way"):
        variants.draw_subtasks(support, support_y, query, query_y, ways=8, count=2)


def test_subtasks_train_the_sequence_model_on_tasks_carved_from_larger_episodes():
    """The loss of a 9-way episode is the mean SNAIL loss of its 4-way subtasks (the same draws) plus the
    auxiliary ProtoNets loss over all 9 classes; ``predict`` still takes 4-way tasks only."""
    torch.manual_seed(0)
    episodes = TaskBatch.stack([gaussian_task(9, 2, 3), gaussian_task(9, 2, 3)])
    learner = small_variants(ways=4, shots=2, subtasks=3, prototype_loss_weight=0.5)
    torch.manual_seed(7)
    out = learner.meta_loss(episodes)
    assert out.task_losses.shape == (2,)

    support, query = learner.model(episodes.support_x), learner.model(episodes.query_x)
    torch.manual_seed(7)
    sub_s, sub_sy, sub_q, sub_qy = variants.draw_subtasks(support, episodes.support_y, query,
                                                          episodes.query_y, 4, 3)
    snail_loss = nn.functional.cross_entropy(learner.sequence_logits(sub_s, sub_sy, sub_q).flatten(0, 1),
                                             sub_qy.flatten())
    whole = small_snail(ways=9, shots=2, prototype_loss_weight=1.0)  # same embedding network weights
    whole.model.load_state_dict(learner.model.state_dict())
    proto_loss = torch.tensor(whole.meta_loss(episodes).metrics["prototype_loss"])
    torch.testing.assert_close(out.loss, snail_loss + 0.5 * proto_loss, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in learner.parameters())

    with pytest.raises(ValueError, match="built 4-way"):
        learner.predict(gaussian_task(9, 2, 3))
    with pytest.raises(ValueError, match="or set subtasks > 0 to train on larger episodes"):
        small_variants(ways=4, shots=2).meta_loss(episodes)
    with pytest.raises(ValueError, match="cannot carve 4-way subtasks from a 3-way"):
        learner.meta_loss(TaskBatch.stack([gaussian_task(3, 2, 3)]))
    learner.check_training_ways(9, 4)
    with pytest.raises(ValueError, match="cannot train on 3-way episodes"):
        learner.check_training_ways(3, 4)
    with pytest.raises(ValueError, match="or set subtasks > 0"):
        small_variants(ways=4).check_training_ways(9, 4)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="subtasks must be an int"):
            small_variants(subtasks=bad)


def test_learns_from_subtasks_of_larger_episodes():
    """Trained only on 4-way subtasks of fresh 12-way episodes, SNAIL classifies 4-way tasks."""
    learner = small_variants(ways=4, shots=2, subtasks=8)
    generator = torch.Generator().manual_seed(0)
    g = torch.Generator().manual_seed(123)
    tests = [gaussian_task(4, 2, 5, generator=g) for _ in range(50)]
    optimizer = torch.optim.Adam(learner.parameters(), 3e-3)
    for _ in range(150):
        loss = learner.meta_loss(TaskBatch.stack([gaussian_task(12, 2, 5, generator=generator)])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learner.eval()
    after = sum((learner.predict(t).argmax(1) == t.query_y).float().mean().item() for t in tests) / 50
    assert after > 0.8, after  # measured 0.866


SMALL_OPTIONS = {"filters": 4, "attention_sizes": [[4, 4], [4, 4], [4, 4]]}


def test_trainer_checks_the_training_shape_before_training(tmp_path):
    from attnmeta.data.omniglot import Omniglot
    from attnmeta.train import RunConfig, train
    from attnmeta.train.trainer import build_benchmark, build_learner
    from synthetic import synthetic_omniglot

    data = tuple(Omniglot.from_tensors(**synthetic_omniglot(characters, seed))
                 for characters, seed in ((6, 0), (7, 1)))

    def config(train_ways: int, **options) -> RunConfig:
        return RunConfig(benchmark="omniglot", benchmark_options={"data": data}, ways=5, shots=1, queries=2,
                         train_ways=train_ways, algo="snail-variants",
                         algo_options={**SMALL_OPTIONS, **options},
                         backbone_options={"hidden": 4}, meta_batch=2, steps=2, eval_every=2, eval_episodes=2,
                         test_episodes=3, checkpoint_every=2, run_dir=str(tmp_path / "run"), plot=False,
                         threads=1, imports=[str(PLUGIN)]).resolved()

    with pytest.raises(ValueError, match="set subtasks > 0 to train on larger episodes"):
        train(config(10))
    assert not (tmp_path / "run").exists()  # refused before anything was written
    fewer = config(3, subtasks=2)
    with pytest.raises(ValueError, match="cannot train on 3-way episodes"):
        build_learner(fewer, build_benchmark(fewer))
    larger = config(10, subtasks=2)
    assert build_learner(larger, build_benchmark(larger)).subtasks == 2


def test_cli_trains_the_plugin_on_subtasks_of_larger_episodes(tmp_path):
    """``attnmeta train omniglot --import experiments/omniglot/snail_variants.py --algo snail-variants``:
    12-way training episodes, 5-way test; the run folder records the import."""
    from attnmeta.cli import main as cli_main
    from attnmeta.train.trainer import load_run_config
    from test_omniglot import _fake_archive

    _fake_archive(tmp_path / "images_background.zip", alphabets=2, characters=4, drawings=3)
    _fake_archive(tmp_path / "images_evaluation.zip", "images_evaluation", alphabets=2, characters=3,
                  drawings=3)
    options = {**SMALL_OPTIONS, "subtasks": 3, "prototype_distance": "l2"}
    run = tmp_path / "run"
    assert cli_main(["train", "omniglot", "--root", str(tmp_path), "--import", str(PLUGIN), "--algo",
                     "snail-variants", "--ways", "5", "--shots", "1", "--queries", "1", "--train-ways", "12",
                     "--steps", "2", "--test-episodes", "3", "--set", f"algo_options={json.dumps(options)}",
                     "--set", "algo_options.prototype_loss_weight=2", "--set", "backbone_options.hidden=4",
                     "--run-dir", str(run), "--quiet"]) == 0
    saved = load_run_config(run)
    assert (saved.algo, saved.train_ways, saved.ways) == ("snail-variants", 12, 5)
    assert saved.algo_options["prototype_loss_weight"] == 2 and saved.imports == [str(PLUGIN)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["test"]["n"] == 3
