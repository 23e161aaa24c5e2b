"""``experiments/omniglot/omniglot_time_to_accuracy.py``: flags -> RunConfig, training sources; and the
analysis script ``experiments/omniglot/omniglot_snail_vs_prototypes.py`` on a run it saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnmeta.tasks.episode import Task, TaskBatch


@pytest.fixture(scope="module")
def bench(experiment):
    return experiment("omniglot", "omniglot_time_to_accuracy")


def test_flags_become_the_trainers_run_config(bench, tmp_path):
    """Schedules, budgets, augmentation, EMA and the Conv-4 options are keys of the trainer's RunConfig."""
    args = bench.parse_args(["--schedule", "cosine-budget", "--episodes", "100", "--lr", "1e-3",
                             "--cpu-minutes", "2", "--shift-pixels", "2", "--affine", "10,0.1,0,1",
                             "--ema", "0.995", "--optimizer", "adamw", "--weight-decay", "0.3",
                             "--learner-options", '{"ways": 5, "distance": "l2"}', "--no-pool-last"])
    config = bench.run_config(args, "conv4", tmp_path)
    assert (config.schedule, config.steps, config.budget_minutes, config.budget_clock) == ("cosine", 100, 2.0,
                                                                                          "cpu")
    assert config.augment == {"shift": 2, "affine": [10.0, 0.1, 0.0, 1.0]} and config.ema_decay == 0.995
    assert (config.optimizer, config.weight_decay, config.ways, config.train_ways) == ("adamw", 0.3, 5, 60)
    assert config.algo_options == {"distance": "l2"} and config.backbone_options["pool_last"] is False
    exp_args = bench.parse_args(["--schedule", "exp", "--half-life", "10", "--wall-minutes", "3"])
    exp = bench.run_config(exp_args, "conv4", tmp_path)
    assert (exp.schedule, exp.step_size, exp.budget_clock, exp.budget_minutes) == ("step", 1, "wall", 3.0)
    assert exp.gamma ** 10 == pytest.approx(0.5) and exp.steps > 10**9  # the budget alone ends it


def test_training_options_parse_and_compose_in_order(bench):
    defaults = bench.parse_args([])
    assert defaults.retain_memory and defaults.pool_last and defaults.shift_pixels == 0
    args = bench.parse_args(["--no-retain-memory", "--no-pool-last", "--shift-pixels", "2"])
    assert not args.retain_memory and not args.pool_last and args.shift_pixels == 2
    assert defaults.pools is None and bench.parse_args(["--pools", "2"]).pools == 2
    assert defaults.clip_grad_norm == 0 and bench.parse_args(["--clip-grad-norm", "5"]).clip_grad_norm == 5.0
    assert bench.compose(lambda x: x + 1, lambda x: 2 * x)(3) == 8  # (3 + 1) * 2: first function first


def test_affine_option_parses_four_numbers_or_says_what_it_takes(bench, capsys):
    assert bench.parse_args([]).affine is None
    assert bench.parse_args(["--affine", "10,0.1,5,1.5"]).affine == (10.0, 0.1, 5.0, 1.5)
    for bad in ("10,0.1", "a,b,c,d"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--affine", bad])
        assert "four numbers DEG,SCALE,SHEAR,PIXELS" in capsys.readouterr().err


def test_ema_option_takes_one_decay_or_says_what_it_takes(bench, capsys):
    assert bench.parse_args([]).ema is None
    assert bench.parse_args(["--ema", "0.995"]).ema == 0.995
    with pytest.raises(SystemExit):
        bench.parse_args(["--ema", "1.0"])
    assert "a decay in [0, 1)" in capsys.readouterr().err


def test_mirror_classes_add_the_flipped_drawings_as_new_characters(bench):
    from attnmeta.data.omniglot import Omniglot

    images = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(3, 1, 4, 4)
    data = Omniglot.from_tensors(images, torch.tensor([0, 1, 1]), ["A/character01", "B/character02"])
    mirrored = bench.with_mirror_classes(data)
    assert mirrored.characters == ["A/character01", "B/character02", "A/character01/mirror",
                                   "B/character02/mirror"]
    assert mirrored.labels.tolist() == [0, 1, 1, 2, 3, 3]
    assert torch.equal(mirrored.images[:3], images)
    assert torch.equal(mirrored.images[3:, 0, :, 0], images[:, 0, :, 3])  # first column <- last column
    assert mirrored.alphabets == ["A", "B"] and mirrored.character_alphabet.tolist() == [0, 1, 0, 1]
    assert not bench.parse_args([]).mirror_classes and bench.parse_args(["--mirror-classes"]).mirror_classes


def test_mirror_only_keeps_the_flipped_drawings_alone_as_the_characters(bench, capsys):
    from attnmeta.data.omniglot import Omniglot

    images = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(3, 1, 4, 4)
    data = Omniglot.from_tensors(images, torch.tensor([0, 1, 1]), ["A/character01", "B/character02"])
    mirrored = bench.with_mirror_classes(data, keep_originals=False)
    assert mirrored.characters == ["A/character01/mirror", "B/character02/mirror"]
    assert mirrored.labels.tolist() == [0, 1, 1]
    assert torch.equal(mirrored.images, images.flip(-1))
    assert mirrored.alphabets == ["A", "B"]
    assert bench.parse_args(["--mirror-only"]).mirror_only
    with pytest.raises(SystemExit):
        bench.parse_args(["--mirror-only", "--mirror-classes"])
    assert "give one" in capsys.readouterr().err


def test_alphabet_fold_splits_the_alphabets_into_disjoint_parts(bench, capsys):
    from attnmeta.data.omniglot import Omniglot

    names = ["A/character01", "B/character01", "C/character01", "A/character02", "D/character01"]
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).repeat(2, 1, 2, 2)
    data = Omniglot.from_tensors(images, torch.arange(5).repeat(2), names)  # alphabets A B C D = 0 1 2 3
    kept = bench.alphabet_fold(data, 1, 3, heldout=False)
    heldout = bench.alphabet_fold(data, 1, 3, heldout=True)
    assert kept.alphabets == ["A", "C", "D"] and heldout.alphabets == ["B"]
    assert kept.characters == ["A/character01", "C/character01", "A/character02", "D/character01"]
    assert kept.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert kept.images[:4, 0, 0, 0].tolist() == [0, 2, 3, 4]  # each image keeps its character
    assert heldout.characters == ["B/character01"] and heldout.images[:, 0, 0, 0].tolist() == [1, 1]
    assert bench.parse_args(["--alphabet-fold", "2/3"]).alphabet_fold == (2, 3)
    for bad in ("3/3", "1/1", "x/3", "1"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--alphabet-fold", bad])
        assert "R/K with 0 <= R < K" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--heldout-fold"])
    assert "give it --alphabet-fold" in capsys.readouterr().err


def synthetic_omniglot(characters: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (characters * 20, 1, 28, 28), generator=generator, dtype=torch.uint8)
    names = [f"Alphabet_{i % 3}/character{i:02d}" for i in range(characters)]
    return {"images": images, "labels": torch.arange(characters).repeat_interleave(20), "characters": names}


def write_tiny_omniglot(path: Path) -> None:
    """A ``--data-pt`` file: 12 background characters (3 alphabets) and 21 evaluation characters."""
    stored = {}
    for split, characters, seed in (("background", 12, 0), ("evaluation", 21, 1)):
        stored.update({f"{split}_{k}": v for k, v in synthetic_omniglot(characters, seed).items()})
    torch.save(stored, path)


def test_learner_built_for_fewer_ways_than_the_training_episodes_gets_its_final_test(bench, tmp_path):
    """SNAIL built 5-way (``"ways": 5`` in the learner options) trained on subtasks of 8-way episodes (the
    plugin learner ``snail-variants`` of ``snail_variants.py``): the final test scores it on 5-way episodes
    (and skips 20-way), whatever ``--train-ways`` is."""
    from attnmeta.train.builders import import_plugins

    import_plugins([str(Path(bench.__file__).resolve().parent / "snail_variants.py")])
    write_tiny_omniglot(tmp_path / "tiny.pt")
    options = ('{"ways": 5, "shots": 1, "subtasks": 3, "filters": 4, '
               '"attention_sizes": [[4, 4], [4, 4], [4, 4]]}')
    result = bench.main(["--algo", "snail-variants", "--data-pt", str(tmp_path / "tiny.pt"), "--hidden", "4",
                         "--train-ways", "8", "--train-shots", "1", "--train-queries", "2",
                         "--schedule", "cosine", "--episodes", "2", "--eval-every", "1000",
                         "--eval-episodes", "2", "--final-episodes", "3", "--learner-options", options,
                         "--out-dir", str(tmp_path), "--name", "tiny",
                         "--run-dir", str(tmp_path / "run")])
    assert result["episodes"] == 2 and set(result["final"]) == {"5w1s"}
    assert result["final"]["5w1s"]["n"] == 3


def test_snail_versus_prototypes_scores_both_on_the_same_test_episodes_as_the_benchmark(bench, experiment,
                                                                                        tmp_path):
    """``omniglot_snail_vs_prototypes.py`` on a SNAIL saved by ``--save-learner``: its SNAIL test accuracy is
    the benchmark's final figure (same episodes, same predictions), and the agreement counts add up."""
    analysis = experiment("omniglot", "omniglot_snail_vs_prototypes")
    write_tiny_omniglot(tmp_path / "tiny.pt")
    options = '{"shots": 1, "filters": 4, "attention_sizes": [[4, 4], [4, 4], [4, 4]]}'
    run = ["--data-pt", str(tmp_path / "tiny.pt"), "--hidden", "4", "--mirror-only", "--shift-pixels", "1",
           "--learner-options", options, "--out-dir", str(tmp_path)]
    trained = bench.main(["--algo", "snail", *run, "--train-ways", "5", "--train-shots", "1",
                          "--train-queries", "1", "--schedule", "cosine", "--episodes", "3",
                          "--eval-every", "1000", "--final-episodes", "4", "--name", "tiny",
                          "--save-learner", str(tmp_path / "snail.pt"), "--run-dir", str(tmp_path / "run")])
    report = analysis.main([str(tmp_path / "snail.pt"), *run, "--test-episodes", "4", "--source-episodes",
                            "2", "--affine-levels", "none;10,0.1,0,0", "--name", "agreement"])
    figures = report["figures"]
    assert figures["test"]["snail"] == pytest.approx(100 * trained["final"]["5w1s"]["accuracy"], abs=0.01)
    assert figures["test"]["queries"] == 4 * 5 * 15 and figures["source"]["queries"] == 2 * 5 * 15
    for key in ("test", "source", "source, no augmentation"):
        f = figures[key]
        assert f["both"] <= min(f["snail"], f["prototypes"])
        assert f["snail_only"] == pytest.approx(f["snail"] - f["both"], abs=0.02)
    assert 0 <= figures["test"]["inner_product"] <= 100
    for key in ("prototypes", "inner_product"):  # the same episodes with and without a SNAIL to score
        assert figures["source, affine none, prototypes only"][key] == figures["source"][key]
    assert figures["source, affine 10,0.1,0,0, prototypes only"]["snail"] is None
    assert (tmp_path / "agreement.json").exists()
    # supports (4, 0), (1, 1), (-5, -1) have mean 0; the query (1.2, 1) is nearest (1, 1), its class, but
    # has the largest inner product with (4, 0)
    episode = Task(torch.tensor([[4.0, 0.0], [1.0, 1.0], [-5.0, -1.0]]), torch.arange(3),
                   torch.tensor([[1.2, 1.0]]), torch.tensor([1]), torch.arange(3))
    hand = analysis.agreement(torch.nn.Identity(), None, [TaskBatch.stack([episode])])
    assert (hand["prototypes"], hand["inner_product"], hand["snail"]) == (100.0, 0.0, None)
    own, parsed = analysis.parse_args(["snail.pt", "--affine", "10,0.1,0,0", "--affine-levels", "none"])
    assert parsed.affine == (10, 0.1, 0, 0) and own.affine_levels == "none"  # not taken as an abbreviation
    with pytest.raises(SystemExit, match="does not fit SNAIL"):
        analysis.main([str(tmp_path / "snail.pt"), *run[:-4], "--learner-options", '{"shots": 1}',
                       "--out-dir", str(tmp_path), "--test-episodes", "1"])
